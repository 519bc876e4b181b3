"""Flow-guided attention, the FLATTEN processor and video-wide GroupNorm on tiny random U-Nets."""

import math

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from safetensors.torch import load_file

from conftest import REFERENCE_CASES, moving_texture, require_reference, tiny_sdxl_unet
from flatten_video import FlattenAttnProcessor, FlattenContext, Trajectories, flow_guided_attention, install_flatten
from flatten_video.models.attention import VideoGroupNorm
from flatten_video.trajectories import sample_trajectories


def reference_flow_guided(hidden, labels, heads, query=None, key=None):
    """Per-trajectory loop: softmax(q k^T / sqrt(d)) v over the tokens of each trajectory."""
    query = hidden if query is None else query
    key = hidden if key is None else key
    batch, tokens, channels = hidden.shape
    d = channels // heads
    flat = labels.reshape(-1)
    out = torch.empty_like(hidden)
    for b in range(batch):
        for trajectory in torch.unique(flat).tolist():
            members = torch.nonzero(flat == trajectory).squeeze(1)
            for head in range(heads):
                cols = slice(head * d, (head + 1) * d)
                q, k, v = query[b, members, cols], key[b, members, cols], hidden[b, members, cols]
                weights = torch.softmax(q @ k.T / math.sqrt(d), dim=-1)
                out[b, members, cols] = weights @ v
    return out


def random_trajectories(frames=4, size=(6, 10), seed=0, scale=10.0):
    generator = torch.Generator().manual_seed(seed)
    flows = torch.randn(frames - 1, 2, 3, 5, generator=generator) * scale
    flows = torch.nn.functional.interpolate(flows, size=(size[0] * 8, size[1] * 8), mode="bilinear")
    return sample_trajectories(flows, size, generator)


@pytest.mark.parametrize("heads", [1, 4])
def test_flow_guided_attention_matches_loop_reference(heads):
    trajectories = random_trajectories()
    assert any(g.shape[1] >= 3 for g in trajectories.groups)
    tokens = trajectories.labels.numel()
    hidden = torch.randn(2, tokens, 8, dtype=torch.float64)
    ours = flow_guided_attention(hidden, trajectories, heads)
    reference = reference_flow_guided(hidden, trajectories.labels, heads)
    assert torch.allclose(ours, reference, atol=1e-10, rtol=0)


def test_flow_guided_attention_with_separate_query_and_key():
    trajectories = random_trajectories(seed=1)
    tokens = trajectories.labels.numel()
    hidden, query, key = torch.randn(3, 2, tokens, 8, dtype=torch.float64)
    ours = flow_guided_attention(hidden, trajectories, 2, query=query, key=key)
    reference = reference_flow_guided(hidden, trajectories.labels, 2, query=query, key=key)
    assert torch.allclose(ours, reference, atol=1e-10, rtol=0)


