"""A whole edit on the real Stable Diffusion and Wan architectures, with random weights: time per
stage, denoiser calls, attention FLOPs and FLOP/s, and peak memory, side by side for several
attention modes.

Timing and memory do not depend on the weights' values, so nothing is downloaded: the denoiser, VAE
and text encoder are built from the published configs kept in ``benchmarks/configs/`` (``tiny`` is
the random tiny SD of tests/data/reference-cases). The edit goes through the pipeline's public path:
``invert_video`` (DIS flow, trajectories, VAE encoding, inversion), ``sample``, ``decode_latents``.

    python benchmarks/pipeline.py --arch sd21 --frames 4 --width 256 --height 256 --steps 2 \\
        --inversion-steps 4 --inject-steps 2 --attention spatial dsta dsta+flatten
    python benchmarks/pipeline.py --arch tiny --unet-pass --frames 3 --width 512 --height 512
    python benchmarks/pipeline.py --arch wan21-1.3b --frames 9 --width 256 --height 256 --steps 2 \\
        --attention dsta dsta+flatten      # FlowEdit (--method inversion: the paper's recipe)

On Wan, ``--unet-pass`` times one transformer evaluation, and the text encoder is a one-layer
stand-in of UMT5-XXL's width unless ``--text-encoder full`` (5.7B parameters: 11 GB in bfloat16).

Peak memory is CUDA's max allocated bytes on a GPU and the peak resident memory above the start on
the CPU. ``--json FILE`` writes the same figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import time

import torch

from common import AttentionFlops, PeakMemory, machine
from flatten_video import FlattenPipeline
from flatten_video.flow import estimate_flow
from flatten_video.models import ATTENTION_MODES
from flatten_video.pipelines import Conditioning
from flatten_video.timing import timed

HERE = pathlib.Path(__file__).resolve().parent
TINY_SD = HERE.parent / "tests" / "data" / "reference-cases" / "tiny-sd"
ARCHS = ("tiny", "sd15", "sd21", "sdxl", "wan21-1.3b")
PROMPT = "a tiger, high quality"


def is_wan(arch: str) -> bool:
    return arch.startswith("wan")


def denoiser(pipe):
    return getattr(pipe, pipe.denoiser_name)


def build_wan(arch: str, device: str, dtype: torch.dtype, text_encoder: str = "small"):
    """Wan with random weights from its config; the text encoder is UMT5-XXL (``"full"``) or a
    one-layer encoder of its width (``"small"``: the transformer reads the same shapes)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from flatten_video import FlattenWanPipeline
    from flatten_video.pipelines.schedule import flow_scheduler

    spec = json.loads((HERE / "configs" / f"{arch}.json").read_text())
    words = ["<pad>", "</s>", "<unk>", *PROMPT.replace(",", " ").split()]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                        model_max_length=512)
    encoder = dict(spec["text_encoder"])
    if text_encoder == "small":
        encoder.update(vocab_size=len(words), num_layers=1)
    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel.from_config(spec["transformer"]).to(dtype).eval()
        vae = AutoencoderKLWan.from_config(spec["vae"]).to(dtype).eval()
        umt5 = UMT5EncoderModel(UMT5Config(**encoder)).to(dtype).eval()
    return FlattenWanPipeline(tokenizer=tokenizer, text_encoder=umt5, vae=vae, transformer=transformer,
                              scheduler=flow_scheduler(spec["scheduler"]))


