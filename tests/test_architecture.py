"""The package's shape (docs/architecture.md, The shape of the code): floors without import cycles, one owner per rule, one
settings schema that generates the command line, the web form and the pipeline's arguments."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import pathlib

import pytest
import torch

import flatten_video
from flatten_video.app.settings import EditSettings, Option, RuntimeSettings, Widget, add_arguments, option, options_of

PACKAGE = pathlib.Path(flatten_video.__file__).parent

#: Floors from the bottom; a module may import its own floor or lower ones only.
FLOORS = [
    {"files", "validation", "timing", "video", "flow", "trajectories", "ops", "windows", "control_maps", "choices", "hub",
     "defaults", "latent_frames", "families"},
    {"models"},
    {"backbones"},
    {"pipelines"},
    {"app"},
    {"eval"},
    {"cli", "__main__"},
]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: pathlib.Path) -> set[str]:
    """Modules of flatten_video that a file imports, at its top or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "flatten_video":
                continue
            modules = {f"{target}.{alias.name}" for alias in node.names}
            found |= {m for m in modules if m in ALL_MODULES} or {target}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "flatten_video"}
    return found - {name}


ALL_MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def floor(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the package itself: its __init__ re-exports the public names
    return next(i for i, names in enumerate(FLOORS) if parts[1] in names)


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): package_imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_has_a_floor_and_imports():
    import importlib

    for module in sorted(ALL_MODULES):
        if module != "flatten_video":
            assert floor(module) is not None, module
        if not module.endswith("__main__"):
            importlib.import_module(module)


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    # Importing flatten_video.x runs flatten_video/__init__ first, which every module would then
    # "import"; that edge is Python's, not the code's, so the package itself is left out.
    graph = {m: {t for t in targets if t != "flatten_video"} for m, targets in graph.items() if m != "flatten_video"}
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_a_lower_floor_never_imports_a_higher_one():
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if floor(module) is not None and floor(target) is not None and floor(target) > floor(module)
    ]
    assert upward == []


def test_the_import_graph_reader_sees_real_edges():
    """Guards the two tests above against passing because the reader finds nothing."""
    graph = import_graph()
    assert "flatten_video.pipelines.mixin" in graph["flatten_video.pipelines.pipeline_flatten"]
    assert "flatten_video.models.install" in graph["flatten_video.backbones.unet2d"]
    assert "flatten_video.backbones" in graph["flatten_video.pipelines.mixin"]
    assert "flatten_video.trajectories" in graph["flatten_video.ops"]
    assert "flatten_video.app.settings" in graph["flatten_video.cli"]


# Each rule's message is written once, in flatten_video.validation; these are their fragments.
RULE_MESSAGES = ["must be at least {minimum}", "must be a positive multiple of 8", "must be between 0 and", "choose one of",
                 "frames (FLATTEN follows motion between frames)", "must satisfy 0 <= start <= end <= 1"]


@pytest.mark.parametrize("fragment", RULE_MESSAGES)
def test_each_rule_message_is_written_once(fragment):
    owners = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if fragment in p.read_text()]
    assert owners == ["validation.py"]


# ----------------------------------------------------------------------------- the settings schema


