"""Which dense-attention kernel the processors call: a backend of diffusers' dispatcher
(``diffusers.models.attention_dispatch``: ``native`` is PyTorch's SDPA, its default and today's
numbers; ``flash``, ``sage``, ``xformers``, the hub kernels... need their packages and a GPU).
Flow-guided attention keeps its own exact kernel whatever the backend."""

from __future__ import annotations

#: The backends that run on a CPU (the others are CUDA kernels).
CPU_BACKENDS = ("native", "_native_math", "flex")


def check_attention_backend(name: str, device: str = "cpu") -> str:
    """``name`` if diffusers knows it, its packages are installed and ``device`` can run it;
    ``ValueError`` in one line naming what to install or pick otherwise."""
    import torch
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    known = [backend.value for backend in AttentionBackendName]
    if name not in known:
        raise ValueError(f"unknown attention backend {name!r}; diffusers knows {', '.join(known)}")
    if torch.device(device).type == "cpu" and name not in CPU_BACKENDS:
        raise ValueError(f"the attention backend {name!r} runs on CUDA GPUs; on the CPU use {', '.join(CPU_BACKENDS)}")
    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except (RuntimeError, ImportError) as error:
        raise ValueError(" ".join(str(error).split())) from None
    return name
