"""Tests for the ``flatten-video edit`` command, run in-process through ``flatten_video.cli.main``.

The end-to-end runs use the tiny random-weight Stable Diffusion from tests/data and DIS flow, so they need
neither the network nor pretrained weights. User errors must come out as one line on stderr, a non-zero
exit status, no traceback and no file left behind; ``--debug`` raises instead.
"""

from __future__ import annotations

import json
import pathlib
import re
import urllib.error
import warnings

import av
import PIL.Image
import pytest
import torch

from conftest import moving_texture
from flatten_video import cli
from flatten_video.app import runtime
from flatten_video.video import VideoError, read_video, write_video

TINY_SD_DATA = pathlib.Path(__file__).parent / "data" / "reference-cases" / "tiny-sd"
SOURCE_FRAMES = 6
W, H = 96, 64  # non-square on purpose


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> pathlib.Path:
    """A 6-frame 96x64 mp4 of a texture panning right."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(moving_texture(frames=SOURCE_FRAMES, height=H, width=W, shift=4), path, fps=8)
    return path


def edit_argv(video, output, model, *extra: str) -> list[str]:
    """A fast ``edit`` command line: 3 frames at 96x64, 2 sampling steps, DIS flow, CPU."""
    argv = ["edit", str(video), "--prompt", "a cat", "--model", str(model)]
    argv += ["--frames", "3", "--width", str(W), "--height", str(H)]
    argv += ["--steps", "2", "--inversion-steps", "4", "--inject-steps", "1", "--flow", "dis", "--device", "cpu"]
    if output is not None:
        argv += ["--output", str(output)]
    return argv + list(extra)


def run(argv, capsys) -> tuple[int, str, str]:
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def stream_info(path: pathlib.Path) -> tuple[int, int, int]:
    """(width, height, decoded frame count) of a video file, read with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return stream.width, stream.height, count