def build(arch: str, device: str, dtype: torch.dtype, text_encoder: str = "small") -> FlattenPipeline:
    """The architecture with random weights, on ``device`` in ``dtype``."""
    if is_wan(arch):
        return build_wan(arch, device, dtype, text_encoder)
    if arch == "tiny":
        pipe = FlattenPipeline.from_pretrained(TINY_SD)
        return pipe.to(device, dtype)
    from diffusers import AutoencoderKL, DDIMInverseScheduler, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from flatten_video import FlattenSDXLPipeline

    spec = json.loads((HERE / "configs" / f"{arch}.json").read_text())
    torch.manual_seed(0)
    with torch.device(device):  # build on the device: a real-size U-Net in fp32 is 3.4 GB of host RAM otherwise
        unet = UNet2DConditionModel.from_config(spec["unet"]).to(dtype)
        vae = AutoencoderKL.from_config(spec["vae"]).to(dtype)
        encoders = [CLIPTextModel(CLIPTextConfig(**spec["text_encoders"][0])).to(dtype)]
        if arch == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**spec["text_encoders"][1])).to(dtype))
    # The tiny tokenizer's ids are valid for the real vocabulary; its words do not matter here.
    tokenizer = CLIPTokenizer.from_pretrained(TINY_SD / "tokenizer")
    scheduler = DDIMScheduler.from_config(spec["scheduler"])
    inverse = DDIMInverseScheduler.from_config(scheduler.config)
    if arch == "sdxl":
        return FlattenSDXLPipeline(vae, encoders[0], encoders[1], tokenizer, tokenizer, unet, scheduler, inverse)
    return FlattenPipeline(vae, encoders[0], tokenizer, unet, scheduler, inverse)


def panning_frames(frames: int, height: int, width: int, shift: int = 8) -> torch.Tensor:
    """A smooth random texture panning right: (F, 3, H, W) in [0, 1], so the flow is not trivial."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, height // 16 + 1, (width + shift * frames) // 16 + 1, generator=generator)
    big = torch.nn.functional.interpolate(coarse, scale_factor=16, mode="bicubic", align_corners=False).clamp(0, 1)[0]
    return torch.stack([big[:, :height, shift * (frames - t) : shift * (frames - t) + width] for t in range(frames)])


@contextlib.contextmanager
def counted_calls(module, device: str, timed: bool):
    """Yields the list of ``module``'s calls while the block runs: (timestep, seconds) each when
    ``timed`` (the device synchronised before and after a call, so its seconds are its own),
    else None each."""
    calls, started = [], []

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def before(module, args, kwargs):
        sync()
        started.append(time.perf_counter())

    def after(module, args, kwargs, output):
        sync()
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        timestep = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        calls.append((timestep, time.perf_counter() - started.pop()))

    if not timed:
        hooks = [module.register_forward_pre_hook(lambda module, args: calls.append(None))]
    else:
        hooks = [module.register_forward_pre_hook(before, with_kwargs=True),
                 module.register_forward_hook(after, with_kwargs=True)]
    try:
        yield calls
    finally:
        for hook in hooks:
            hook.remove()


def call_kinds(calls: list, inversion_calls: int, injected) -> dict:
    """Mean seconds and count of each kind of denoiser call: the first (it loads the kernels),
    then inversion's and sampling's, with the source features recorded or injected (at the
    injected timesteps) or not."""
    injected = {float(t) for t in injected}
    kinds: dict[str, list[float]] = {"first call": [calls[0][1]]} if calls else {}
    for index, (timestep, seconds) in enumerate(calls[1:], start=1):
        phase = "inversion" if index < inversion_calls else "sampling"
        features = (", recording" if phase == "inversion" else ", injecting") if timestep in injected else ""
        kinds.setdefault(phase + features, []).append(seconds)
    return {kind: dict(calls=len(s), mean_s=sum(s) / len(s)) for kind, s in kinds.items()}


def edit(pipe: FlattenPipeline, frames: torch.Tensor, args, mode: str, device: str) -> tuple[dict, torch.Tensor]:
    """One whole edit: its stages' seconds, denoiser calls, attention FLOPs and peak memory (with
    ``--call-times``, each kind of denoiser call's mean seconds), and the (F, 3, H, W) frames it
    decoded, in [0, 1]."""
    generator = torch.Generator().manual_seed(66)
    timings: dict[str, float] = {}
    if is_wan(args.arch):  # FlowEdit (every step edits) or the paper's inversion, Wan's guidance
        start_kwargs = dict(method=args.method, inject_steps=args.inject_steps if args.method == "inversion" else None,
                            overlap=args.overlap)
        sample_kwargs = dict(guidance_scale=5.0, **(dict(n_max=args.steps) if args.method == "flowedit" else {}))
    else:
        start_kwargs = dict(num_inversion_steps=args.inversion_steps, inject_steps=args.inject_steps,
                            feature_mode=args.feature_mode)
        sample_kwargs = dict(guidance_scale=10.0)
    with PeakMemory(device) as memory, AttentionFlops(device, enabled=not args.compile) as flops, \
            counted_calls(denoiser(pipe), device, args.call_times) as calls:
        with timed(timings, "flow", device):
            flows = estimate_flow(frames, "dis", progress=False)
        inversion = pipe.invert_video(frames, generator=generator, flows=flows, num_inference_steps=args.steps,
                                      attention_mode=mode, window=args.window, **start_kwargs)
        timings.update(inversion.timings)
        inversion_calls = len(calls)
        with timed(timings, "sample", device):
            latents = pipe.sample(inversion, PROMPT, generator=generator, **sample_kwargs)
        with timed(timings, "decode", device):
            video = pipe.decode_latents(latents)
    unet_seconds = timings.get("invert", 0.0) + timings["sample"]
    return dict(
        mode=mode, timings=timings, total=sum(timings.values()), unet_calls=len(calls),
        seconds_per_call=unet_seconds / max(len(calls), 1), attention_flops_per_call=flops.total / max(len(calls), 1),
        attention_seconds=flops.seconds, attention_flops_per_second=flops.total / flops.seconds if flops.seconds else None,
        peak_bytes=memory.peak, feature_mode=getattr(inversion, "feature_mode", None),
        feature_device=feature_device(inversion),
        call_kinds=call_kinds(calls, inversion_calls, getattr(inversion, "injected_timesteps", []))
        if args.call_times else None,
    ), video


def pixel_difference(video: torch.Tensor, reference: torch.Tensor) -> dict:
    """Max and mean per-pixel difference of two decoded videos, in 1/255."""
    difference = (video.float() - reference.float()).abs() * 255
    return dict(max=float(difference.max()), mean=float(difference.mean()))


def feature_device(inversion) -> str | None:
    """Where an inversion's stored features were kept (None: none stored)."""
    store = getattr(inversion, "features", None)
    return None if store is None else store.storage_device.type


