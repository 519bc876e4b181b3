#!/usr/bin/env bash
# The one command for a lent GPU machine, from the repository root, with .gpu-wheels carried
# (benchmarks/gpu-wheels.sh makes it here):
#
#   bash benchmarks/gpu-device.sh          (FROM=NAME to begin at a run; BUDGET seconds, default 540)
#
# Installs the carried wheels the image lacks, runs gpu.sh for at most BUDGET seconds (a device
# call may run 10 minutes), and packs whatever finished into $OUT/gpu-results.tgz, also when the
# budget ran out: the machine returns at most 8 files.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
if ! "$PY" -c "import diffusers" 2>/dev/null; then
  "$PY" -m pip install --no-deps --no-index "$ROOT"/.gpu-wheels/*.whl || { echo "no diffusers and no carried wheels (.gpu-wheels)"; exit 1; }
fi
RESULTS=$(mktemp -d)/gpu-results
PYTHON=$PY timeout "${BUDGET:-540}" bash "$ROOT/benchmarks/gpu.sh" "$RESULTS"
echo "gpu.sh ended with $? (124: the budget ran out)"
[ -f "$RESULTS/summary.md" ] || "$PY" "$ROOT/benchmarks/summarize.py" "$RESULTS" > "$RESULTS/summary.md"
cp "$RESULTS/summary.md" "$OUT/summary.md"
tar czf "$OUT/gpu-results.tgz" -C "$(dirname "$RESULTS")" gpu-results
ls -la "$OUT"
