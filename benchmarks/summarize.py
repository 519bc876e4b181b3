"""A Markdown table of the JSON files ``pipeline.py --json`` wrote into a folder (gpu.sh's results).

Run: python benchmarks/summarize.py gpu-results
"""

import json
import pathlib
import sys


def rows(folder: pathlib.Path):
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        args = record["args"]
        for r in record["results"]:
            frames = r.get("frames", args["frames"])
            frames = frames[0] if isinstance(frames, list) else frames
            backend = r.get("sdpa_backend") or args["sdpa_backend"] or ""
            backend = backend[0] if isinstance(backend, list) else backend
            backend = " ".join(filter(None, [backend, r.get("attention_backend")]))
            setting = " ".join(filter(None, [args['arch'], f"{frames}x{args['width']}x{args['height']}", args['dtype'], backend]))
            rate = r.get("attention_flops_per_second")
            rate = f"{rate / 1e12:.1f}" if rate else "-"
            if "timings" in r:  # a whole edit
                kinds = "; ".join(f"{kind} {k['mean_s']:.3f} s x{k['calls']}" for kind, k in (r.get("call_kinds") or {}).items())
                where = f", features on {r['feature_device']}" if r.get("feature_device") else ""
                if r.get("difference_from_first_backend"):
                    d = r["difference_from_first_backend"]
                    where += f", {d['max']:.1f}/255 max and {d['mean']:.3f}/255 mean from the first backend's video"
                yield (path.stem, setting, r["mode"], f"{r['total']:.1f} s edit ({r['unet_calls']} U-Net calls, "
                       f"{r['seconds_per_call']:.3f} s each{where}{'; ' + kinds if kinds else ''})",
                       f"{r['peak_bytes'] / 2**30:.2f}", rate)
            else:  # one U-Net evaluation
                rows_ = f", {r['rows']} row{'s' if r['rows'] != 1 else ''}" if "rows" in r else ""
                rows_ += f", first call {r['first_seconds']:.1f} s" if "first_seconds" in r else ""
                yield (path.stem, setting, r["mode"], f"{r['seconds']:.3f} s U-Net pass{rows_}",
                       f"{r['peak_bytes'] / 2**30:.2f}", rate)


def main() -> None:
    folder = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-results")
    print("| run | setting | attention | time | peak GiB | attention TFLOP/s |")
    print("|---|---|---|---|---:|---:|")
    for row in rows(folder):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
