"""Which dense-attention kernel the processors call: a backend of diffusers' dispatcher
(``diffusers.models.attention_dispatch``: ``native`` is PyTorch's SDPA, its default and today's
numbers; ``flash``, ``sage``, ``xformers``, the hub kernels... need their packages and a GPU).
Flow-guided attention keeps its own exact kernel whatever the backend."""

from __future__ import annotations

#: Backends that run wherever PyTorch does: its own SDPA and its math kernel.
ANY_DEVICE = ("native", "_native_math")
#: The device types the other backends run on; a backend not named here is a CUDA kernel.
BACKEND_DEVICES = {"flex": ("cpu", "cuda"), "_native_npu": ("npu",), "_native_xla": ("xla",)}
#: How a message names a device type.
DEVICE_NAMES = {"cpu": "the CPU", "cuda": "CUDA GPUs", "mps": "Apple GPUs (mps)", "npu": "Ascend NPUs",
                "xla": "XLA devices (TPUs)"}


def backend_devices(name: str) -> tuple[str, ...] | None:
    """The torch device types the backend ``name`` runs on; None: any."""
    return None if name in ANY_DEVICE else BACKEND_DEVICES.get(name, ("cuda",))


def check_attention_backend(name: str, device: str = "cpu") -> str:
    """``name`` if diffusers knows it, its packages are installed and ``device`` can run it;
    ``ValueError`` in one line naming what to install or pick otherwise."""
    import torch
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    known = [backend.value for backend in AttentionBackendName]
    if name not in known:
        raise ValueError(f"unknown attention backend {name!r}; diffusers knows {', '.join(known)}")
    kind = torch.device(device).type
    devices = backend_devices(name)
    if devices is not None and kind not in devices:
        here = [*ANY_DEVICE, *(other for other in known if other not in ANY_DEVICE and kind in backend_devices(other))]
        raise ValueError(f"the attention backend {name!r} runs on {' and '.join(DEVICE_NAMES.get(d, d) for d in devices)}; "
                         f"on {DEVICE_NAMES.get(kind, kind)} use {', '.join(here)}")
    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except (RuntimeError, ImportError) as error:
        raise ValueError(" ".join(str(error).split())) from None
    return name
