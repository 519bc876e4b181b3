"""Tests of ``flatten-video eval`` and ``bench`` (flatten_video.eval), offline, with tiny models.

A fake LOVEU-TGVE folder (64x64 jpg frames, the official CSV form with subset header rows) is
benchmarked with the tiny Stable Diffusion of conftest.py, DIS flow, a few steps, and a tiny CLIP
that also stands in for PickScore.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import types

import pytest
from PIL import Image

from flatten_video.eval import dataset, runner
from flatten_video import cli
from flatten_video.cli import build_parser, main
from flatten_video.pipelines import FlattenPipeline
from flatten_video.video import read_video, write_video

from conftest import moving_texture
from metrics_fixtures import recolour

HEADER = ["Video name", "Our GT caption", "Style Change Caption", "Object Change Caption",
          "Background Change Caption", "Multiple Changes Caption"]


def write_frames(folder, frames=4, seed=0):
    folder.mkdir(parents=True)
    video = moving_texture(frames, 64, 64, shift=4, seed=seed)
    for index, frame in enumerate(video):
        array = (frame.permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(array).save(folder / f"{index:05d}.jpg", quality=95)


def make_tgve(root, rows, videos={("DAVIS_480p", "dog"): 0, ("videvo_480p", "car"): 1}):
    """A LOVEU-TGVE-like folder: frames of ``videos`` ((subset, name) -> seed; None: empty folder)
    and the captions CSV with ``rows``."""
    for (subset, name), seed in videos.items():
        folder = root / subset / "480p_frames" / name
        if seed is None:
            folder.mkdir(parents=True)
        else:
            write_frames(folder, seed=seed)
    with open(root / "LOVEU-TGVE-2023_Dataset.csv", "w", newline="") as file:
        csv.writer(file).writerows([HEADER, *rows])
    return root


def prompts(name, style="watercolor painting"):
    return [name, f"a {name}", f"a {name}, {style}", f"a cat instead of a {name}", f"a {name} on the moon", f"a cat on the moon, {style}"]


def subset_row(name):
    """A subset row of the official CSV: the name in 'Video name', the other cells empty."""
    return [name, "", "", "", "", ""]


BLANK = subset_row("")

# The official LOVEU-TGVE-2023_Dataset.csv form (docs/architecture.md, The method (evaluation)): header first, "<Subset> Videos:" rows.
OFFICIAL_ROWS = [subset_row("DAVIS Videos:"), prompts("dog"), BLANK, subset_row("Videvo Videos:"), prompts("car")]


@pytest.fixture
def tgve(tmp_path):
    return make_tgve(tmp_path / "tgve", OFFICIAL_ROWS)


@pytest.fixture
def run(tmp_path, tiny_sd_path, clip_path):
    """cli.main(["bench", DATA, <tiny settings>, *extra]) -> exit status; results in tmp_path/out."""

    def run(data, *extra):
        return main([
            "bench", str(data), "-o", str(tmp_path / "out"), "--model", str(tiny_sd_path),
            "--frames", "3", "--width", "64", "--height", "64", "--steps", "2", "--inversion-steps", "4",
            "--inject-steps", "1", "--flow", "dis", "--device", "cpu", "--dtype", "float32",
            "--clip-model", clip_path, "--pick-model", clip_path, "--pick-processor", clip_path, *extra,
        ])

    return run


@pytest.fixture
def shared_pipe(monkeypatch, tiny_pipe):
    """Reuse the session's tiny pipeline instead of loading it again for every run (speed)."""
    monkeypatch.setattr(runner, "load_pipeline", lambda *args: tiny_pipe)
    return tiny_pipe


def count_calls(monkeypatch, name, fail_on=None, error=KeyboardInterrupt):
    """Wrap FlattenPipeline.<name> to record its calls' keyword arguments; the ``fail_on``-th call
    raises ``error`` (only that one: later runs keep counting past it)."""
    calls = []
    original = getattr(FlattenPipeline, name)

    def wrapper(self, *args, **kwargs):
        calls.append(kwargs)
        if len(calls) == fail_on:
            raise error()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FlattenPipeline, name, wrapper)
    return calls


def items_on_disk(out):
    return sorted(str(p.relative_to(out / "items")) for p in (out / "items").rglob("*.json"))


