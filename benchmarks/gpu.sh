#!/usr/bin/env bash
# One command for a machine with a CUDA GPU, no arguments needed:
#
#   bash benchmarks/gpu.sh [OUT_DIR]        (default OUT_DIR: ./gpu-results)
#
# Runs in order of what matters most, so a run cut short still answers the main questions
# (SD 2.1 architecture, random weights, nothing downloaded; fp16; 512x512 unless said):
# 1. one U-Net evaluation of a guidance batch at 16, 32 and 64 frames: spatial vs DSTA vs
#    DSTA + FLATTEN (the cost of FLATTEN's attention), then at 32 frames per diffusers dispatcher
#    backend (native, cuDNN, flash, sage...; a missing package is one line and the next runs);
# 2. the paper's setting, 32 frames, as a whole edit with fewer steps (STEPS/INV_STEPS/INJECT,
#    default 10/20/8; the paper's 50/100/40 is FULL=1), per dispatcher backend on one seed: time,
#    peak, each kind of U-Net call timed on its own (the first; inversion's, recording features
#    or not; sampling's, injecting or not) and each backend's max and mean per-pixel difference
#    from native's video (native's edit runs first and its first call loads the kernels: that call
#    is reported on its own, compare per-call means); then with the features kept on the host (the placement before they
#    could stay on the GPU), and one U-Net evaluation of 1 row (an inversion call);
# 3. Wan 2.1 1.3B (bf16, random weights, the whole UMT5-XXL text encoder under model CPU offload):
#    one transformer evaluation of 81 frames at 832x480, dsta vs dsta+flatten (target <= 1.05x)
#    and per dispatcher backend; FlowEdit of 81 frames with and without FLATTEN (WAN_STEPS,
#    default 4 of the 50; peak <= 16 GB); 241 frames in windows of 81 (peak <= 1.2x the 81-frame one);
# 4. regional compilation (--compile: the repeated blocks) of the U-Net and of Wan's transformer:
#    the first call's seconds include compiling, the timed one after it is the gain;
# 5. what 2026-11-26 measured already, last: 128 frames in windows of 32 against 32 frames, an
#    SDXL edit of 16 frames at 1024x1024, bf16, PyTorch's SDPA backends, channels-last;
# then a table of everything (summary.md) beside the JSON and text files. About 12 minutes on an H200.
#
# On a machine without this package installed (a lent GPU machine: see gpu-device.sh), the
# package is read from ../src.
set -uo pipefail
OUT=$(realpath -m "${1:-./gpu-results}")
mkdir -p "$OUT"
cd "$(dirname "$0")"
PY=${PYTHON:-python}
export PYTHONPATH="$(realpath ../src)${PYTHONPATH:+:$PYTHONPATH}"
SIZE=(--width 512 --height 512)
if [ "${FULL:-0}" = 1 ]; then EDIT=(--steps 50 --inversion-steps 100 --inject-steps 40)
else EDIT=(--steps "${STEPS:-4}" --inversion-steps "${INV_STEPS:-8}" --inject-steps "${INJECT:-3}"); fi
PAPER=(--steps "${STEPS:-10}" --inversion-steps "${INV_STEPS:-20}" --inject-steps "${INJECT:-8}")
[ "${FULL:-0}" = 1 ] && PAPER=("${EDIT[@]}")

STARTED=${FROM:+no}  # FROM=NAME: begin at that run (a second call of a run cut short)
run() {  # run NAME ARCH ARGS...: one pipeline.py run, its output kept, a failure noted and passed over
  local name=$1 arch=$2; shift 2
  if [ "${STARTED:-yes}" = no ]; then [ "$name" = "$FROM" ] && STARTED=yes || return 0; fi
  echo "== $(date +%T) $name: pipeline.py --arch $arch $*" | tee "$OUT/$name.txt"
  if ! timeout "${STEP_TIMEOUT:-240}" "$PY" pipeline.py --arch "$arch" "$@" --json "$OUT/$name.json" 2>&1 | tee -a "$OUT/$name.txt"; then
    echo "!! $name failed or ran out of time" | tee -a "$OUT/$name.txt"
  fi
}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(), torch.__version__)" \
  | tee "$OUT/device.txt" || { echo "gpu.sh needs a CUDA GPU"; exit 1; }

BACKENDS=(native _native_cudnn _native_flash flash sage)
run unet-fp16 sd21 --unet-pass --frames 16 32 64 "${SIZE[@]}" --dtype float16 --attention spatial dsta dsta+flatten
run unet-dispatcher sd21 --unet-pass --frames 32 "${SIZE[@]}" --dtype float16 --attention dsta+flatten --attention-backend "${BACKENDS[@]}"
run paper sd21 --frames 32 "${SIZE[@]}" "${PAPER[@]}" --dtype float16 --attention dsta+flatten --call-times --attention-backend "${BACKENDS[@]}"
run paper-host sd21 --frames 32 "${SIZE[@]}" "${PAPER[@]}" --dtype float16 --attention dsta+flatten --call-times --feature-device host
run unet-1row sd21 --unet-pass --rows 1 --frames 32 "${SIZE[@]}" --dtype float16 --attention dsta dsta+flatten
WAN=(--width 832 --height 480 --dtype bfloat16 --text-encoder full --cpu-offload)
run wan-pass wan21-1.3b --unet-pass --frames 81 --width 832 --height 480 --dtype bfloat16 --attention dsta dsta+flatten
run wan-dispatcher wan21-1.3b --unet-pass --frames 81 --width 832 --height 480 --dtype bfloat16 --attention dsta+flatten --attention-backend native _native_cudnn flash sage
run wan-81 wan21-1.3b --frames 81 "${WAN[@]}" --steps "${WAN_STEPS:-4}" --attention dsta dsta+flatten
run wan-241 wan21-1.3b --frames 241 "${WAN[@]}" --steps "${WAN_STEPS:-4}" --window 81 --overlap 8
run unet-f32-compile sd21 --unet-pass --frames 32 "${SIZE[@]}" --dtype float16 --attention dsta+flatten --compile
run wan-compile wan21-1.3b --unet-pass --frames 81 --width 832 --height 480 --dtype bfloat16 --attention dsta+flatten --compile
run long-32 sd21 --frames 32 "${SIZE[@]}" "${EDIT[@]}" --dtype float16 --window 32
run long-128 sd21 --frames 128 "${SIZE[@]}" "${EDIT[@]}" --dtype float16 --window 32
run sdxl-16 sdxl --frames 16 --width 1024 --height 1024 "${EDIT[@]}" --dtype float16
run unet-f32-bf16 sd21 --unet-pass --frames 32 "${SIZE[@]}" --dtype bfloat16 --attention dsta dsta+flatten
run unet-f32-backends sd21 --unet-pass --frames 32 "${SIZE[@]}" --dtype float16 --attention dsta+flatten --sdpa-backend flash efficient cudnn
run unet-f32-channels-last sd21 --unet-pass --frames 32 "${SIZE[@]}" --dtype float16 --attention dsta+flatten --channels-last

"$PY" summarize.py "$OUT" | tee "$OUT/summary.md"