def test_flow_guided_attention_gives_fused_kernels_4d_launches_of_bounded_rows(monkeypatch):
    """CUDA's fused SDPA kernels refuse 5-D inputs (falling back to the math kernel) and more
    than 65535 rows a launch; launches split to fit must still equal the reference."""
    from flatten_video import ops

    trajectories = random_trajectories(seed=2)
    hidden = torch.randn(2, trajectories.labels.numel(), 8, dtype=torch.float64)
    shapes = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value):
        shapes.append(tuple(query.shape))
        return sdpa(query, key, value)

    monkeypatch.setattr(ops.F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(ops, "MAX_SDPA_ROWS", 6)
    ours = flow_guided_attention(hidden, trajectories, 2)
    assert shapes and all(len(shape) == 4 and shape[0] <= 6 for shape in shapes)
    assert len(shapes) > len(trajectories.groups)  # some groups were split
    assert torch.allclose(ours, reference_flow_guided(hidden, trajectories.labels, 2), atol=1e-10, rtol=0)


def test_flow_guided_attention_rejects_wrong_token_count():
    trajectories = random_trajectories()
    with pytest.raises(ValueError, match="tokens"):
        flow_guided_attention(torch.randn(1, 7, 8), trajectories, 2)


def make_attention(channels=16, heads=4):
    torch.manual_seed(0)
    return Attention(query_dim=channels, heads=heads, dim_head=channels // heads).eval()


def test_spatial_mode_equals_stock_processor():
    attn = make_attention()
    hidden = torch.randn(3 * 2, 24, 16)
    stock = AttnProcessor2_0()(attn, hidden)
    context = FlattenContext(num_latent_frames=3, attention_mode="spatial")
    ours = FlattenAttnProcessor(context, "down_blocks.0.attentions.0.transformer_blocks.0.attn1")(attn, hidden)
    assert torch.allclose(ours, stock, atol=1e-6)


def test_dense_attention_spans_the_frames_of_each_video_only():
    attn = make_attention()
    frames, tokens = 3, 24
    hidden = torch.randn(2 * frames, tokens, 16)
    context = FlattenContext(num_latent_frames=frames, attention_mode="dsta")
    ours = FlattenAttnProcessor(context, "x.attn1")(attn, hidden)
    # Reference: each video as one long image through the stock processor.
    as_images = hidden.reshape(2, frames * tokens, 16)
    reference = AttnProcessor2_0()(attn, as_images).reshape(2 * frames, tokens, 16)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_flatten_changes_dsta_output_only_where_trajectories_are_known():
    attn = make_attention()
    trajectories = random_trajectories(frames=3, size=(4, 6))
    hidden = torch.randn(2 * 3, 24, 16)
    dsta = FlattenAttnProcessor(FlattenContext(num_latent_frames=3, attention_mode="dsta"), "x.attn1")(attn, hidden)
    context = FlattenContext(num_latent_frames=3, trajectories={(4, 6): trajectories})
    full = FlattenAttnProcessor(context, "x.attn1")(attn, hidden)
    assert not torch.allclose(full, dsta, atol=1e-4)
    context.trajectories = {(8, 12): trajectories}  # another grid: no flow-guided attention here
    assert torch.allclose(FlattenAttnProcessor(context, "x.attn1")(attn, hidden), dsta, atol=1e-6)


def test_variants_follow_their_definitions():
    attn = make_attention()
    trajectories = random_trajectories(frames=3, size=(4, 6))
    hidden = torch.randn(2 * 3, 24, 16)
    outputs = {}
    for variant in ("II", "I", "source-qk"):
        context = FlattenContext(num_latent_frames=3, variant=variant, trajectories={(4, 6): trajectories})
        outputs[variant] = FlattenAttnProcessor(context, "x.attn1")(attn, hidden)
    # Combination II by hand: DSTA output H, flow-guided with q = k = v = H, then to_out.
    with torch.no_grad():
        q, k, v = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
        from flatten_video.ops import multihead_attention

        h = multihead_attention(q, k, v, attn.heads, 3).reshape(2, -1, 16)
        expected_ii = attn.to_out[0](reference_flow_guided(h, trajectories.labels, attn.heads).reshape(6, 24, 16))
        expected_i = attn.to_out[0](
            reference_flow_guided(attn.to_v(h), trajectories.labels, attn.heads, attn.to_q(h), attn.to_k(h)).reshape(6, 24, 16)
        )
        expected_qk = attn.to_out[0](
            reference_flow_guided(h, trajectories.labels, attn.heads, q.reshape(2, -1, 16), k.reshape(2, -1, 16)).reshape(6, 24, 16)
        )
    assert torch.allclose(outputs["II"], expected_ii, atol=1e-5)
    assert torch.allclose(outputs["I"], expected_i, atol=1e-5)
    assert torch.allclose(outputs["source-qk"], expected_qk, atol=1e-5)


def test_video_group_norm_takes_statistics_over_the_video():
    norm = torch.nn.GroupNorm(4, 16)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2 * 3, 16, 5, 7)
    wrapped = VideoGroupNorm(norm, FlattenContext(num_latent_frames=3))
    video = x.reshape(2, 3, 16, 5, 7).permute(0, 2, 1, 3, 4)  # (B, C, F, h, w), the paper's layout
    expected = norm(video).permute(0, 2, 1, 3, 4).reshape(x.shape)
    assert torch.allclose(wrapped(x), expected, atol=1e-6)
    assert not torch.allclose(norm(x), expected, atol=1e-3)
    assert wrapped.weight is norm.weight


@pytest.fixture(scope="module")
def unet_pair(tiny_sd_path):
    stock = UNet2DConditionModel.from_pretrained(tiny_sd_path / "unet").eval()
    inflated = UNet2DConditionModel.from_pretrained(tiny_sd_path / "unet").eval()
    context = FlattenContext(num_latent_frames=1, attention_mode="dsta")
    install_flatten(inflated, context)
    return stock, inflated, context


def test_install_keeps_the_state_dict(unet_pair):
    stock, inflated, _ = unet_pair
    assert stock.state_dict().keys() == inflated.state_dict().keys()
    assert sum(isinstance(m, VideoGroupNorm) for m in inflated.modules()) > 0


def test_identical_frames_through_dsta_equal_the_image_model(unet_pair):
    stock, inflated, context = unet_pair
    frames = 3
    torch.manual_seed(0)
    latent = torch.randn(1, 4, 8, 8)
    text = torch.randn(1, 77, 32)
    context.num_latent_frames, context.attention_mode = frames, "dsta"
    with torch.no_grad():
        image = stock(latent, 301, encoder_hidden_states=text).sample
        video = inflated(latent.repeat(frames, 1, 1, 1), 301, encoder_hidden_states=text.repeat(frames, 1, 1)).sample
    for t in range(frames):
        assert torch.allclose(video[t], image[0], atol=1e-5)


def test_flatten_changes_the_unet_output_on_non_square_latents(unet_pair):
    _, inflated, context = unet_pair
    frames, size = 3, (8, 12)
    torch.manual_seed(1)
    latents = torch.randn(frames, 4, *size)
    text = torch.randn(frames, 77, 32)
    context.num_latent_frames = frames
    outputs = {}
    for mode in ("dsta", "dsta+flatten"):
        context.attention_mode = mode
        context.trajectories = {size: random_trajectories(frames=frames, size=size)}
        with torch.no_grad():
            outputs[mode] = inflated(latents, 301, encoder_hidden_states=text).sample
    assert outputs["dsta"].shape == (frames, 4, *size)
    assert (outputs["dsta+flatten"] - outputs["dsta"]).abs().max() > 1e-4


def test_reproduces_the_paper_unet_forward(tiny_sd_path):
    """Faithfulness: one U-Net forward of the paper's code (DSTA + FLATTEN II at 64x64)."""
    case = load_file(require_reference(REFERENCE_CASES / "paper-unet" / "case.safetensors"))
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path / "unet").eval()
    videos, channels, frames, h, w = case["latents"].shape
    context = FlattenContext(num_latent_frames=frames, trajectories={(h, w): Trajectories.from_labels(case["labels"])})
    install_flatten(unet, context)
    sample = case["latents"].permute(0, 2, 1, 3, 4).reshape(videos * frames, channels, h, w)
    text = case["encoder_hidden_states"].repeat_interleave(frames, 0)
    with torch.no_grad():
        out = unet(sample, 501, encoder_hidden_states=text).sample
    out = out.reshape(videos, frames, channels, h, w).permute(0, 2, 1, 3, 4)
    assert (out - case["expected_output"]).abs().max() < 1e-5


