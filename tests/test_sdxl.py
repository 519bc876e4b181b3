"""FLATTEN on SDXL (docs/architecture.md, Plug-ins): a tiny random SDXL checkpoint, offline, through the pipeline and
the command line."""

from __future__ import annotations

import av
import pytest
import torch

from conftest import moving_texture
from flatten_video import FlattenPipeline, FlattenSDXLPipeline, InjectionSpec, cli
from flatten_video.app.runtime import pipeline_class
from flatten_video.video import write_video

STEPS = dict(num_inference_steps=2, num_inversion_steps=4, inject_steps=2)


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_sdxl_path):
    pipe = FlattenSDXLPipeline.from_pretrained(tiny_sdxl_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_checkpoint_picks_its_pipeline(tiny_sdxl_path, tiny_sd_path):
    assert pipeline_class(str(tiny_sdxl_path)) is FlattenSDXLPipeline
    assert pipeline_class(str(tiny_sd_path)) is FlattenPipeline
    assert pipeline_class("no-such-org/no-such-model") is FlattenPipeline  # offline: loading will say why
    assert FlattenSDXLPipeline.default_short_side == 1024 and FlattenPipeline.default_short_side == 512


def test_a_loaded_sdxl_pipeline_becomes_a_flatten_one_with_its_settings(tiny_sdxl_path, sdxl_pipe, tiny_pipe):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    xl = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, force_zeros_for_empty_prompt=False)
    xl.scheduler = EulerDiscreteScheduler.from_config(xl.scheduler.config)
    made = FlattenSDXLPipeline(**xl.components)  # as they are: Euler, no image encoder
    assert made.unet is xl.unet and type(made.scheduler).__name__ == "DDIMScheduler"
    assert made.scheduler.config.steps_offset == sdxl_pipe.scheduler.config.steps_offset
    assert made.config.force_zeros_for_empty_prompt  # a setting: components leave it out
    shared = FlattenSDXLPipeline.from_pipe(xl)
    assert shared.text_encoder_2 is xl.text_encoder_2 and not shared.config.force_zeros_for_empty_prompt
    assert shared.encode_conditioning("", 64, 64).encoder_hidden_states.any()  # the empty prompt encoded
    with pytest.raises(ValueError, match=r"a FlattenPipeline cannot be made from a StableDiffusionXLPipeline: its "
                                         r"text_encoder_2 makes it a pipeline for FlattenSDXLPipeline"):
        FlattenPipeline.from_pipe(xl)
    with pytest.raises(ValueError, match=r"cannot be made from a FlattenPipeline: it has no text_encoder_2"):
        FlattenSDXLPipeline.from_pipe(tiny_pipe)


def test_rows_carry_pooled_text_and_time_ids(sdxl_pipe):
    rows = sdxl_pipe.encode_conditioning("a cat", 64, 96)
    assert rows.encoder_hidden_states.shape == (1, 77, 64)  # both encoders' hidden states side by side
    assert rows.added_cond_kwargs["text_embeds"].shape == (1, 32)
    assert rows.added_cond_kwargs["time_ids"].tolist() == [[64, 96, 0, 0, 64, 96]]
    empty = sdxl_pipe.encode_conditioning("", 64, 96)  # SDXL base's unconditional branch: zeros
    assert not empty.encoder_hidden_states.any() and not empty.added_cond_kwargs["text_embeds"].any()


def test_sdxl_edits_with_injection_at_its_own_decoder_levels(sdxl_pipe):
    frames = moving_texture(frames=3, height=64, width=96)
    inversion = sdxl_pipe.invert_video(frames, flow_method="dis", feature_mode="stored", **STEPS)
    spec = InjectionSpec.from_unet(sdxl_pipe.unet)
    recorded = set(inversion.features.features[inversion.injected_timesteps[0]])
    assert recorded == set(spec.resnets) | {f"{a}.to_{p}" for a in spec.attentions for p in "qk"}
    edited = sdxl_pipe(inversion=inversion, prompt="a cat", output_type="np").frames
    assert edited.shape == (1, 3, 64, 96, 3)