def unet_pass(pipe: FlattenPipeline, args, mode: str, device: str, dtype, num_frames: int) -> dict:
    """One denoiser evaluation of a guidance batch (``--rows`` videos, default 2) with FLATTEN, as
    the paper's code runs it (on Wan: a FlowEdit step's batch of the source and target rows; 1 row:
    an inversion call). An untimed evaluation comes first, so kernel loading and autotuning are not
    counted."""
    from flatten_video import FlattenConfig

    h, w = args.height // pipe.vae_scale_factor, args.width // pipe.vae_scale_factor
    frames = panning_frames(num_frames, args.height, args.width)
    trajectories = pipe.prepare_trajectories(frames, flow_method="dis", progress=False) if mode in ("flatten", "dsta+flatten") else {}
    latent_frames = pipe.backbone.num_latent_frames(num_frames)
    latents = torch.randn(args.rows, pipe.backbone.in_channels, latent_frames, h, w, device=device, dtype=dtype)
    row = pipe.encode_conditioning(PROMPT, args.height, args.width)
    conditioning = Conditioning.cat([row] * args.rows)
    config = FlattenConfig(attention_mode=mode, window=0)
    with pipe.flatten_enabled(config, latent_frames, trajectories), torch.no_grad():
        start = time.perf_counter()
        pipe.predict_noise(latents, 501, conditioning)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        first_seconds = time.perf_counter() - start  # kernels loaded, autotuned, compiled (--compile)
        with PeakMemory(device) as memory, AttentionFlops(device, enabled=not args.compile) as flops:
            start = time.perf_counter()
            pipe.predict_noise(latents, 501, conditioning)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    result = dict(mode=mode, frames=num_frames, rows=args.rows, seconds=seconds, first_seconds=first_seconds,
                  peak_bytes=memory.peak, attention_flops=flops.total, attention_seconds=flops.seconds, attention_flops_per_second=flops.total / flops.seconds if flops.seconds else None)
    if args.controlnet:
        result["controlnet_seconds"] = controlnet_pass(pipe, latents, conditioning, device)
    return result