# ----------------------------------------------------------------------------- install, uninstall


def test_uninstall_restores_the_stock_unet(tiny_sd_path):
    from flatten_video import uninstall_flatten
    from flatten_video.models import flatten_installed, is_flatten_installed

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path / "unet").eval()
    processors = dict(unet.attn_processors)
    norms = {name: module for name, module in unet.named_modules() if isinstance(module, torch.nn.GroupNorm)}
    conv2 = unet.up_blocks[1].resnets[0].conv2
    hooks = dict(conv2._forward_hooks)
    torch.manual_seed(2)
    latents, text = torch.randn(3, 4, 8, 8), torch.randn(3, 77, 32)
    with torch.no_grad():
        stock = unet(latents, 301, encoder_hidden_states=text).sample

    context = FlattenContext(num_latent_frames=3, attention_mode="dsta")
    with pytest.raises(RuntimeError, match="inside"):
        with flatten_installed(unet, context):
            assert is_flatten_installed(unet)
            assert isinstance(unet.up_blocks[1].attentions[1].transformer_blocks[0].attn1.processor, FlattenAttnProcessor)
            assert isinstance(unet.conv_norm_out, VideoGroupNorm) and len(conv2._forward_hooks) == len(hooks) + 1
            raise RuntimeError("an error inside the call")

    assert not is_flatten_installed(unet)
    assert all(unet.attn_processors[name] is processor for name, processor in processors.items())
    assert {n: m for n, m in unet.named_modules() if isinstance(m, torch.nn.GroupNorm)} == norms
    assert not any(isinstance(m, VideoGroupNorm) for m in unet.modules())
    assert dict(conv2._forward_hooks) == hooks
    with torch.no_grad():
        assert torch.equal(unet(latents, 301, encoder_hidden_states=text).sample, stock)
    install_flatten(unet, context)
    install_flatten(unet, context)  # twice: undoing it once still gives the stock U-Net back
    uninstall_flatten(unet)
    assert all(unet.attn_processors[name] is processor for name, processor in processors.items())
    assert not any(isinstance(m, VideoGroupNorm) for m in unet.modules())


