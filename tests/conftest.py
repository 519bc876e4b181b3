"""Shared fixtures: tiny random-weight Stable Diffusion folders, loaded the way users load models.

Nothing here reaches the network: the hub is switched off and torch's cache points to a
temporary folder, so RAFT weights are never found and never downloaded.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="flatten-video-torch-home-")
atexit.register(shutil.rmtree, os.environ["TORCH_HOME"], True)  # a test run leaves nothing in $TMPDIR
# Gradio keeps uploads and cached examples in its temp folder, and torch.compile its kernels in
# inductor's cache: folders of the run's own, removed too.
os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="flatten-video-gradio-")
atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], True)
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="flatten-video-inductor-")
atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], True)

import pytest  # noqa: E402
import torch  # noqa: E402

#: The paper's reference cases (numbers from its released code on tiny random weights), kept in the
#: repository so a clone with nothing beside it passes; tests/data/reference-cases/README.md says what each holds.
REFERENCE_CASES = pathlib.Path(__file__).resolve().parent / "data" / "reference-cases"
TINY_SD = REFERENCE_CASES / "tiny-sd"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE when it is first imported, possibly before this file ran.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory) -> str:
    """A tiny random CLIP (model and processor) saved with save_pretrained."""
    from metrics_fixtures import save_tiny_clip

    return str(save_tiny_clip(tmp_path_factory.mktemp("tiny_clip")))


def require_reference(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        pytest.fail(f"reference data missing at {path}: the repository's tests/data is incomplete")
    return path


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory) -> pathlib.Path:
    """The paper-reference tiny SD (SD 1.x layout: heads given, conv projections), copied so
    nothing writes into the repository."""
    target = tmp_path_factory.mktemp("models") / "tiny-sd"
    shutil.copytree(require_reference(TINY_SD), target)
    return target


@pytest.fixture(scope="session")
def tiny_sd21_path(tmp_path_factory, tiny_sd_path) -> pathlib.Path:
    """The same tiny SD with an SD 2.x-layout U-Net: head dims per block, linear projections."""
    from diffusers import UNet2DConditionModel

    target = tmp_path_factory.mktemp("models") / "tiny-sd21"
    shutil.copytree(tiny_sd_path, target)
    config = UNet2DConditionModel.load_config(tiny_sd_path / "unet")
    config.update(attention_head_dim=[2, 4, 8, 8], use_linear_projection=True)
    torch.manual_seed(21)
    unet = UNet2DConditionModel.from_config(config)
    shutil.rmtree(target / "unet")
    unet.save_pretrained(target / "unet", safe_serialization=True)
    return target


@pytest.fixture(scope="session")
def tiny_lora_path(tmp_path_factory, tiny_sd_path) -> pathlib.Path:
    """A random LoRA for the tiny U-Net's attention projections, saved as diffusers saves one."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    weights = {
        name: torch.randn(value.shape, generator=generator) * 0.5
        for name, value in convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)).items()
    }
    target = tmp_path_factory.mktemp("lora") / "tiny-lora"
    StableDiffusionLoraLoaderMixin.save_lora_weights(target, unet_lora_layers=weights, safe_serialization=True)
    return target


@pytest.fixture(scope="session")
def tiny_pipe(tiny_sd_path):
    from flatten_video import FlattenPipeline

    pipe = FlattenPipeline.from_pretrained(tiny_sd_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def moving_texture(frames: int = 4, height: int = 64, width: int = 96, shift: int = 8, seed: int = 0) -> torch.Tensor:
    """A smooth random texture panning right by ``shift`` px per frame: (F, 3, H, W) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 8, (width + shift * frames) // 8 + 1, generator=generator)
    big = torch.nn.functional.interpolate(coarse, scale_factor=8, mode="bicubic", align_corners=False).clamp(0, 1)[0]
    return torch.stack([big[:, :height, shift * (frames - t) : shift * (frames - t) + width] for t in range(frames)])


def tiny_sdxl_unet(cross_attention_dim: int = 64, pooled_dim: int = 32):
    """SDXL's U-Net layout (three levels, no attention at the finest, text and time added
    conditions), tiny."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 8),
        cross_attention_dim=cross_attention_dim,
        layers_per_block=2,
        norm_num_groups=8,
        sample_size=16,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=pooled_dim + 6 * 8,
    ).eval()


@pytest.fixture(scope="session")
def tiny_sdxl_path(tmp_path_factory, tiny_sd_path) -> pathlib.Path:
    """A tiny random SDXL checkpoint (two text encoders, SDXL's U-Net layout) saved as diffusers'
    StableDiffusionXLPipeline saves one, with the tiny SD's VAE and tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(1)
    text_encoder = CLIPTextModel.from_pretrained(tiny_sd_path / "text_encoder")
    config = CLIPTextConfig.from_pretrained(tiny_sd_path / "text_encoder")
    config.update(dict(projection_dim=32, hidden_act="gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(config)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_path / "tokenizer")
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_pretrained(tiny_sd_path / "vae"),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=tiny_sdxl_unet(cross_attention_dim=32 + 32, pooled_dim=32),
        scheduler=DDIMScheduler.from_pretrained(tiny_sd_path / "scheduler"),
    )
    target = tmp_path_factory.mktemp("models") / "tiny-sdxl"
    pipe.save_pretrained(target, safe_serialization=True)
    return target