def test_flow_guided_attention_runs_at_sdxls_finest_attention_level(sdxl_pipe):
    frames = moving_texture(frames=3, height=64, width=96)
    assert sdxl_pipe.default_config().levels == (1,)  # SDXL's latent grid has no attention
    inversion = sdxl_pipe.invert_video(frames, flow_method="dis", **STEPS)
    assert set(inversion.trajectories) == {(4, 6)}  # half the 8x12 latent grid
    options = dict(flow_method="dis", output_type="latent", feature_mode="recompute", **STEPS)
    edits = {mode: sdxl_pipe(frames, "a cat", attention_mode=mode, generator=torch.Generator().manual_seed(0), **options).frames
             for mode in ("dsta", "dsta+flatten")}
    assert (edits["dsta+flatten"] - edits["dsta"]).abs().max() > 1e-4  # FLATTEN changes the edit on SDXL too
    # On the latent grid, where SDXL has no attention, it would change nothing: the reason for the default.
    grid = sdxl_pipe(frames, "a cat", flatten_levels=(0,), generator=torch.Generator().manual_seed(0), **options).frames
    assert torch.equal(grid, edits["dsta"])


def test_the_command_line_edits_with_an_sdxl_checkpoint(tiny_sdxl_path, tmp_path, capsys):
    source = tmp_path / "walk.mp4"
    write_video(moving_texture(frames=4, height=64, width=96, shift=4), source, fps=8)
    output = tmp_path / "edit.mp4"
    argv = ["edit", str(source), "--prompt", "a cat", "--model", str(tiny_sdxl_path), "--frames", "3", "--width", "96",
            "--height", "64", "--steps", "2", "--inversion-steps", "4", "--inject-steps", "1", "--flow", "dis",
            "--device", "cpu", "--output", str(output)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote {output}"
    with av.open(str(output)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, sum(1 for _ in container.decode(stream))) == (96, 64, 3)


# ----------------------------------------------------------------------------- single-file checkpoints


def test_single_file_checkpoints_are_read_by_family_and_pickles_refused(tmp_path):
    from safetensors.torch import save_file

    from flatten_video.app.runtime import model_family
    from flatten_video.pipelines import ModelLoadError
    from flatten_video.pipelines.loading import single_file_family

    v2_key = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
    files = {
        "sd15": {v2_key: torch.zeros(2, 768)},
        "sd21": {v2_key: torch.zeros(2, 1024)},
        "sdxl": {"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)},
    }
    for family, tensors in files.items():
        path = tmp_path / f"{family}.safetensors"
        save_file(tensors, path)
        assert single_file_family(path) == family == model_family(str(path))
    assert pipeline_class(str(tmp_path / "sdxl.safetensors")) is FlattenSDXLPipeline
    (tmp_path / "old.ckpt").write_bytes(b"not read")
    with pytest.raises(ModelLoadError, match="only .safetensors single-file checkpoints are read"):
        single_file_family(tmp_path / "old.ckpt")


def test_a_single_file_without_its_base_config_offline_is_one_line_naming_it(tmp_path, capsys):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "my-finetune.safetensors"
    save_file({"model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(2, 768)}, checkpoint)
    source = tmp_path / "walk.mp4"
    write_video(moving_texture(frames=4, height=64, width=64, shift=4), source, fps=8)
    argv = ["edit", str(source), "--prompt", "a cat", "--model", str(checkpoint), "--frames", "3", "--width", "64",
            "--height", "64", "--flow", "dis", "--device", "cpu", "--output", str(tmp_path / "edit.mp4")]
    assert cli.main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flatten-video:")]
    assert len(err) == 1 and "needs the configs of its base model stable-diffusion-v1-5/stable-diffusion-v1-5" in err[0]
    assert "--model-config" in err[0] and not (tmp_path / "edit.mp4").exists()


def test_a_unet_only_single_file_with_its_configs_given_says_what_failed(tmp_path, tiny_sd_path, capsys):
    """With --model-config given, the line is not "give --model-config": it names the configs used
    and, for a file with no VAE weights, what to do with a U-Net-only file."""
    from safetensors.torch import save_file

    checkpoint = tmp_path / "unet-only.safetensors"
    save_file({"model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(2, 768)}, checkpoint)
    source = tmp_path / "walk.mp4"
    write_video(moving_texture(frames=4, height=64, width=64, shift=4), source, fps=8)
    argv = ["edit", str(source), "--prompt", "a cat", "--model", str(checkpoint), "--model-config", str(tiny_sd_path),
            "--frames", "3", "--width", "64", "--height", "64", "--flow", "dis", "--device", "cpu",
            "--output", str(tmp_path / "edit.mp4")]
    assert cli.main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flatten-video:")]
    assert len(err) == 1 and f"with the configs of {tiny_sd_path}" in err[0] and "U-Net-only" in err[0]
    assert "needs the configs of its base model" not in err[0] and not (tmp_path / "edit.mp4").exists()