ALL_ITEMS = sorted(f"{s}/{v}/{e}.json" for s, v in (("DAVIS_480p", "dog"), ("videvo_480p", "car")) for e in dataset.EDITS)


# ----------------------------------------------------------------------------- end to end


def test_bench_end_to_end(tmp_path, tgve, run, monkeypatch, capsys):
    inversions = count_calls(monkeypatch, "invert_video")
    assert run(tgve) == 0
    out = tmp_path / "out"

    assert len(inversions) == 2  # once per video, reused for its four prompts
    assert items_on_disk(out) == ALL_ITEMS
    record = json.loads((out / "items/DAVIS_480p/dog/object.json").read_text())
    assert record["prompt"] == "a cat instead of a dog"
    assert record["split"] == "TGVE-D (DAVIS)"
    assert record["settings"]["steps"] == 2 and record["settings"]["flow"] == "dis"
    assert record["settings"]["frame_pairs"] == "all"  # CLIP-F over all ordered pairs of distinct frames
    assert record["frames"]["count"] == 3 and (record["frames"]["width"], record["frames"]["height"]) == (64, 64)
    assert set(record["scores"]) == {"clip_t", "clip_f", "e_warp", "s_edit", "pick_score"}
    assert record["scores"]["clip_t"] == pytest.approx(record["scores_raw"]["clip_t"] * 100)
    assert {"sample", "decode", "metrics", "video"} <= record["timings"].keys()
    assert {"read", "flow", "trajectories", "encode", "invert"} <= record["timings"]["video"].keys()
    assert len(list(out.rglob("*.mp4"))) == 8 and (out / "items/videvo_480p/car/multiple.mp4").stat().st_size > 0
    assert not list(out.rglob("*.tmp*")) and not (out / "failures.json").exists()

    with open(out / "summary.csv") as file:
        rows = {row["split"]: row for row in csv.DictReader(file)}
    assert list(rows) == ["TGVE-D (DAVIS)", "TGVE-V (Videvo)", "Overall"]
    assert [rows[s]["edits"] for s in rows] == ["4", "4", "8"] and rows["Overall"]["videos"] == "2"
    assert {row["clip_f_pairs"] for row in rows.values()} == {"all"}
    records = [json.loads(p.read_text()) for p in (out / "items").rglob("*.json")]
    mean_clip_t = sum(r["scores"]["clip_t"] for r in records) / 8
    assert float(rows["Overall"]["clip_t"]) == pytest.approx(mean_clip_t, abs=1e-3)
    markdown = (out / "summary.md").read_text()
    assert "| TGVE-D (DAVIS) | 1 | 4 |" in markdown and "| Overall | 2 | 8 |" in markdown
    assert "CLIP-F: mean cosine over all ordered pairs of distinct frames (frame_pairs=all)." in markdown
    assert "| Overall | 2 | 8 |" in capsys.readouterr().out


def test_sample_leaves_the_inversion_unchanged(tiny_pipe):
    """The bench samples several prompts from one inversion: sampling must not change it."""
    frames = moving_texture(3, 64, 64)
    trajectories = tiny_pipe.prepare_trajectories(frames, flow_method="dis", progress=False)
    inversion = tiny_pipe.invert(
        tiny_pipe.encode_video(frames), trajectories, num_inversion_steps=4, num_inference_steps=2, inject_steps=1
    )
    latents = inversion.latents.clone()
    first = tiny_pipe.sample(inversion, "a cat")
    tiny_pipe.sample(inversion, "a dog")
    assert inversion.latents.equal(latents)
    assert tiny_pipe.sample(inversion, "a cat").equal(first)


def test_resume_skips_finished_items(tmp_path, tgve, run, monkeypatch, shared_pipe):
    out = tmp_path / "out"
    samples = count_calls(monkeypatch, "sample", fail_on=2)  # Ctrl-C during the second item
    assert run(tgve) == 130
    assert items_on_disk(out) == ["DAVIS_480p/dog/style.json"]
    finished = (out / "items/DAVIS_480p/dog/style.json").read_text()

    assert run(tgve) == 0
    assert len(samples) == 2 + 7  # the finished item is not computed again
    assert (out / "items/DAVIS_480p/dog/style.json").read_text() == finished
    assert items_on_disk(out) == ALL_ITEMS
    with open(out / "summary.csv") as file:
        assert [row["edits"] for row in csv.DictReader(file)][-1] == "8"

    assert run(tgve) == 0 and len(samples) == 9  # nothing left to do
    assert run(tgve, "--seed", "1", "--limit", "1") == 0 and len(samples) == 10  # other settings: redone


