"""GPU memory of the paper's setting without a GPU: an account of every tensor a call keeps alive.

Each model is built on PyTorch's meta device (shapes, no storage) from its published config and
run at full size under a dispatch mode that adds up the bytes of every fresh tensor until it is
freed: the peak of that account is the activation memory of the call. Attention is counted as
the memory-efficient kernels CUDA runs (flash / efficient / cuDNN: the output, never an N x N
matrix). Weights are counted apart. ``--check`` runs the same account on real tensors on the CPU
at a small size and compares it with the process's measured peak.

Run: python benchmarks/memory_account.py [--arch sd21] [--frames 32] [--size 512] [--check]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib

import torch
from common import LiveBytes, PeakMemory, machine, smooth_flows
from flatten_video import FlattenContext, install_flatten, sample_trajectories

HERE = pathlib.Path(__file__).resolve().parent
GIB = 2**30


@contextlib.contextmanager
def efficient_attention():
    """SDPA as CUDA's memory-efficient kernels allocate: the output only (on the meta device the
    default would decompose into an N x N matrix that no CUDA backend builds)."""
    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query, key, value, *args, **kwargs):
        return query.new_empty(*query.shape[:-1], value.shape[-1])

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def load_spec(arch: str) -> dict:
    return json.loads((HERE / "configs" / f"{arch}.json").read_text())


def unet_call(spec: dict, frames: int, size: int, rows: int, dtype, device: str, mode: str = "dsta+flatten") -> dict:
    """Weights and peak activation bytes of one U-Net evaluation of ``rows`` videos."""
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel.from_config(spec["unet"]).to(dtype).eval()
    latent = size // 8
    trajectories = {}
    if mode in ("flatten", "dsta+flatten"):
        cells = sample_trajectories(smooth_flows(frames, size, size), (latent, latent), torch.Generator().manual_seed(0))
        trajectories = {(latent, latent): cells.to(device)}
    install_flatten(unet, FlattenContext(num_latent_frames=frames, attention_mode=mode, trajectories=trajectories))
    sample = torch.randn(rows * frames, 4, latent, latent, device=device, dtype=dtype)
    text = torch.randn(rows * frames, 77, spec["unet"]["cross_attention_dim"], device=device, dtype=dtype)
    attention = efficient_attention() if device == "meta" else contextlib.nullcontext()
    with torch.no_grad(), attention, LiveBytes() as account:
        unet(sample, 501, encoder_hidden_states=text)
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    return dict(weights=weights, activations=account.peak, inputs=sample.nbytes + text.nbytes)


def vae_decode(spec: dict, chunk: int, size: int, dtype, device: str = "meta") -> dict:
    """Weights and peak activation bytes of decoding ``chunk`` latent frames."""
    from diffusers import AutoencoderKL

    with torch.device(device):
        vae = AutoencoderKL.from_config(spec["vae"]).to(dtype).eval()
    latent = torch.randn(chunk, 4, size // 8, size // 8, device=device, dtype=dtype)
    with torch.no_grad(), efficient_attention(), LiveBytes() as account:
        vae.decode(latent)
    return dict(weights=sum(p.numel() * p.element_size() for p in vae.parameters()), activations=account.peak)


def text_encoder_bytes(spec: dict, dtype) -> int:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        return sum(p.numel() * torch.finfo(dtype).bits // 8 for p in CLIPTextModel(CLIPTextConfig(**spec["text_encoders"][0])).parameters())


def check_one(spec: dict, frames: int, size: int) -> dict:
    """One cross-check point, in a fresh process: the measured peak of the first U-Net call, then
    the account of the same call."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(spec["unet"]).eval()
    latent = size // 8
    cells = sample_trajectories(smooth_flows(frames, size, size), (latent, latent), torch.Generator().manual_seed(0))
    install_flatten(unet, FlattenContext(num_latent_frames=frames, trajectories={(latent, latent): cells}))
    sample, text = torch.randn(2 * frames, 4, latent, latent), torch.randn(2 * frames, 77, spec["unet"]["cross_attention_dim"])
    with torch.no_grad():
        with PeakMemory() as measured:
            unet(sample, 501, encoder_hidden_states=text)
        with LiveBytes() as account:
            unet(sample, 501, encoder_hidden_states=text)
    return dict(measured=measured.peak, account=account.peak)


