"""Evaluation: the paper's metrics, the LOVEU-TGVE dataset, the benchmark runner and its summary."""
