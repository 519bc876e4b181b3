#!/usr/bin/env bash
# Run here, where PyPI is reachable, before a run on a lent GPU machine (which reaches no
# registry): puts into .gpu-wheels/ (git-ignored) the wheels its image lacks for the benchmarks:
# diffusers, at the version installed here (the image has torch, transformers, accelerate, peft,
# safetensors, OpenCV; its Python is 3.12). Carry .gpu-wheels with the run; gpu-device.sh
# installs them there. About 6 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
VERSION=$("$PY" -c "import diffusers; print(diffusers.__version__)")
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu-wheels "diffusers==$VERSION"
du -sh .gpu-wheels
