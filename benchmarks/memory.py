"""Bytes held for feature injection: 32 frames at 512x512 with the SD 2.1 U-Net layout.

Runs one captured U-Net forward of a random-weight SD 2.1-layout U-Net (1 frame, 8x8 latent)
and scales the captured tensors to 32 frames of 64x64 latents: every injected tensor is
(frames, channels, cells of its level) or (frames, cells, channels), and each level's cell count
is the latent's divided by a fixed power of 4, so the scaling is exact.
Run: python benchmarks/memory.py
"""

import torch
from diffusers import UNet2DConditionModel

from common import machine
from flatten_video import FeatureStore, FlattenContext, install_flatten

SD21_UNET = dict(
    block_out_channels=(320, 640, 1280, 1280),
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    sample_size=64,
)
FRAMES, LATENT, STEPS, INJECTED = 32, 64, 50, 40


def main() -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET).eval()
    context = FlattenContext(num_latent_frames=1, features=FeatureStore(storage_dtype=torch.float16))
    install_flatten(unet, context)
    with torch.no_grad(), context.features.capturing(981):
        unet(torch.randn(1, 4, 8, 8), 981, encoder_hidden_states=torch.randn(1, 77, 1024))
    scale = FRAMES * (LATENT * LATENT) // 64
    fp16_step = context.features.nbytes * scale
    latent_step = FRAMES * 4 * LATENT * LATENT * 4  # one fp32 latent (1, 4, F, 64, 64)
    gib = 2**30
    print(f"machine: {machine()}")
    print(f"SD 2.1 layout, {FRAMES} frames at 512x512, {STEPS} sampling steps, {INJECTED} injected")
    print(f"  features of one step, one video, fp16:          {fp16_step / gib:7.3f} GiB")
    print(f"  paper's code (both halves, all {STEPS} steps, fp16): {2 * STEPS * fp16_step / gib:7.2f} GiB")
    print(f"  ours, stored (one copy, {INJECTED} steps, fp16):      {INJECTED * fp16_step / gib:7.2f} GiB")
    print(f"  ours, recompute ({INJECTED} latents, fp32):           {INJECTED * latent_step / gib:7.3f} GiB")


if __name__ == "__main__":
    main()