@pytest.mark.parametrize("family", ["sd", "wan"])
def test_every_edit_option_is_one_field_that_reaches_the_pipeline(family):
    """Every option a family's checkpoints read, for any of its methods, is a keyword argument of
    its pipeline's call and (unless it only samples) of its ``invert_video``."""
    from flatten_video import FlattenPipeline, FlattenWanPipeline
    from flatten_video.families import FAMILIES

    pipeline = {"sd": FlattenPipeline, "wan": FlattenWanPipeline}[family]
    assert pipeline.family == family
    call = inspect.signature(pipeline.__call__).parameters
    invert = inspect.signature(pipeline.invert_video).parameters
    for f, meta in options_of(EditSettings):
        if meta.kwarg and any(meta.applies(family, method) for method in FAMILIES[family].methods):
            assert meta.kwarg in call, f.name
            assert (meta.kwarg in invert) != meta.sampling_only, f.name
        elif meta.kwarg:  # an option the schema says the family never reads is no argument of its pipeline
            assert meta.kwarg not in call and meta.kwarg not in invert, f.name
    for method in FAMILIES[family].methods:
        settings = EditSettings.for_family(family, prompt="a cat", method=method)
        assert set(settings.pipeline_kwargs(for_inversion=True)) <= set(invert)
        assert set(settings.pipeline_kwargs()) <= set(call)
    settings = EditSettings(prompt="a cat")
    assert settings.pipeline_kwargs()["num_inference_steps"] == 50 and settings.pipeline_kwargs()["prompt"] == "a cat"
    # The inversion depends on its settings, and on nothing a new prompt or guidance changes.
    identity = set(settings.inversion_identity())
    assert {"steps", "inversion_steps", "inject_steps", "seed", "flow", "attention", "variant", "window", "overlap",
            "anchors", "method", "source_prompt", "control", "control_inversion"} <= identity
    assert not identity & {"prompt", "negative_prompt", "guidance", "fps", "side_by_side", "feature_mode"}


def test_edit_command_options_are_generated_from_the_schema():
    from flatten_video.cli import build_parser

    args = build_parser().parse_args(["edit", "v.mp4", "--prompt", "a cat", "-p", "a dog"])
    # The prompt is the one option the command line takes several times (one edit each).
    assert args.prompts == ["a cat", "a dog"]
    for cls in (EditSettings, RuntimeSettings):
        assert cls.from_namespace(args) == cls()


def test_a_new_option_is_one_field(tiny_pipe):
    """A field with its metadata appears on the command line and on the page, is checked, and
    reaches the pipeline call: here DDIM's eta, which the schema does not offer today."""
    from conftest import moving_texture

    @dataclasses.dataclass
    class Extended(EditSettings):
        eta: float = option(0.0, "DDIM eta (0: deterministic)", kwarg="eta", sampling_only=True, minimum=0,
                            widget=Widget("slider", "DDIM eta", "Diffusion", 0, 1, 0.1))

    parser = argparse.ArgumentParser()
    add_arguments(parser, Extended)
    argv = ["--prompt", "a cat", "--steps", "2", "--inversion-steps", "4", "--inject-steps", "1", "--flow", "dis"]
    settings = Extended.from_namespace(parser.parse_args([*argv, "--eta", "1"]))
    assert settings.eta == 1.0 and "eta" not in settings.inversion_identity()
    with pytest.raises(ValueError, match="--eta must be at least 0"):
        dataclasses.replace(settings, eta=-1.0).check()
    field, meta = options_of(Extended)[-1]
    assert field.name == "eta" and isinstance(meta, Option) and meta.widget.section == "Diffusion"

    frames = moving_texture(frames=3, height=64, width=64)

    def edit(settings):
        generator = torch.Generator().manual_seed(0)
        return tiny_pipe(frames, generator=generator, output_type="latent", **settings.pipeline_kwargs()).frames

    # eta reaches DDIM's step: stochastic sampling differs from the deterministic default.
    assert not torch.equal(edit(settings), edit(dataclasses.replace(settings, eta=0.0)))


def test_form_fields_follow_the_schema():
    from flatten_video.app import webui

    assert webui.FORM_FIELDS == tuple(f.name for f, meta in options_of(EditSettings) if meta.widget)
    assert "fps" not in webui.FORM_FIELDS and webui.FORM_FIELDS[:2] == ("prompt", "negative_prompt")


def test_the_command_line_and_the_schema_import_no_heavy_library():
    """``flatten-video --help`` answers at once: torch, diffusers and Gradio load in the handlers."""
    import subprocess
    import sys

    code = ("import sys, flatten_video.cli, flatten_video.app.settings; "
            "flatten_video.cli.build_parser(['edit']).parse_args(['edit', 'v.mp4', '-p', 'a cat']); "
            "print(sorted({'torch', 'diffusers', 'transformers', 'gradio', 'cv2'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_package_loads_its_public_names_on_first_use():
    assert set(flatten_video.__all__) == set(flatten_video._EXPORTS)
    for name in flatten_video.__all__:
        assert getattr(flatten_video, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        flatten_video.nothing  # noqa: B018