# ----------------------------------------------------------------------------- bad input


BAD_ROWS = [  # subset rows naming the folders: a lenient form
    subset_row("DAVIS_480p"),
    ["dog", "a dog", "", "a cat", "a dog on the moon", "a cat on the moon"],  # empty style prompt
    subset_row("videvo_480p"),
    prompts("car"),  # its folder holds no frames
]


def test_bad_items_are_reported_and_the_others_run(tmp_path, run, shared_pipe, capsys):
    data = make_tgve(tmp_path / "tgve", BAD_ROWS, {("DAVIS_480p", "dog"): 0, ("videvo_480p", "car"): None})
    assert run(data, "--edits", "style,object") == 1
    out = tmp_path / "out"
    assert items_on_disk(out) == ["DAVIS_480p/dog/object.json"]
    failures = json.loads((out / "failures.json").read_text())
    assert [f["item"] for f in failures] == ["DAVIS_480p/dog/style", "videvo_480p/car/style", "videvo_480p/car/object"]
    assert "empty 'style' prompt" in failures[0]["error"]
    assert "no images" in failures[1]["error"]
    err = capsys.readouterr().err
    assert "3 of 4 item(s) failed" in err and "DAVIS_480p/dog/style: empty 'style' prompt" in err


def test_fail_fast_stops_at_the_first_failure(tmp_path, run, shared_pipe, capsys):
    data = make_tgve(tmp_path / "tgve", BAD_ROWS, {("DAVIS_480p", "dog"): 0, ("videvo_480p", "car"): None})
    assert run(data, "--fail-fast") == 1
    assert not (tmp_path / "out" / "items").exists()  # the first item failed, nothing else ran
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("flatten-video: error: DAVIS_480p/dog/style: empty 'style' prompt")


@pytest.mark.parametrize("flag", ["--clip-model", "--pick-model"])
def test_unloadable_metrics_model_stops_the_run_before_any_edit(tmp_path, tgve, run, flag, monkeypatch, capsys):
    inversions, samples = count_calls(monkeypatch, "invert_video"), count_calls(monkeypatch, "sample")
    monkeypatch.setattr(runner, "load_pipeline", lambda *args: pytest.fail("Stable Diffusion loaded before the metrics models"))
    assert run(tgve, flag, str(tmp_path / "no-such-model")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"flatten-video: error: cannot load the metrics model of {flag}, so nothing was edited: ")
    assert "no-such-model' does not exist" in err[0]
    assert inversions == [] and samples == [] and not (tmp_path / "out" / "items").exists()


def test_frame_pairs_consecutive_is_named_in_the_summary(tmp_path, tgve, run, shared_pipe):
    assert run(tgve, "--limit", "1", "--frame-pairs", "consecutive") == 0
    out = tmp_path / "out"
    record = json.loads((out / "items/DAVIS_480p/dog/style.json").read_text())
    assert record["settings"]["frame_pairs"] == "consecutive"
    assert "CLIP-F: mean cosine over consecutive frames (frame_pairs=consecutive)." in (out / "summary.md").read_text()
    with open(out / "summary.csv") as file:
        assert {row["clip_f_pairs"] for row in csv.DictReader(file)} == {"consecutive"}


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "no captions CSV"),
        (lambda root: (root / "notes.csv").write_text("a,b\n1,2\n"), "no header row"),
    ],
)
def test_missing_or_malformed_csv_is_fatal(tmp_path, run, setup, message, capsys):
    data = tmp_path / "tgve"
    write_frames(data / "DAVIS_480p" / "480p_frames" / "dog")
    setup(data)
    assert run(data) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flatten-video: error:") and message in err[0]


