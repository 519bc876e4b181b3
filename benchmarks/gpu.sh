#!/usr/bin/env bash
# One command for a machine with a CUDA GPU, no arguments needed:
#
#   bash benchmarks/gpu.sh [OUT_DIR]        (default OUT_DIR: ./gpu-results)
#
# 1. the paper's setting on the SD 2.1 architecture (random weights, nothing downloaded):
#    32 frames at 512x512, 100 inversion steps, 50 sampling steps with 40 injected, fp16;
# 2. a sweep of one U-Net evaluation (a guidance batch): 8, 16, 32, 64 frames; fp16 vs bf16;
#    SDPA backends flash / efficient / cuDNN where the GPU has them; DSTA vs DSTA + FLATTEN;
#    torch.compile of the U-Net's blocks and channels-last;
# 3. 128 frames edited in windows (DESIGN.md 4) against the 32-frame figure; an SDXL edit of 16
#    frames at 1024x1024 (10 sampling steps: multiply the per-call time for 50);
# then a table of everything (summary.md) beside the JSON files. Budget: under 8 minutes on an H100.
set -uo pipefail
OUT=$(realpath -m "${1:-./gpu-results}")
mkdir -p "$OUT"
cd "$(dirname "$0")"
PY=${PYTHON:-python}
ARCH=${ARCH:-sd21}
SIZE=(--width 512 --height 512)

run() {  # run NAME ARGS...: one pipeline.py run, its output kept, a failure noted and passed over
  local name=$1; shift
  echo "== $name: pipeline.py $*" | tee "$OUT/$name.txt"
  if ! timeout "${STEP_TIMEOUT:-240}" "$PY" pipeline.py --arch "$ARCH" "$@" --json "$OUT/$name.json" 2>&1 | tee -a "$OUT/$name.txt"; then
    echo "!! $name failed or ran out of time" | tee -a "$OUT/$name.txt"
  fi
}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(), torch.__version__)" \
  | tee "$OUT/device.txt" || { echo "gpu.sh needs a CUDA GPU"; exit 1; }

run paper --frames 32 "${SIZE[@]}" --steps 50 --inversion-steps 100 --inject-steps 40 --dtype float16 --attention dsta+flatten
for frames in 8 16 32 64; do
  run "unet-f${frames}-fp16" --unet-pass --frames "$frames" "${SIZE[@]}" --dtype float16 --attention dsta dsta+flatten
done
run unet-f32-bf16 --unet-pass --frames 32 "${SIZE[@]}" --dtype bfloat16 --attention dsta dsta+flatten
for backend in flash efficient cudnn; do
  run "unet-f32-$backend" --unet-pass --frames 32 "${SIZE[@]}" --dtype float16 --attention dsta+flatten --sdpa-backend "$backend"
done
run unet-f32-compile --unet-pass --frames 32 "${SIZE[@]}" --dtype float16 --attention dsta+flatten --compile
run unet-f32-channels-last --unet-pass --frames 32 "${SIZE[@]}" --dtype float16 --attention dsta+flatten --channels-last
run long-128 --frames 128 "${SIZE[@]}" --steps 10 --inversion-steps 20 --inject-steps 8 --dtype float16 --window 32
run long-32 --frames 32 "${SIZE[@]}" --steps 10 --inversion-steps 20 --inject-steps 8 --dtype float16 --window 32
ARCH=sdxl run sdxl-16 --frames 16 --width 1024 --height 1024 --steps 10 --inversion-steps 20 --inject-steps 8 --dtype float16

"$PY" summarize.py "$OUT" | tee "$OUT/summary.md"