# ----------------------------------------------------------------------------- injection points

SD_RESNETS = ("up_blocks.1.resnets.0", "up_blocks.1.resnets.1", "up_blocks.2.resnets.0")
SD_ATTENTIONS = tuple(
    f"up_blocks.{block}.attentions.{index}.transformer_blocks.0.attn1"
    for block, index in ((1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0))
)


@pytest.mark.parametrize("layout", ["tiny_sd_path", "tiny_sd21_path"])
def test_injection_points_of_sd_layouts_are_the_papers(layout, request):
    from flatten_video import InjectionSpec

    unet = UNet2DConditionModel.from_pretrained(request.getfixturevalue(layout) / "unet")
    spec = InjectionSpec.from_unet(unet)
    assert spec.resnets == SD_RESNETS and spec.attentions == SD_ATTENTIONS


def test_injection_points_of_the_real_sd_configs_are_the_papers():
    """The published SD 1.5 / 2.1 U-Net layouts (configs only: nothing is built)."""
    from types import SimpleNamespace

    from flatten_video import InjectionSpec

    sd = dict(
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=2
    )
    spec = InjectionSpec.from_unet(SimpleNamespace(config=SimpleNamespace(**sd)))
    assert spec.resnets == SD_RESNETS and spec.attentions == SD_ATTENTIONS


def test_sdxl_layout_gets_injection_points_by_decoder_level():
    from flatten_video import FeatureStore, InjectionSpec

    unet = tiny_sdxl_unet(cross_attention_dim=32)
    spec = InjectionSpec.from_unet(unet)
    # 1/32 of the image is SDXL's first decoder block, 1/16 its second; 1/8 has no attention there.
    assert spec.resnets == ("up_blocks.0.resnets.0", "up_blocks.0.resnets.1", "up_blocks.1.resnets.0")
    assert spec.attentions == tuple(
        f"up_blocks.{block}.attentions.{index}.transformer_blocks.0.attn1" for block, index in ((0, 1), (0, 2), (1, 0), (1, 1), (1, 2))
    )
    context = FlattenContext(num_latent_frames=2, attention_mode="dsta", features=FeatureStore(torch.float32))
    install_flatten(unet, context)
    added = dict(text_embeds=torch.randn(2, 32), time_ids=torch.randn(2, 6))
    with torch.no_grad(), context.features.capturing(1):
        unet(torch.randn(2, 4, 16, 16), 1, encoder_hidden_states=torch.randn(2, 7, 32), added_cond_kwargs=added)
    recorded = set(context.features.features[1])
    assert recorded == set(spec.resnets) | {f"{a}.to_{p}" for a in spec.attentions for p in "qk"}


def test_identical_frames_through_dsta_equal_the_sdxl_image_model():
    stock, inflated = tiny_sdxl_unet(cross_attention_dim=32), tiny_sdxl_unet(cross_attention_dim=32)
    frames = 3
    context = FlattenContext(num_latent_frames=frames, attention_mode="dsta")
    install_flatten(inflated, context)
    torch.manual_seed(0)
    latent, text = torch.randn(1, 4, 16, 16), torch.randn(1, 7, 32)
    added = dict(text_embeds=torch.randn(1, 32), time_ids=torch.tensor([[128.0, 128, 0, 0, 128, 128]]))
    video_added = {k: v.repeat(frames, 1) for k, v in added.items()}
    with torch.no_grad():
        image = stock(latent, 301, encoder_hidden_states=text, added_cond_kwargs=added).sample
        video = inflated(latent.repeat(frames, 1, 1, 1), 301, encoder_hidden_states=text.repeat(frames, 1, 1),
                         added_cond_kwargs=video_added).sample
    for t in range(frames):
        assert torch.allclose(video[t], image[0], atol=1e-5)


