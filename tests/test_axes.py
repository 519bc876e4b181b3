"""The two axes from outside the package: a new backbone (a toy 3-D video model whose VAE would
encode 4 source frames per latent frame) and a new editing method (the source latents plus noise)
each land as one class and one registry line, here in the test, and run through the pipeline."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin

from conftest import moving_texture
from flatten_video import Backbone, EditMethod, EditStart, FlattenPipeline, register_backbone, register_method
from flatten_video.backbones import BACKBONES
from flatten_video.models.injection import InjectionSpec
from flatten_video.ops import flow_guided_attention
from flatten_video.pipelines.methods import METHODS


class ToyVideoDenoiser(ModelMixin, ConfigMixin):
    """Tokens already spatio-temporal, (B, F'*h*w, D) frame-major, as a video transformer's."""

    @register_to_config
    def __init__(self, in_channels: int = 4, width: int = 16, heads: int = 2, text_dim: int = 32):
        super().__init__()
        self.proj_in = torch.nn.Conv3d(in_channels, width, 1)
        self.time = torch.nn.Linear(1, width)
        self.attn = Attention(width, heads=heads, dim_head=width // heads)
        self.cross = Attention(width, cross_attention_dim=text_dim, heads=heads, dim_head=width // heads)
        self.proj_out = torch.nn.Conv3d(width, in_channels, 1)

    def forward(self, latents, timestep, encoder_hidden_states):
        x = self.proj_in(latents) + self.time(torch.tensor([[float(timestep) / 1000]])).view(1, -1, 1, 1, 1)
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(tokens)
        tokens = tokens + self.cross(tokens, encoder_hidden_states)
        return self.proj_out(tokens.transpose(1, 2).reshape(x.shape))


class ToyFlattenProcessor:
    """Dense attention over every token, then flow-guided attention on its output (combination II)."""

    def __init__(self, context):
        self.context = context

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        batch, tokens, width = hidden_states.shape

        def heads(x):
            return x.view(batch, tokens, attn.heads, -1).transpose(1, 2)

        q, k, v = (heads(layer(hidden_states)) for layer in (attn.to_q, attn.to_k, attn.to_v))
        hidden = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
        trajectories = self.context.trajectories_for(tokens // self.context.num_latent_frames)
        if trajectories is not None:
            hidden = flow_guided_attention(hidden, trajectories, attn.heads)
        return attn.to_out[1](attn.to_out[0](hidden))


# ---- the new backbone: one class, one registry line -----------------------------------------
class ToyBackbone(Backbone):
    temporal_factor = 4

    def token_grids(self, latent_size, levels):
        return [latent_size]

    def injection_points(self):
        return InjectionSpec((), ())

    @contextmanager
    def installed(self, context):
        stock = self.denoiser.attn.processor
        self.denoiser.attn.set_processor(ToyFlattenProcessor(context))
        try:
            yield context
        finally:
            self.denoiser.attn.set_processor(stock)

    def predict(self, latents, timestep, conditioning, extra_kwargs=None):
        return self.denoiser(latents, timestep, conditioning.encoder_hidden_states)


register_backbone("ToyVideoDenoiser", ToyBackbone)


# ---- the new method: one class, one registry line -------------------------------------------
class SourcePlusNoise(EditMethod):
    name = "source-plus-noise"

    def start(self, pipe, request, trajectories, timings):
        latents = pipe.encode_video(request.frames, request.generator)
        noise = torch.randn(latents.shape, generator=request.generator)
        return EditStart(latents=(latents + noise) / 2, trajectories=trajectories, config=request.config,
                         num_inference_steps=request.num_inference_steps, method=self.name, timings=timings)


register_method(SourcePlusNoise())


@pytest.fixture(scope="module", autouse=True)
def _unregister():
    yield
    BACKBONES.pop("ToyVideoDenoiser")
    METHODS.pop(("ddim", "source-plus-noise"))


@pytest.fixture(scope="module")
def toy_pipe(tiny_pipe):
    torch.manual_seed(0)
    pipe = FlattenPipeline(**{**tiny_pipe.components, "unet": ToyVideoDenoiser().eval()})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_toy_backbone_runs_flatten_over_latent_frames(toy_pipe):
    assert isinstance(toy_pipe.backbone, ToyBackbone)
    frames = moving_texture(frames=9, height=64, width=64, shift=4)
    trajectories = toy_pipe.prepare_trajectories(frames, flow_method="dis", progress=False,
                                                 generator=torch.Generator().manual_seed(0))
    assert list(trajectories) == [(8, 8)] and trajectories[(8, 8)].labels.shape == (3, 8, 8)  # 9 frames -> 3
    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    stock = toy_pipe.unet.attn.processor

    def edit(mode):
        inversion = toy_pipe.invert(latents, trajectories if mode == "dsta+flatten" else {}, num_inversion_steps=4,
                                    num_inference_steps=2, inject_steps=0,
                                    config=toy_pipe.default_config().__class__(attention_mode=mode))
        return toy_pipe.sample(inversion, "a cat", guidance_scale=1.0)

    flat, dense = edit("dsta+flatten"), edit("dsta")
    assert flat.shape == (1, 4, 3, 8, 8) and (flat - dense).abs().max() > 1e-4  # flow-guided attention ran
    assert toy_pipe.unet.attn.processor is stock and toy_pipe.flatten_context is None


def test_the_toy_backbone_refuses_frames_its_vae_cannot_encode(toy_pipe):
    with pytest.raises(ValueError, match="4k\\+1 frames"):
        toy_pipe.check_inputs(moving_texture(frames=8, height=64, width=64))


def test_the_toy_method_starts_sampling_without_inversion(tiny_pipe):
    frames = moving_texture(frames=3, height=64, width=64)
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        out = tiny_pipe(frames, "a cat", method="source-plus-noise", num_inference_steps=2, flow_method="dis",
                        generator=torch.Generator().manual_seed(0), output_type="latent").frames
    finally:
        handle.remove()
    assert out.shape == (1, 4, 3, 8, 8) and torch.isfinite(out).all()
    assert len(calls) == 2  # the two sampling steps (guidance rows share a call), no inversion
    start = tiny_pipe.invert_video(frames, method="source-plus-noise", num_inference_steps=2, flow_method="dis",
                                   generator=torch.Generator().manual_seed(0))
    assert type(start) is EditStart and start.method == "source-plus-noise" and start.inject_steps == 0