def check(arch: str) -> None:
    """The account against the measured peak, on real tensors on the CPU at small sizes."""
    import subprocess
    import sys

    print("cross-check on the CPU (fp32, real tensors, a fresh process each): account vs measured peak above the start")
    for frames, size in ((2, 128), (4, 128), (2, 256), (4, 256)):
        child = subprocess.run([sys.executable, __file__, "--arch", arch, "--check-one", str(frames), str(size)],
                               capture_output=True, text=True, check=True)
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"  2 x {frames} frames at {size}x{size}: account {r['account'] / 2**20:8.1f} MiB, "
              f"measured {r['measured'] / 2**20:8.1f} MiB ({r['measured'] / r['account']:.2f}x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sd21", choices=("sd15", "sd21"))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--check", action="store_true", help="cross-check the account against the CPU's measured peak")
    parser.add_argument("--check-one", type=int, nargs=2, metavar=("FRAMES", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    spec = load_spec(args.arch)
    if args.check_one:
        print(json.dumps(check_one(spec, *args.check_one)))
        return
    dtype = torch.float16
    print(f"machine: {machine()}")
    if args.check:
        check(args.arch)
    print(f"{args.arch}, {args.frames} frames at {args.size}x{args.size}, fp16, accounted on the meta device")
    calls = {rows: unet_call(spec, args.frames, args.size, rows, dtype, "meta") for rows in (1, 2, 3)}
    decode = {chunk: vae_decode(spec, chunk, args.size, dtype) for chunk in (1, 2, 4, 8)}
    text = text_encoder_bytes(spec, dtype)
    unet_weights, vae_weights = calls[1]["weights"], decode[1]["weights"]
    print(f"  weights: U-Net {unet_weights / GIB:.2f} GiB, VAE {vae_weights / GIB:.2f} GiB, text encoder {text / GIB:.2f} GiB")
    for rows, r in calls.items():
        what = {1: "inversion (1 video)", 2: "sampling, stored features (2 videos)", 3: "sampling, recomputed features (3 videos)"}[rows]
        print(f"  U-Net call, {what}: activations {r['activations'] / GIB:.2f} GiB")
    for chunk, r in decode.items():
        print(f"  VAE decode of {chunk} frame(s) at once: activations {r['activations'] / GIB:.2f} GiB")

    # The peak of an edit is its biggest stage: a U-Net call with everything else resident (or,
    # under enable_model_cpu_offload(), with the U-Net alone), or a VAE decode of one chunk.
    latents = 4 * args.frames * (args.size // 8) ** 2 * 4 * 3  # z_T, the step's latents and the noise, fp32
    others = vae_weights + text
    print("  peak of an edit (largest stage), GiB:")
    print(f"  {'features':>10} {'offload':>8} {'decode chunk':>13} {'U-Net stage':>12} {'decode stage':>13} {'peak':>6}  fits 24 / 16 / 12 GB")
    for rows, features in ((2, "stored"), (3, "recompute")):
        for offload in (False, True):
            for chunk in (8, 2, 1):
                unet_stage = unet_weights + calls[rows]["activations"] + latents + (0 if offload else others)
                decode_stage = vae_weights + decode[chunk]["activations"] + (0 if offload else unet_weights + text)
                peak = max(unet_stage, decode_stage)
                fits = " / ".join("yes" if peak <= card * 1e9 else "no" for card in (24, 16, 12))
                print(f"  {features:>10} {str(offload):>8} {chunk:>13} {unet_stage / GIB:>12.2f} {decode_stage / GIB:>13.2f} "
                      f"{peak / GIB:>6.2f}  {fits}")


if __name__ == "__main__":
    main()