def test_unloadable_sd_model_is_fatal(tmp_path, tgve, run, capsys):
    assert run(tgve, "--model", str(tmp_path / "no-such-model")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("flatten-video: error: no such folder: ") and "no-such-model" in err[-1]
    assert not (tmp_path / "out" / "items").exists()


# ----------------------------------------------------------------------------- CSV, selection, sharding


def test_csv_forms(tmp_path):
    # A "subset" column instead of header rows, odd spacing and case, a short row.
    root = tmp_path / "tgve"
    for subset in ("DAVIS_480p", "youtube_480p"):
        (root / subset / "480p_frames" / "v").mkdir(parents=True)
    rows = [
        ["subset ", " video NAME", "our gt caption", "STYLE change caption", "object change caption",
         "background change caption", "multiple changes caption"],
        ["davis", "v", "c", "s", "o", "b", "m"],
        [" YouTube_480p ", "v", "c", "s", "o"],
    ]
    with open(root / "captions.csv", "w", newline="") as file:
        csv.writer(file).writerows(rows)
    items = dataset.load_items(root, dataset.find_csv(root))
    assert [(i.subset, i.edit, i.prompt) for i in items[:4]] == [("DAVIS_480p", e, e[0]) for e in dataset.EDITS]
    assert items[4].subset == "youtube_480p" and items[4].frames_dir == root / "youtube_480p/480p_frames/v"
    assert [i.error is None for i in items[4:]] == [True, True, False, False]
    assert dataset.split_name(items[4].subset) == "YouTube"
    assert len(dataset.select_items(items, subsets=["DAVIS"], edits=["style", "object"])) == 2
    assert [i.name for i in dataset.select_items(items, limit=1)] == ["DAVIS_480p/v/style"]


def test_official_csv_form(tmp_path):
    """The file as LOVEU-TGVE-2023 ships it: header on the first line, a "<Subset> Videos:" row
    opening each subset, blank rows between subsets; frames in <subset>_480p/480p_frames/<video>."""
    root = tmp_path / "tgve"
    videos = {"DAVIS_480p": ["blackswan", "car-turn"], "youtube_480p": ["salsa"], "videvo_480p": ["swans"]}
    for subset, names in videos.items():
        for name in names:
            (root / subset / "480p_frames" / name).mkdir(parents=True)
    rows = [
        subset_row("DAVIS Videos:"), prompts("blackswan"), prompts("car-turn"), BLANK,
        subset_row("Youtube Videos:"), prompts("salsa"), BLANK,
        subset_row("Videvo Videos:"), prompts("swans"),
    ]
    with open(root / "LOVEU-TGVE-2023_Dataset.csv", "w", newline="") as file:
        csv.writer(file).writerows([HEADER, *rows])
    assert (root / "LOVEU-TGVE-2023_Dataset.csv").read_text().splitlines()[:3] == [
        ",".join(HEADER), "DAVIS Videos:,,,,,", "blackswan,a blackswan,\"a blackswan, watercolor painting\",a cat instead of a blackswan,a blackswan on the moon,\"a cat on the moon, watercolor painting\""
    ]

    items = dataset.load_items(root, dataset.find_csv(root))
    assert [i.error for i in items] == [None] * 16
    expected = [(subset, name, edit) for subset, names in videos.items() for name in names for edit in dataset.EDITS]
    assert [(i.subset, i.video, i.edit) for i in items] == expected
    assert [dataset.split_name(i.subset) for i in items[::4]] == ["TGVE-D (DAVIS)", "TGVE-D (DAVIS)", "YouTube", "TGVE-V (Videvo)"]
    swans = items[12:]
    assert [i.prompt for i in swans] == prompts("swans")[2:] and {i.caption for i in swans} == {"a swans"}
    assert {i.frames_dir for i in swans} == {root / "videvo_480p/480p_frames/swans"}
    assert [i.name for i in dataset.select_items(items, subsets=["Youtube Videos:"])] == [f"youtube_480p/salsa/{e}" for e in dataset.EDITS]


def test_rows_without_a_known_subset_name_the_subset_rows(tmp_path):
    root = tmp_path / "tgve"
    (root / "DAVIS_480p" / "480p_frames" / "dog").mkdir(parents=True)
    rows = [prompts("early"), subset_row("DAVIS Videos:"), prompts("dog"), BLANK, subset_row("Vimeo Videos:"), prompts("cat")]
    with open(root / "captions.csv", "w", newline="") as file:
        csv.writer(file).writerows([HEADER, *rows])
    items = dataset.load_items(root, dataset.find_csv(root))
    early, dog, cat = items[0], items[4], items[8]
    assert dog.error is None and dog.subset == "DAVIS_480p"
    seen = f"subset rows in captions.csv: 'DAVIS Videos:', 'Vimeo Videos:'; folders in {root}: DAVIS_480p"
    assert early.error == f"line 2 comes before any subset row and the CSV has no subset column ({seen})"
    assert cat.error == f"no folder for subset 'Vimeo Videos:' of line 7 ({seen})"
    assert cat.subset == "Vimeo Videos:" and dataset.split_name(cat.subset) == "Vimeo Videos:"


def test_shard_splits_whole_videos_across_processes():
    items = [dataset.Item(s, f"{s}{v}", e, "p") for s in ("a", "b") for v in range(5) for e in dataset.EDITS]
    for count in (1, 2, 3, 4, 16):
        shards = [dataset.shard(items, index, count) for index in range(count)]
        assert shards == [dataset.shard(items, index, count) for index in range(count)]  # deterministic
        assert sorted(i.name for s in shards for i in s) == sorted(i.name for i in items)  # complete, disjoint
        owners = {(i.subset, i.video): n for n, s in enumerate(shards) for i in s}
        assert all(owners[(i.subset, i.video)] == n for n, s in enumerate(shards) for i in s)  # whole videos
        sizes = [len({i.video for i in s}) for s in shards]
        assert max(sizes) - min(sizes) <= 1


def test_processes_share_the_work_and_the_main_one_summarizes(tmp_path, tgve, run, shared_pipe, monkeypatch):
    """Two accelerate processes, played one after the other: each runs its videos, rank 0 summarizes."""
    import accelerate

    def fake_state(rank):
        return lambda **options: types.SimpleNamespace(
            process_index=rank, num_processes=2, is_main_process=rank == 0, device="cpu", wait_for_everyone=lambda: None
        )

    out = tmp_path / "out"
    monkeypatch.setattr(accelerate, "PartialState", fake_state(1))
    assert run(tgve, "--edits", "style") == 0
    assert items_on_disk(out) == ["videvo_480p/car/style.json"] and not (out / "summary.md").exists()
    monkeypatch.setattr(accelerate, "PartialState", fake_state(0))
    assert run(tgve, "--edits", "style") == 0
    assert items_on_disk(out) == ["DAVIS_480p/dog/style.json", "videvo_480p/car/style.json"]
    assert "| Overall | 2 | 2 |" in (out / "summary.md").read_text()
    assert not list(out.glob("failures*"))


# ----------------------------------------------------------------------------- launcher, ablations


def test_accelerate_launcher_reexecutes_the_same_command(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(cli.subprocess, "run", lambda command: commands.append(command) or types.SimpleNamespace(returncode=0))
    argv = ["bench", str(tmp_path), "--steps", "3", "--inject-steps", "2", "--negative-prompt", "", "--ablation", "dsta", "--no-pick-score",
            "--guidance", "7.5", "--lora", "a.safetensors", "--lora", "org/b", "--launcher", "accelerate", "--num-processes", "2"]
    assert main(["--debug", *argv]) == 0
    command = commands[0]
    module = command.index("flatten_video")
    assert command[1:5] == ["-m", "accelerate.commands.launch", "--num_processes", "2"] and command[module - 1] == "-m"
    relaunched = build_parser().parse_args(command[module + 1 :])
    original = build_parser().parse_args(["--debug", *argv])
    for name, value in vars(original).items():
        if name not in ("launcher", "num_processes", "command_parser"):
            assert getattr(relaunched, name) == value, name
    assert relaunched.launcher == "none"


def test_python_dash_m_flatten_video_runs_the_command_line():
    """What ``accelerate launch -m flatten_video`` starts in every process."""
    result = subprocess.run([sys.executable, "-m", "flatten_video", "bench", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "DATA_DIR" in result.stdout and "--launcher" in result.stdout


def test_ablation_sets_attention_and_output_folder(tmp_path, tgve, run, shared_pipe, monkeypatch):
    inversions = count_calls(monkeypatch, "invert_video")
    assert run(tgve, "--ablation", "combo-I", "--limit", "1") == 0
    assert inversions[0]["attention_mode"] == "dsta+flatten" and inversions[0]["flatten_variant"] == "I"
    record = json.loads((tmp_path / "out/combo-I/items/DAVIS_480p/dog/style.json").read_text())
    assert (record["settings"]["attention"], record["settings"]["variant"]) == ("dsta+flatten", "I")
    assert (tmp_path / "out/combo-I/summary.md").exists()


# ----------------------------------------------------------------------------- eval


@pytest.fixture
def edit_pair(tmp_path):
    source = tmp_path / "source"
    write_frames(source)
    frames = read_video(source, 4).frames
    edited = write_video(recolour(frames), tmp_path / "edited.mp4", fps=8)
    return str(edited), str(source)


def test_eval_prints_a_table(edit_pair, clip_path, capsys):
    argv = ["eval", *edit_pair, "--prompt", "a red dog", "--frames", "4", "--flow", "dis", "--device", "cpu",
            "--clip-model", clip_path, "--no-pick-score"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["CLIP-T", "CLIP-F", "Ewarp", "Sedit", "PickScore"]
    assert lines[1].endswith("over all ordered pairs of distinct frames")
    assert lines[-1].split()[1] == "n/a"


def test_eval_json(edit_pair, clip_path, capsys):
    from flatten_video.eval.metrics import evaluate_video

    argv = ["eval", *edit_pair, "--prompt", "a red dog", "--frames", "4", "--flow", "dis", "--device", "cpu",
            "--clip-model", clip_path, "--pick-model", clip_path, "--pick-processor", clip_path, "--json"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    edited, source = (read_video(path, 4).frames for path in edit_pair)
    expected = evaluate_video(edited, source, "a red dog", clip_model=clip_path, pick_model=clip_path,
                              pick_processor=clip_path, flow_method="dis", device="cpu", frame_pairs="all")
    assert record["scores"] == pytest.approx(expected.to_table_units())
    assert record["frames"] == 4 and record["prompt"] == "a red dog" and record["frame_pairs"] == "all"

    assert main([*argv, "--frame-pairs", "consecutive"]) == 0
    record = json.loads(capsys.readouterr().out)
    consecutive = evaluate_video(edited, source, "a red dog", clip_model=clip_path, pick_model=None,
                                 flow_method="dis", device="cpu", frame_pairs="consecutive")
    assert record["frame_pairs"] == "consecutive" and record["scores"]["clip_f"] == pytest.approx(consecutive.clip_f * 100)


def test_eval_reports_too_few_frames_in_one_line(edit_pair, clip_path, capsys):
    assert main(["eval", *edit_pair, "--prompt", "a dog", "--frames", "8", "--clip-model", clip_path]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "8 frames" in err[0]


@pytest.mark.parametrize("header, message", [
    (["Video name", "Our GT caption", "Style Change Caption", "Object count", "Object Change Caption",
      "Background Change Caption", "Multiple Changes Caption"], None),
    (["Video name", "Our GT caption", "Style Change Caption", "Object captions", "Background Change Caption",
      "Multiple Changes Caption"], "no column named 'Object Change Caption'"),
    (["Video name", "Our GT caption", "Style Change Caption", "Object Change Caption", "object change caption ",
      "Background Change Caption", "Multiple Changes Caption"], "more than one column named 'Object Change Caption'"),
])
def test_the_caption_columns_are_matched_by_their_whole_name(tmp_path, header, message):
    """An extra "Object count" column must not be read as the object edit's prompts."""
    root = tmp_path / "tgve"
    (root / "DAVIS_480p" / "480p_frames" / "dog").mkdir(parents=True)
    cells = {"Video name": "dog", "Our GT caption": "a dog", "Style Change Caption": "a dog, watercolor",
             "Object count": "2", "Object Change Caption": "a cat", "Background Change Caption": "a dog on the moon",
             "Multiple Changes Caption": "a cat on the moon"}
    with open(root / "captions.csv", "w", newline="") as file:
        csv.writer(file).writerows([header, ["DAVIS Videos:"] + [""] * (len(header) - 1),
                                    [cells.get(name.strip(), "x") for name in header]])
    if message is None:
        items = dataset.load_items(root, root / "captions.csv")
        assert {item.edit: item.prompt for item in items}["object"] == "a cat"
        return
    with pytest.raises(dataset.BenchError, match=message) as error:
        dataset.load_items(root, root / "captions.csv")
    assert "\n" not in str(error.value)