def controlnet_pass(pipe, latents, conditioning, device: str) -> float:
    """Seconds of one ControlNet evaluation (of the U-Net's layout, as diffusers builds one from it)
    on the same folded batch: the cost a ControlNet adds to every steered U-Net call."""
    from diffusers import ControlNetModel

    from flatten_video.pipelines import fold_frames

    net = ControlNetModel.from_unet(pipe.unet).to(device, pipe.unet.dtype).eval()
    sample = fold_frames(latents)
    frames = latents.shape[2]
    images = torch.rand(sample.shape[0], 3, sample.shape[-2] * pipe.vae_scale_factor, sample.shape[-1] * pipe.vae_scale_factor,
                        device=device, dtype=pipe.unet.dtype)
    with torch.no_grad():
        start = time.perf_counter()
        net(sample, 501, encoder_hidden_states=conditioning.unet_kwargs(frames)["encoder_hidden_states"], controlnet_cond=images,
            return_dict=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start


@contextlib.contextmanager
def sdpa_backend(name: str | None):
    if not name:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = dict(flash=SDPBackend.FLASH_ATTENTION, efficient=SDPBackend.EFFICIENT_ATTENTION,
                    cudnn=SDPBackend.CUDNN_ATTENTION, math=SDPBackend.MATH)
    with sdpa_kernel(backends[name]):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHS, default="sd21")
    parser.add_argument("--frames", type=int, nargs="+", default=[4], help="several only with --unet-pass: a sweep in one process")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--inversion-steps", type=int, default=4)
    parser.add_argument("--inject-steps", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None, help="default: float16 on CUDA, else float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attention", choices=ATTENTION_MODES, nargs="+", default=["dsta+flatten"])
    parser.add_argument("--feature-mode", choices=("stored", "recompute", "auto"), default="auto")
    parser.add_argument("--window", type=int, default=None, help="co-denoising window in source frames (0: whole clip; "
                        "default: 32, Wan 81)")
    parser.add_argument("--overlap", type=int, default=8, help="Wan: source frames shared by windows (default: 8)")
    parser.add_argument("--method", choices=("flowedit", "inversion"), default="flowedit", help="Wan's editing method")
    parser.add_argument("--text-encoder", choices=("small", "full"), default="small",
                        help="Wan: a one-layer stand-in of UMT5-XXL's width, or all of it")
    parser.add_argument("--sdpa-backend", choices=("flash", "efficient", "cudnn", "math"), nargs="+", default=None,
                        help="several only with --unet-pass: each is timed in turn")
    parser.add_argument("--attention-backend", nargs="+", default=None,
                        help="diffusers' dispatcher backends to time in turn (native, _native_cudnn, flash, sage...); a whole "
                        "edit also gives each one's max and mean per-pixel difference from the first one's video")
    parser.add_argument("--compile", action="store_true", help="regional compilation of the denoiser's repeated blocks, "
                        "as the library's --compile does (the first, untimed evaluation's seconds include compiling; "
                        "attention FLOPs are not counted, their counter would break the graphs)")
    parser.add_argument("--channels-last", action="store_true", help="U-Net in channels-last memory format")
    parser.add_argument("--cpu-offload", action="store_true", help="enable_model_cpu_offload(): text encoder and VAE off the GPU while the U-Net runs")
    parser.add_argument("--unet-pass", action="store_true", help="time one U-Net evaluation of a guidance batch instead of a whole edit")
    parser.add_argument("--rows", type=int, default=2, help="with --unet-pass: videos in the batch (2: a guided "
                        "sampling call; 1: an inversion call)")
    parser.add_argument("--controlnet", action="store_true", help="with --unet-pass: also time a ControlNet of the U-Net's layout on the same batch")
    parser.add_argument("--call-times", action="store_true", help="a whole edit: time each kind of denoiser call "
                        "(inversion's, recording features or not; sampling's, injecting or not), synchronising around each")
    parser.add_argument("--feature-device", choices=("auto", "host"), default="auto",
                        help="stored features on the device when they fit (auto, the library's rule) or always on the host")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype or ("float16" if args.device.startswith("cuda") else "float32"))
    if args.window is None:
        args.window = 81 if is_wan(args.arch) else 32
    if args.channels_last or args.controlnet:
        if is_wan(args.arch):
            parser.error("--channels-last and --controlnet are the U-Net's")

    if args.feature_device == "host":  # the rule before features could stay on the device, for comparison
        import flatten_video.pipelines.methods.ddim_inversion as ddim_inversion

        ddim_inversion.device_budget = lambda device: None
    start = time.perf_counter()
    pipe = build(args.arch, "cpu" if args.cpu_offload else args.device, dtype, args.text_encoder)
    if args.cpu_offload:
        pipe.enable_model_cpu_offload()
    pipe.set_progress_bar_config(disable=True)
    if args.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    if args.compile:
        pipe.compile_repeated_blocks()
    built = time.perf_counter() - start
    print(f"machine: {machine()}, device {args.device}, {str(dtype).removeprefix('torch.')}")
    print(f"{args.arch}: {sum(p.numel() for p in denoiser(pipe).parameters()) / 1e6:.0f}M {pipe.denoiser_name} parameters, "
          f"built in {built:.1f} s")
    results = []
    if args.unet_pass:
        runs = [(None, sdpa) for sdpa in args.sdpa_backend or [None]]
        runs = [(name, None) for name in args.attention_backend] if args.attention_backend else runs
        for dispatched, backend in runs:
            try:
                pipe.set_attention_backend(dispatched)
            except ValueError as error:  # a kernel this machine lacks: say so and go on
                print(f"attention backend {dispatched}: not run: {error}")
                continue
            for num_frames in args.frames:
                print(f"one {pipe.denoiser_name} evaluation, {args.rows} videos x {num_frames} frames at {args.width}x{args.height}"
                      + (f", SDPA backend {backend}" if backend else "")
                      + (f", attention backend {dispatched}" if dispatched else ""))
                for mode in args.attention:
                    try:
                        with sdpa_backend(backend):
                            r = unet_pass(pipe, args, mode, args.device, dtype, num_frames)
                    except RuntimeError as error:  # a backend this GPU or dtype lacks, or out of memory
                        print(f"  {mode:>13}: failed: {str(error).splitlines()[0]}")
                        continue
                    r["sdpa_backend"], r["attention_backend"] = backend, dispatched
                    results.append(r)
                    save(args, results)
                    rate = f"{r['attention_flops_per_second'] / 1e9:.1f}" if r["attention_flops_per_second"] else "-"
                    print(f"  {mode:>13}: {r['seconds']:8.3f} s (first {r['first_seconds']:.1f} s), peak {r['peak_bytes'] / 2**30:6.2f} GiB, "
                          f"attention {r['attention_flops'] / 1e9:9.1f} GFLOP in {r['attention_seconds']:.3f} s ({rate} GFLOP/s)")
                    if "controlnet_seconds" in r:
                        print(f"  {'':>13}  a ControlNet on the same batch: {r['controlnet_seconds']:.3f} s "
                              f"({r['controlnet_seconds'] / r['seconds']:.2f}x the U-Net pass)")
    else:
        if len(args.frames) > 1 or len(args.sdpa_backend or []) > 1:
            parser.error("a whole edit takes one --frames and at most one --sdpa-backend")
        num_frames = args.frames[0]
        frames = panning_frames(num_frames, args.height, args.width)
        if is_wan(args.arch):
            print(f"Wan {args.method} of {num_frames} frames at {args.width}x{args.height}: {args.steps} steps"
                  f"{f' ({args.inject_steps} injected)' if args.method == 'inversion' else ''}, window {args.window}")
        else:
            print(f"edit of {num_frames} frames at {args.width}x{args.height}: {args.inversion_steps} inversion steps, "
                  f"{args.steps} sampling steps ({args.inject_steps} injected), feature mode {args.feature_mode}, "
                  f"window {args.window}")
        references = {}  # mode -> the first backend's video: each other backend's output is compared with it
        for dispatched in args.attention_backend or [None]:
            try:
                pipe.set_attention_backend(dispatched)
            except ValueError as error:  # a kernel this machine lacks: say so and go on
                print(f"attention backend {dispatched}: not run: {error}")
                continue
            for mode in args.attention:
                try:
                    with sdpa_backend((args.sdpa_backend or [None])[0]):
                        r, video = edit(pipe, frames, args, mode, args.device)
                except RuntimeError as error:  # a backend this GPU or dtype lacks, or out of memory
                    print(f"  {mode} with attention backend {dispatched}: failed: {str(error).splitlines()[0]}")
                    continue
                r["attention_backend"] = dispatched
                if mode in references:
                    r["difference_from_first_backend"] = pixel_difference(video, references[mode])
                else:
                    references[mode] = video
                results.append(r)
                save(args, results)
        print_table(results)