def files_under(folder: pathlib.Path) -> set[pathlib.Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------- end to end


def test_edit_writes_a_non_square_mp4(clip, tiny_sd_path, tmp_path, capsys):
    output = tmp_path / "out" / "edit.mp4"  # the folder does not exist yet
    status, out, _ = run(edit_argv(clip, output, tiny_sd_path), capsys)

    assert status == 0
    assert out.strip() == f"wrote {output}"
    assert stream_info(output) == (W, H, 3)
    edited = read_video(output, num_frames=3, width=W, height=H)
    assert edited.total_frames == 3
    assert edited.frames.shape == (3, 3, H, W)
    assert files_under(tmp_path / "out") == {pathlib.Path("edit.mp4")}  # no temporary file left


def test_side_by_side_puts_the_source_left_of_the_edit(clip, tiny_sd_path, tmp_path, capsys):
    output = tmp_path / "pair.mp4"
    status, out, _ = run(edit_argv(clip, output, tiny_sd_path, "--side-by-side"), capsys)

    assert status == 0
    assert out.strip() == f"wrote {output}"
    assert stream_info(output) == (2 * W, H, 3)
    pair = read_video(output, num_frames=3, width=2 * W, height=H).frames
    source = read_video(clip, num_frames=3, width=W, height=H).frames  # the frames the CLI sampled
    assert (pair[..., :W] - source).abs().mean() < 0.03  # left half: the source, up to H.264 losses


def test_gif_output(clip, tiny_sd_path, tmp_path, capsys):
    output = tmp_path / "edit.gif"
    status, out, _ = run(edit_argv(clip, output, tiny_sd_path), capsys)

    assert status == 0
    assert out.strip() == f"wrote {output}"
    assert output.read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    assert stream_info(output) == (W, H, 3)


def test_cache_dir_resumes_an_edit_that_stopped_while_sampling(clip, tiny_sd_path, tmp_path, capsys, monkeypatch):
    from flatten_video import FlattenPipeline

    output = tmp_path / "edit.mp4"
    argv = edit_argv(clip, output, tiny_sd_path, "--cache-dir", str(tmp_path / "cache"))

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory while sampling")

    with monkeypatch.context() as patch:
        patch.setattr(FlattenPipeline, "sample", crash)
        status, _, err = run(argv, capsys)
    assert status == 1 and "out of memory while sampling" in err
    assert not output.exists()
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1  # the inversion was kept

    inversions = []
    original_invert = FlattenPipeline.invert_video
    monkeypatch.setattr(FlattenPipeline, "invert_video", lambda *a, **k: inversions.append(1) or original_invert(*a, **k))
    status, out, err = run(argv, capsys)
    assert status == 0 and out.strip() == f"wrote {output}"
    assert inversions == []  # resumed from the cached inversion, and the user is told so in one line
    assert [line for line in err.splitlines() if "cached inversion" in line][0].startswith("reusing the cached inversion")
    assert stream_info(output) == (W, H, 3)
    # Another seed changes the inversion (VAE sample, trajectories): not taken from the cache.
    status, _, _ = run(argv + ["--seed", "7"], capsys)
    assert status == 0 and inversions == [1]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_lora_edits_and_gets_its_own_cached_inversion(clip, tiny_sd_path, tiny_lora_path, tmp_path, capsys):
    cache = tmp_path / "cache"
    plain = edit_argv(clip, tmp_path / "plain.mp4", tiny_sd_path, "--cache-dir", str(cache))
    assert run(plain, capsys)[0] == 0
    styled = edit_argv(clip, tmp_path / "styled.mp4", tiny_sd_path, "--cache-dir", str(cache))
    styled += ["--lora", str(tiny_lora_path), "--lora-scale", "0.8"]
    status, out, _ = run(styled, capsys)
    assert status == 0 and out.strip() == f"wrote {tmp_path / 'styled.mp4'}"
    assert stream_info(tmp_path / "styled.mp4") == (W, H, 3)
    # The LoRA changes the U-Net, so the inversion too: not the plain model's cached one.
    assert len(list(cache.glob("*.safetensors"))) == 2
    status, _, err = run(styled[:-4] + ["--lora", str(tmp_path / "nope.safetensors")], capsys)
    errors = [line for line in err.splitlines() if line.startswith("flatten-video:")]
    assert status == 1 and errors == [f"flatten-video: error: could not load the LoRA '{tmp_path / 'nope.safetensors'}': no such file"]
    # A file path works as well as a folder.
    styled[styled.index(str(tiny_lora_path))] = str(tiny_lora_path / "pytorch_lora_weights.safetensors")
    assert run(styled, capsys)[0] == 0


def test_default_output_is_named_after_the_video_in_the_working_folder(
    clip, tiny_sd_path, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    status, out, _ = run(edit_argv(clip, None, tiny_sd_path), capsys)

    assert status == 0
    assert out.strip() == "wrote clip-flatten.mp4"
    assert stream_info(tmp_path / "clip-flatten.mp4") == (W, H, 3)


def test_raft_without_weights_offline_is_one_clear_line(clip, tiny_sd_path, tmp_path, capsys, monkeypatch):
    """The default flow, RAFT, without cached weights and without network: the user is told about --flow dis."""

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    # torch.hub's own path up to the download, which announces itself on stderr first.
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    loads = []
    monkeypatch.setattr(runtime, "load_pipeline", lambda *args: loads.append(args))
    output = tmp_path / "edit.mp4"
    argv = edit_argv(clip, output, tiny_sd_path)
    argv[argv.index("dis")] = "raft"
    status, out, err = run(argv, capsys)

    assert status != 0
    errors = err.strip().splitlines()
    assert len(errors) == 1, errors  # no 'Downloading: ...' line before it
    assert errors[0].startswith("flatten-video: error: RAFT weights could not be loaded")
    assert "--flow dis" in errors[0]
    assert "Traceback" not in err
    assert out == ""
    assert not output.exists()
    assert loads == []  # found out before the Stable Diffusion model loads


def decoded(path: pathlib.Path) -> torch.Tensor:
    return read_video(path, 3).frames


def test_several_prompts_invert_once_and_write_one_video_each(clip, tiny_sd_path, tmp_path, capsys, monkeypatch):
    from flatten_video import FlattenPipeline

    alone = tmp_path / "alone.mp4"
    assert run(edit_argv(clip, alone, tiny_sd_path), capsys)[0] == 0
    inversions = []
    original_invert = FlattenPipeline.invert_video
    monkeypatch.setattr(FlattenPipeline, "invert_video", lambda *a, **k: inversions.append(1) or original_invert(*a, **k))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# the watercolor one\n\na white fox, watercolor\n")
    argv = edit_argv(clip, tmp_path / "{index}-{prompt}.mp4", tiny_sd_path, "-p", "a tiger", "--prompts-file", str(prompts))
    status, out, err = run(argv, capsys)
    assert status == 0 and inversions == [1]  # one inversion for the three prompts
    names = ["1-a-cat.mp4", "2-a-tiger.mp4", "3-a-white-fox-watercolor.mp4"]
    assert out.splitlines() == [f"wrote {tmp_path / name}" for name in names]
    assert [line for line in err.splitlines() if line.startswith("prompt ")] == [
        "prompt 1/3: a cat", "prompt 2/3: a tiger", "prompt 3/3: a white fox, watercolor"]
    for name in names:
        assert stream_info(tmp_path / name) == (W, H, 3)
    # Each prompt gives the video an edit of that prompt alone gives.
    assert torch.equal(decoded(tmp_path / "1-a-cat.mp4"), decoded(alone))
    assert not torch.equal(decoded(tmp_path / "2-a-tiger.mp4"), decoded(alone))


def test_a_failing_prompt_keeps_the_others_and_is_named(clip, tiny_sd_path, tmp_path, capsys, monkeypatch):
    from flatten_video import FlattenPipeline

    original_sample = FlattenPipeline.sample

    def sample(self, inversion, prompt="", *args, **kwargs):
        if prompt == "boom":
            raise RuntimeError("CUDA out of memory")
        return original_sample(self, inversion, prompt, *args, **kwargs)

    monkeypatch.setattr(FlattenPipeline, "sample", sample)
    monkeypatch.chdir(tmp_path)
    status, out, err = run(edit_argv(clip, None, tiny_sd_path, "-p", "boom", "-p", "a dog"), capsys)
    assert status == 1
    assert out.splitlines() == ["wrote clip-a-cat.mp4", "wrote clip-a-dog.mp4"]  # default names for several prompts
    errors = [line for line in err.splitlines() if line.startswith("flatten-video:")]
    assert errors == ["flatten-video: error: prompt 2 ('boom'): CUDA out of memory",
                      "flatten-video: error: 1 of 3 prompts failed: 2 ('boom'); the others were written"]
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["clip-a-cat.mp4", "clip-a-dog.mp4"]


# ------------------------------------------------------------------------------------------- errors


@pytest.fixture
def inputs(tmp_path) -> pathlib.Path:
    """A folder of bad inputs beside a good clip."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "notes.txt").write_text("this is not a video\n")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "a-file").write_text("a regular file, not a folder\n")
    (folder / "taken.mp4").mkdir()  # a folder where the output should go
    (folder / "junk.safetensors").write_bytes(b"\x93NUMPY not a safetensors header" * 4)
    (folder / "weights.bin").write_bytes(b"\x80\x02}q\x00.")  # a pickle: never read
    (folder / "latin1.txt").write_bytes("un renard blanc, aquarelle \xe9t\xe9".encode("latin-1"))
    (folder / "frames").mkdir()
    for index, frame in enumerate(moving_texture(frames=SOURCE_FRAMES, height=H, width=W)):
        PIL.Image.fromarray((frame.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(folder / "frames" / f"{index:03d}.png")
    (folder / "clip-link.mp4").symlink_to(folder.parent / "missing-until-the-test.mp4")
    # Model folders that are not what --model takes: only their configs, which are read before any weights.
    index = json.loads((TINY_SD_DATA / "model_index.json").read_text())
    components = [name for name, value in index.items() if isinstance(value, list) and value[0]]
    for name, unet in (("inpainting", {"_class_name": "UNet2DConditionModel", "in_channels": 9}), ("no-unet", None)):
        (folder / name).mkdir()
        (folder / name / "model_index.json").write_text(json.dumps(index))
        for component in components:
            if component != "unet" or unet:
                (folder / name / component).mkdir()
        if unet:
            (folder / name / "unet" / "config.json").write_text(json.dumps(unet))
    (folder / "controlnet").mkdir()
    (folder / "controlnet" / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    # LoRAs of other families: only their tensors' names and shapes matter (read before any weights load).
    from safetensors.torch import save_file

    block = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    save_file({f"unet.{block}.lora_A.weight": torch.zeros(4, 2048), f"unet.{block}.lora_B.weight": torch.zeros(640, 4)},
              str(folder / "sdxl-lora.safetensors"))
    kohya = "lora_unet_" + block.replace(".", "_")
    save_file({f"{kohya}.lora_down.weight": torch.zeros(4, 2048), f"{kohya}.lora_up.weight": torch.zeros(640, 4)},
              str(folder / "sdxl-kohya.safetensors"))
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 1536)}, str(folder / "wan-lora.safetensors"))
    # Without cross-attention keys the text width cannot tell: the shapes of what they adapt do.
    own = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"unet.{own}.lora_A.weight": torch.zeros(4, 640), f"unet.{own}.lora_B.weight": torch.zeros(640, 4)},
              str(folder / "self-attention-lora.safetensors"))
    kohya = "lora_unet_" + own.replace(".", "_")
    save_file({f"{kohya}.lora_down.weight": torch.zeros(4, 640), f"{kohya}.lora_up.weight": torch.zeros(640, 4),
               f"{kohya}.alpha": torch.tensor(4.0)}, str(folder / "self-attention-kohya.safetensors"))
    deep = own.replace("transformer_blocks.0", "transformer_blocks.7")  # SDXL's deeper transformers
    save_file({f"unet.{deep}.lora_A.weight": torch.zeros(4, 32), f"unet.{deep}.lora_B.weight": torch.zeros(32, 4)},
              str(folder / "deep-lora.safetensors"))
    (folder / "sdxl-controlnet").mkdir()
    (folder / "sdxl-controlnet" / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel",
                                                                        "cross_attention_dim": 2048}))
    return folder


# Placeholders in the cases below, resolved in the test.
CLIP, TINY_SD, OUTPUT = "<clip>", "<tiny-sd>", "<output>"  # good video, good model, out/edit.mp4


def case(video, *extra, output=OUTPUT, model=TINY_SD, error, id, loads_model=False, marks=()):
    """One bad command line: ``error`` is a regex the message must match. Paths are relative to the
    ``inputs`` folder, as are ``<inputs>/...`` values in ``extra``; the output may be the clip itself
    (CLIP) or a link to it. Unless ``loads_model``, the error must come before the model loads."""
    return pytest.param(video, list(extra), output, model, error, loads_model, id=id, marks=marks)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


BAD_INPUTS = [
    case("nope.mp4", error=r"no such file: .*nope\.mp4", id="missing-file"),
    case("notes.txt", error=r"not a readable video file: .*notes\.txt", id="text-file"),
    case("empty.mp4", error=r"empty file: .*empty\.mp4", id="empty-file"),
    case(CLIP, "--frames", "8", error=r"has 6 frames, but 8 frames", id="too-few-frames"),
    case(CLIP, "--stride", "3", error=r"has 6 frames, but 3 frames with stride 3 need 7", id="stride-too-long"),
    case(CLIP, "--frames", "0", error=r"--frames must be at least 2 frames .*, got 0", id="frames-0"),
    case(CLIP, "--frames", "1", error=r"--frames must be at least 2", id="frames-1"),
    case(CLIP, "--steps", "0", error=r"--steps must be at least 1, got 0", id="steps-0"),
    case(CLIP, "--inversion-steps", "0", error=r"--inversion-steps must be at least 1", id="inversion-steps-0"),
    case(CLIP, "--inject-steps", "3", error=r"--inject-steps must be between 0 and --steps \(2\), got 3", id="inject-above-steps"),
    case(CLIP, "--width", "100", error=r"--width must be a positive multiple of 8, got 100", id="width-100"),
    case(CLIP, "--height", "0", error=r"--height must be a positive multiple of 8, got 0", id="height-0"),
    case(CLIP, output="a-file/edit.mp4", error=r"cannot write .*edit\.mp4: .*a-file is a file, not a folder", id="output-under-a-file"),
    case(CLIP, output="taken.mp4", error=r"output is a folder: .*taken\.mp4", id="output-is-a-folder"),
    case(CLIP, output="edit.avi", error=r"output must end in \.mp4 or \.gif: .*edit\.avi", id="avi-output"),
    case(CLIP, output="edit", error=r"output must end in \.mp4 or \.gif", id="no-extension"),
    case(CLIP, output=CLIP, error=r"the output .*clip\.mp4 is the source video; choose another output name", id="output-is-the-source"),
    case(CLIP, output="clip-link.mp4", error=r"the output .*clip-link\.mp4 is the source video", id="output-links-to-the-source"),
    case("frames", output="frames/edit.mp4", error=r"the output .*edit\.mp4 is inside the frame folder being read", id="output-in-frame-folder"),
    case(CLIP, "--fps", "nan", error=r"--fps must be a finite number, got nan", id="fps-nan"),
    case(CLIP, "--fps", "inf", error=r"--fps must be a finite number, got inf", id="fps-inf"),
    case(CLIP, "--guidance", "nan", error=r"--guidance must be a finite number, got nan", id="guidance-nan"),
    case(CLIP, "--lora-scale", "nan", error=r"--lora-scale must be a finite number, got nan", id="lora-scale-nan"),
    case(CLIP, "--seed", str(2**70), error=r"--seed must be at most 18446744073709551615 \(torch's generators take 64 bits\)", id="seed-too-big"),
    case(CLIP, "--seed", "-1", error=r"--seed must be at least 0, got -1", id="seed-negative"),
    case(CLIP, "--width", "100000", error=r"--width must be at most 4096 \(.*\), got 100000", id="width-huge"),
    case(CLIP, "--width", "8", error=r"--width must be at least 64 pixels \(optical flow and the U-Net need a few latents\), got 8", id="width-tiny"),
    case(CLIP, "--device", "foo", error=r"unknown --device 'foo'; use cuda, cuda:N, mps or cpu", id="device-unknown"),
    case(CLIP, "--device", "cuda", error=r"--device cuda: no CUDA GPU is available", id="device-no-cuda", marks=NO_CUDA),
    case(CLIP, "--attention-backend", "bogus", error=r"unknown attention backend 'bogus'; diffusers knows", id="backend-unknown"),
    case(CLIP, "--attention-backend", "flash", error=r"the attention backend 'flash' runs on CUDA GPUs; on the CPU use native",
         id="backend-needs-cuda"),
    case(CLIP, "--compile", error=r"--compile needs a CUDA GPU", id="compile-on-cpu"),
    case(CLIP, "--guidance-2", "3", error=r"--guidance-2 does not apply to Stable Diffusion .*checkpoints", id="guidance-2-on-sd"),
    case(CLIP, "--dtype", "float16", error=r"--dtype float16 does not run on the CPU; use float32 \(default\) or bfloat16", id="float16-on-cpu"),
    case(CLIP, "--inversion-steps", "3", error=r"sampling with 2 steps injects features at timesteps that inversion with 3 steps never visits", id="inversion-misses-injected-steps"),
    case(CLIP, "--cache-dir", "<inputs>/a-file", error=r"cannot keep inversions in .*a-file: .*a-file is a file, not a folder", id="cache-dir-is-a-file"),
    case(CLIP, "--lora", "<inputs>/weights.bin", error=r"could not load the LoRA .*weights\.bin.: only \.safetensors files are read", id="pickled-lora"),
    case(CLIP, "--lora", "<inputs>/junk.safetensors", error=r"could not load the LoRA .*junk\.safetensors.: not a valid safetensors file", id="junk-lora"),
    case(CLIP, "--lora", "<inputs>/nope.safetensors", error=r"could not load the LoRA .*nope\.safetensors.: no such file", id="missing-lora"),
    case(CLIP, "--lora", "<inputs>/sdxl-lora.safetensors", error=r"the LoRA .*sdxl-lora\.safetensors is for SDXL \(its "
         r"cross-attention reads 2048-wide text\); .*tiny-sd is a U-Net \(32\)", id="sdxl-lora-on-sd"),
    case(CLIP, "--lora", "<inputs>/sdxl-kohya.safetensors", error=r"sdxl-kohya\.safetensors is for SDXL", id="sdxl-kohya-lora-on-sd"),
    case(CLIP, "--lora", "<inputs>/self-attention-lora.safetensors", error=r"the LoRA .*self-attention-lora\.safetensors does "
         r"not fit .*tiny-sd: its down_blocks\.1\.attentions\.0\.transformer_blocks\.0\.attn1\.to_q maps 640 features to "
         r"640, the model's 32 to 32 \(a LoRA trained on another model\)$", id="other-widths-lora"),
    case(CLIP, "--lora", "<inputs>/self-attention-kohya.safetensors", error=r"self-attention-kohya\.safetensors does not fit "
         r".*attn1\.to_q maps 640 features", id="other-widths-kohya-lora"),
    case(CLIP, "--lora", "<inputs>/deep-lora.safetensors", error=r"deep-lora\.safetensors does not fit .*tiny-sd: the "
         r"model's unet has no down_blocks\.1\.attentions\.0\.transformer_blocks\.7\.attn1\.to_q", id="other-blocks-lora"),
    case(CLIP, "--lora", "<inputs>/wan-lora.safetensors", error=r"wan-lora\.safetensors is for a video transformer \(Wan\)",
         id="wan-lora-on-sd"),
    case(CLIP, "--control", "canny=<inputs>/sdxl-controlnet", error=r"the canny ControlNet .*sdxl-controlnet is for SDXL "
         r"\(its cross-attention reads 2048-wide text\)", id="sdxl-controlnet-on-sd"),
    case(CLIP, "--lora", "someone/some-lora", error=r"HF_HUB_OFFLINE is set: the LoRA someone/some-lora is not in the Hugging Face cache", id="lora-hub-id-offline"),
    case(CLIP, "-p", "a \udcff\udcfe fox", error=r"the prompt is not valid UTF-8 text", id="prompt-not-utf8"),
    case(CLIP, "--prompts-file", "<inputs>/latin1.txt", error=r"the prompts file .*latin1\.txt is not UTF-8 text", id="prompts-file-not-utf8"),
    case(CLIP, "--prompts-file", "<inputs>/nope.txt", error=r"cannot read the prompts file .*nope\.txt", id="prompts-file-missing"),
    case(CLIP, "-p", "a dog", output="edit.mp4", error=r"2 prompts need one output each: put \{prompt\} or \{index\} in the output name", id="prompts-without-placeholder"),
    case(CLIP, model="junk.safetensors", error=r"could not read the checkpoint .*junk\.safetensors: not a valid safetensors file", id="junk-checkpoint"),
    case(CLIP, model="no-such-model", error=r"no such folder: .*no-such-model \(give a diffusers model folder", id="unknown-model-path"),
    case(CLIP, model="inpainting", error=r"inpainting's U-Net takes 9 input channels \(an inpainting checkpoint", id="inpainting-model"),
    case(CLIP, model="controlnet", error=r"controlnet is a ControlNet, not a base model: give it with --control KIND=", id="controlnet-as-model"),
    case(CLIP, model="no-unet", error=r"no-unet lacks the folder unet/ that its model_index.json names", id="model-without-unet"),
    case(CLIP, "--guidance", "1e38", error=r"the edit came out as NaN or infinite values, so nothing was written; lower --guidance", id="edit-blows-up", loads_model=True),
    case(CLIP, model=".", error=r"inputs is not a diffusers pipeline folder \(no model_index.json\)", id="folder-that-is-no-model"),
    # Tests run offline (conftest): a hub id not in the cache is told at once, before anything loads.
    case(CLIP, model="flatten-video-tests/no-such-model", error=r"^flatten-video: error: HF_HUB_OFFLINE is set: the model "
         r"flatten-video-tests/no-such-model is not in the Hugging Face cache; download it once while online", id="unknown-hub-id"),
]


@pytest.mark.parametrize("video, extra, output, model, error, loads_model", BAD_INPUTS)
def test_bad_input_is_one_error_line_and_leaves_no_file(
    video, extra, output, model, error, loads_model, clip, inputs, tiny_sd_path, tmp_path, capsys, monkeypatch
):
    loads = []
    if not loads_model:
        # Input errors must be found before the (slow) model load.
        monkeypatch.setattr(runtime, "load_pipeline", lambda *args: loads.append(args))
    (tmp_path / "out").mkdir()
    video = clip if video == CLIP else inputs / video
    output = {OUTPUT: tmp_path / "out" / "edit.mp4", CLIP: clip}.get(output, inputs / output)
    (inputs / "clip-link.mp4").unlink()
    (inputs / "clip-link.mp4").symlink_to(clip)
    extra = [item.replace("<inputs>/", f"{inputs}/") for item in extra]
    source_bytes = pathlib.Path(clip).read_bytes()
    if model == TINY_SD:
        model = tiny_sd_path
    elif "/" not in model:  # a local path, not a hub id
        model = (inputs / model).resolve()
    argv = edit_argv(video, output, model, *extra)
    before = files_under(tmp_path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # pytest hides warnings; run as a command they would go to stderr
        status, out, err = run(argv, capsys)

    assert status != 0
    bars = [line for line in err.splitlines() if "%|" in line or not line.strip()]  # progress of the stages that ran
    assert not bars or loads_model
    lines = [line for line in err.splitlines() if line not in bars] + [f"{w.category.__name__}: {w.message}" for w in caught]
    assert len(lines) == 1, lines
    assert lines[0].startswith("flatten-video: error: ")
    assert "Traceback" not in err
    assert re.search(error, lines[0]), lines[0]
    assert out == ""
    assert files_under(tmp_path) == before  # no output, no temporary file
    assert pathlib.Path(clip).read_bytes() == source_bytes  # the source is never touched
    assert loads == []


@pytest.mark.parametrize("argv, message", [
    (["edit", "v.mp4", "-p", "a cat", "--frames", "2.5"], "flatten-video edit: error: argument --frames: invalid int value: '2.5'"),
    (["edit", "v.mp4", "-p", "a cat", "--attention", "full"], "flatten-video edit: error: argument --attention: invalid choice: 'full'"),
    (["edti", "v.mp4"], "flatten-video: error: argument command: invalid choice: 'edti'"),
])
def test_command_line_mistakes_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    err = capsys.readouterr().err.splitlines()
    assert exited.value.code == 2 and len(err) == 1 and err[0].startswith(message) and err[0].endswith("--help)")


# ------------------------------------------------------------------------------------ check order


def test_bad_output_is_reported_before_the_model_loads(clip, inputs, capsys):
    # The model does not exist either: had it been loaded first, its error would be the one shown.
    argv = edit_argv(clip, inputs / "a-file" / "edit.mp4", inputs / "no-such-model")
    status, _, err = run(argv, capsys)
    assert status != 0
    assert "a-file is a file, not a folder" in err
    assert "Stable Diffusion" not in err


def test_bad_video_is_reported_before_the_model_loads(inputs, tmp_path, capsys):
    argv = edit_argv(inputs / "nope.mp4", tmp_path / "edit.mp4", inputs / "no-such-model")
    status, _, err = run(argv, capsys)
    assert status != 0
    assert "no such file" in err
    assert "Stable Diffusion" not in err


def test_bad_arguments_are_reported_before_the_video_is_read(inputs, tmp_path, capsys):
    argv = edit_argv(inputs / "nope.mp4", tmp_path / "edit.avi", inputs / "no-such-model", "--steps", "0")
    status, _, err = run(argv, capsys)
    assert status != 0
    assert "--steps must be at least 1" in err


# ------------------------------------------------------------------------------------------ --debug


def test_debug_raises_instead_of_printing(inputs, tmp_path, capsys):
    argv = edit_argv(inputs / "nope.mp4", tmp_path / "edit.mp4", inputs / "no-such-model")
    with pytest.raises(VideoError, match="no such file"):
        cli.main(["--debug", *argv])
    with pytest.raises(ValueError, match="--steps must be at least 1"):
        cli.main(["--debug", *argv, "--steps", "0"])
    assert "flatten-video: error" not in capsys.readouterr().err


def test_output_names_for_several_prompts():
    from flatten_video.app.editing import prompt_outputs

    names = lambda template, prompts: [str(p) for p in prompt_outputs(template, prompts)]  # noqa: E731
    assert names("x-{prompt}.mp4", ["a cat!", "A cat?", "a dog, watercolor"]) == ["x-a-cat-1.mp4", "x-a-cat-2.mp4", "x-a-dog-watercolor.mp4"]
    assert names("{index}-{prompt}.gif", ["a cat!", "A cat?"]) == ["1-a-cat.gif", "2-a-cat.gif"]
    assert names("one.mp4", ["only one"]) == ["one.mp4"]
    assert names("{prompt}.mp4", ["???"]) == ["edit.mp4"]  # nothing left of the prompt for a name
    with pytest.raises(ValueError, match=r"may hold only \{prompt\} and \{index\}"):
        prompt_outputs("{name}-{prompt}.mp4", ["a", "b"])
    with pytest.raises(ValueError, match="2 prompts need one output each"):
        prompt_outputs("same.mp4", ["a", "b"])


# ------------------------------------------------------------------------------------- files as people have them


def test_the_sources_audio_goes_with_an_edit_that_keeps_its_timing_and_is_named_when_not(
        tiny_sd_path, tmp_path, capsys):
    from test_video import audio_seconds, clip_with_audio

    source = clip_with_audio(tmp_path / "talk.mp4", frames=6)
    kept = tmp_path / "kept.mp4"
    base = ["--width", "64", "--height", "64"]
    assert run(edit_argv(source, kept, tiny_sd_path, *base, "--stride", "1"), capsys)[0] == 0
    assert audio_seconds(kept) is not None and audio_seconds(kept) >= 3 / 8  # 3 frames at 8 fps
    for extra, why in ((["--stride", "2"], "one source frame in 2 (--stride 2)"), (["--stride", "1", "--fps", "4"], "--fps 4 changes"),
                       (["--stride", "1", "--no-audio"], None)):
        output = tmp_path / f"edit{len(extra)}{extra[-1]}.mp4"
        status, _, err = run(edit_argv(source, output, tiny_sd_path, *base, *extra), capsys)
        assert status == 0 and audio_seconds(output) is None
        notes = [line for line in err.splitlines() if "audio is not kept" in line]
        assert (notes == [] if why is None else len(notes) == 1 and why in notes[0]), err


def test_a_portrait_phone_clip_is_edited_upright(tiny_sd_path, tmp_path, capsys):
    from test_video import rotated_clip

    source = rotated_clip(tmp_path / "portrait.mp4", 90, frames=4, w=128, h=64)
    output = tmp_path / "edit.mp4"
    argv = [a for a in edit_argv(source, output, tiny_sd_path) if a not in ("--width", str(W), "--height", str(H))]
    assert run([*argv, "--width", "64"], capsys)[0] == 0
    with av.open(str(output)) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        assert (stream.width, stream.height) == (64, 128) and not frame.rotation  # upright, no rotation tag left


def test_a_prompts_file_with_a_byte_order_mark_reads_as_the_same_prompts(tmp_path):
    import argparse

    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffa white fox\na tiger\n".encode("utf-8"))
    args = argparse.Namespace(prompts=None, prompts_file=str(path))
    assert cli.read_prompts(args) == ["a white fox", "a tiger"]


def test_sigterm_while_the_video_is_written_leaves_nothing_partial(clip, tiny_sd_path, tmp_path, capsys, monkeypatch):
    import os
    import signal

    from flatten_video import video

    written = video._write_mp4

    def killed_midway(frames, path, fps, *args):
        written(frames[:1], path, fps)  # a partial file on disk, then the signal arrives
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(video, "_write_mp4", killed_midway)
    monkeypatch.setitem(video._WRITERS, ".mp4", killed_midway)
    (tmp_path / "out").mkdir()
    status, out, err = run(edit_argv(clip, tmp_path / "out" / "edit.mp4", tiny_sd_path), capsys)
    assert status == 143 and err.strip().splitlines()[-1] == "terminated"
    assert list((tmp_path / "out").iterdir()) == []  # neither the output nor its temporary file
    assert signal.getsignal(signal.SIGTERM) is not cli._terminate  # the handler is the caller's again after


# ------------------------------------------------------------------------------------- the cache is optional


def cache_entry(cache: pathlib.Path) -> pathlib.Path:
    (entry,) = cache.glob("*.safetensors")
    return entry


def test_a_cache_that_cannot_be_written_never_fails_the_edit(clip, tiny_sd_path, tmp_path, capsys, monkeypatch):
    import errno

    from flatten_video.pipelines import inversion

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inversion, "save_file", full_disk)
    output = tmp_path / "edit.mp4"
    status, out, err = run(edit_argv(clip, output, tiny_sd_path, "--cache-dir", str(tmp_path / "cache")), capsys)
    assert status == 0 and out.strip() == f"wrote {output}" and stream_info(output) == (W, H, 3)
    notes = [line for line in err.splitlines() if "not cached" in line]
    assert len(notes) == 1 and "No space left on device" in notes[0]
    assert not list((tmp_path / "cache").glob("*.safetensors*"))  # no entry, not even a partial one


@pytest.mark.parametrize("damage, why", [
    (lambda start: setattr(start, "latents", start.latents * float("nan")), "NaN or infinite"),
    (lambda start: [setattr(start, "latents", start.latents[..., :4]),
                    start.source_latents.update({t: v[..., :4] for t, v in start.source_latents.items()})],
     "these frames make"),
])
def test_a_damaged_cached_inversion_is_made_again_and_replaced(clip, tiny_sd_path, tmp_path, capsys, damage, why):
    from flatten_video.pipelines import EditStart

    cache = tmp_path / "cache"
    argv = edit_argv(clip, tmp_path / "edit.mp4", tiny_sd_path, "--cache-dir", str(cache))
    assert run(argv, capsys)[0] == 0
    entry = cache_entry(cache)
    start = EditStart.load(entry)
    damage(start)
    start.save(entry)
    status, _, err = run(argv, capsys)
    assert status == 0
    assert any("ignoring a damaged cached inversion" in line and why in line for line in err.splitlines()), err
    repaired = EditStart.load(cache_entry(cache))
    assert torch.isfinite(repaired.latents).all() and repaired.latents.shape[-1] == W // 8


def test_cache_files_follow_the_umask(clip, tiny_sd_path, tmp_path, capsys):
    import os

    previous = os.umask(0o002)  # a group-shared cache
    try:
        assert run(edit_argv(clip, tmp_path / "edit.mp4", tiny_sd_path, "--cache-dir", str(tmp_path / "cache")),
                   capsys)[0] == 0
    finally:
        os.umask(previous)
    assert cache_entry(tmp_path / "cache").stat().st_mode & 0o777 == 0o664


@pytest.mark.parametrize("command", ["edit", "web", "eval", "bench"])
def test_every_help_answers_without_torch(command):
    import subprocess
    import sys

    code = ("import sys; from flatten_video import cli\n"
            "try:\n    cli.main([%r, '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'gradio', 'transformers') if m in sys.modules))" % command)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_library_that_cannot_be_imported_is_one_line_naming_it(clip, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)  # as a torchvision built for another torch fails
    status, out, err = run(edit_argv(clip, tmp_path / "edit.mp4", tmp_path / "never-loaded"), capsys)
    lines = err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and out == ""
    assert lines[0].startswith("flatten-video: error: torchvision cannot be imported (")
    assert f"it must be the build made for torch {torch.__version__}" in lines[0] and "pip install" in lines[0]


def test_a_second_run_on_the_same_clip_waits_for_the_first_ones_inversion(clip, tiny_pipe, tmp_path, monkeypatch):
    import threading

    from flatten_video import FlattenPipeline
    from flatten_video.app.editing import InversionCache, invert_source
    from flatten_video.app.settings import EditSettings

    settings = EditSettings(prompt="a cat", frames=3, steps=2, inversion_steps=4, inject_steps=1, flow="dis")
    source = read_video(clip, 3, width=W, height=H)
    cache = InversionCache(tmp_path / "cache")
    entry = cache.path(tiny_pipe, source.frames, settings)
    made = invert_source(tiny_pipe, source, settings)  # what the first run makes, held back until it saves
    inversions, original = [], FlattenPipeline.invert_video
    monkeypatch.setattr(FlattenPipeline, "invert_video", lambda *a, **k: inversions.append(1) or original(*a, **k))
    second = {}
    with cache.locked(entry):  # the first run holds the entry while it inverts
        waiting = threading.Thread(target=lambda: second.update(start=invert_source(tiny_pipe, source, settings,
                                                                                   tmp_path / "cache")))
        waiting.start()
        waiting.join(timeout=2)
        assert waiting.is_alive()  # the second run waits rather than inverting too
        made.save(entry)
    waiting.join(timeout=60)
    assert inversions == [] and torch.equal(second["start"].latents, made.latents)
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == [entry.name]  # no lock file left