# -- dense attention through diffusers' dispatcher ---------------------------------------------


def test_dense_attention_through_the_dispatcher_is_todays_sdpa_bitwise():
    import torch.nn.functional as F

    from flatten_video.ops import multihead_attention

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2 * 3, 16, 8, generator=generator) for _ in range(3))

    def before(q, k, v, heads, frames):  # what the op computed before the dispatcher
        split = lambda x: x.reshape(len(x) // frames, -1, heads, x.shape[-1] // heads).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(q.shape)

    for frames in (1, 3):
        reference = before(query, key, value, 2, frames)
        assert torch.equal(multihead_attention(query, key, value, 2, frames), reference)
        assert torch.equal(multihead_attention(query, key, value, 2, frames, "native"), reference)
        torch.testing.assert_close(multihead_attention(query, key, value, 2, frames, "_native_math"), reference,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, device, message", [
    ("bogus", "cpu", "unknown attention backend 'bogus'; diffusers knows flash, .*native"),
    ("flash", "cpu", "the attention backend 'flash' runs on CUDA GPUs; on the CPU use native, _native_math, flex$"),
    ("_native_npu", "cpu", "'_native_npu' runs on Ascend NPUs; on the CPU use native, _native_math, flex$"),
    ("flex", "mps", r"'flex' runs on the CPU and CUDA GPUs; on Apple GPUs \(mps\) use native, _native_math$"),
    ("_native_xla", "cuda", r"'_native_xla' runs on XLA devices \(TPUs\); on CUDA GPUs use native, _native_math, flash, .*sage"),
])
def test_attention_backends_are_checked_in_one_line(name, device, message):
    from flatten_video.models.attention_backends import check_attention_backend

    with pytest.raises(ValueError, match=message):
        check_attention_backend(name, device)
    assert check_attention_backend("_native_math", "cpu") == "_native_math"


def test_every_backend_name_is_accepted_or_refused_in_one_line():
    from diffusers.models.attention_dispatch import AttentionBackendName

    from flatten_video.models.attention_backends import check_attention_backend

    for backend in AttentionBackendName:
        try:
            check_attention_backend(backend.value, "cuda")
        except ValueError as error:
            assert "\n" not in str(error) and str(error)


def test_the_backend_reaches_every_self_attention_and_changes_no_number_for_native(tiny_pipe):
    from flatten_video import ops

    frames = moving_texture(frames=3, height=64, width=64)
    options = dict(num_inference_steps=2, num_inversion_steps=4, inject_steps=1, flow_method="dis",
                   output_type="latent")
    default = tiny_pipe(frames, "a cat", generator=torch.Generator().manual_seed(0), **options).frames
    seen, original = [], ops.multihead_attention

    def spy(*args, **kwargs):
        seen.append(args[5] if len(args) > 5 else kwargs.get("backend"))
        return original(*args, **kwargs)

    import flatten_video.models.attention as processors

    processors.multihead_attention = spy
    try:
        tiny_pipe.set_attention_backend("native")
        native = tiny_pipe(frames, "a cat", generator=torch.Generator().manual_seed(0), **options).frames
    finally:
        processors.multihead_attention = original
        tiny_pipe.set_attention_backend(None)
    assert seen and set(seen) == {"native"} and torch.equal(native, default)
    with pytest.raises(ValueError, match="runs on CUDA GPUs"):
        tiny_pipe.set_attention_backend("sage")


def test_compiling_the_repeated_blocks_compiles_them_alone_and_keeps_every_shape(tiny_sd_path, monkeypatch):
    """Regional compilation: only the U-Net's transformer blocks are compiled (lazily: nothing
    runs here), and dynamo may keep a graph for each shape of block a whole edit makes."""
    import torch._dynamo
    from diffusers.models.attention import BasicTransformerBlock

    from flatten_video import FlattenPipeline

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)  # dynamo's default, restored after
    pipe = FlattenPipeline.from_pretrained(tiny_sd_path)  # its own U-Net: the shared one stays eager
    pipe.compile_repeated_blocks()
    compiled = {type(m) for m in pipe.unet.modules() if getattr(m, "_compiled_call_impl", None) is not None}
    assert compiled == {BasicTransformerBlock}
    assert torch._dynamo.config.recompile_limit == FlattenPipeline.RECOMPILE_LIMIT