def save(args, results: list[dict]) -> None:
    """``--json``: the figures so far, rewritten after each result, so a run stopped by a time
    limit keeps what it finished."""
    if args.json:
        record = dict(machine=machine(), args=vars(args), results=results, date=time.strftime("%Y-%m-%d"))
        pathlib.Path(args.json).write_text(json.dumps(record, indent=2))


def print_table(results: list[dict]) -> None:
    if not results:
        print("nothing ran")
        return
    stages = ["flow", "trajectories", "encode", "invert", "sample", "decode"]
    width = 14
    print(f"{'':>22}" + "".join(f"{r['mode']:>{width}}" for r in results))
    if any(r.get("attention_backend") for r in results):
        print(f"{'attention backend':>22}" + "".join(f"{r.get('attention_backend') or '-':>{width}}" for r in results))
    for stage in stages:
        print(f"{stage + ' s':>22}" + "".join(f"{r['timings'].get(stage, 0.0):>{width}.3f}" for r in results))
    rows = [
        ("total s", lambda r: f"{r['total']:.3f}"),
        ("denoiser calls", lambda r: f"{r['unet_calls']}"),
        ("s per denoiser call", lambda r: f"{r['seconds_per_call']:.3f}"),
        ("attn GFLOP per call", lambda r: f"{r['attention_flops_per_call'] / 1e9:.2f}"),
        ("attn GFLOP/s", lambda r: f"{r['attention_flops_per_second'] / 1e9:.1f}" if r["attention_flops_per_second"] else "-"),
        ("peak GiB", lambda r: f"{r['peak_bytes'] / 2**30:.3f}"),
        ("features kept on", lambda r: r["feature_device"] or "-"),
    ]
    if any("difference_from_first_backend" in r for r in results):  # in 1/255: max / mean
        rows.append(("vs first backend /255", lambda r: (lambda d: f"{d['max']:.1f}/{d['mean']:.3f}" if d else "-")(
            r.get("difference_from_first_backend"))))
    kinds = [kind for r in results for kind in (r["call_kinds"] or {}) if kind]
    for kind in dict.fromkeys(kinds):  # each kind of call: "mean s (count)"
        rows.append((kind + " s", lambda r, kind=kind: (lambda k: f"{k['mean_s']:.3f} ({k['calls']})" if k else "-")(
            (r["call_kinds"] or {}).get(kind))))
    for name, value in rows:
        print(f"{name:>22}" + "".join(f"{value(r):>{width}}" for r in results))
    def label(r):
        return r["mode"] + (f" [{r['attention_backend']}]" if r.get("attention_backend") else "")

    base = results[0]
    for r in results[1:]:
        print(f"{label(r)} / {label(base)}: total {r['total'] / base['total']:.2f}x, "
              f"denoiser call {r['seconds_per_call'] / base['seconds_per_call']:.2f}x")


if __name__ == "__main__":
    main()
