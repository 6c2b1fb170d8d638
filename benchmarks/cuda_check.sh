#!/usr/bin/env bash
# One-shot check of the CUDA backend on a machine with an NVIDIA GPU (issue 12).
# Run from the repository root:   bash benchmarks/cuda_check.sh [OUT_DIR]
# It needs numba, numba-cuda, pytest (and PyTorch with CUDA for the comparisons) and
# minidl installed (pip install --no-deps --no-build-isolation -e .);
# it installs nothing. Steps, each with its own time limit so one hang cannot eat the
# rest, all output under OUT_DIR (default: $OUT or ./cuda_check):
#   1. minidl info                        (is CUDA usable, and why not)
#   2. tests/test_cuda.py on the hardware (NUMBA_ENABLE_CUDASIM=0; kernels vs reference,
#                                          MLP/CNN steps vs the CPU, checkpoints, allocator)
#   3. minidl bench --device cuda         (kernels and training steps vs PyTorch CUDA)
#   4. minidl figure1 --device cuda --quick (3,000 steps of both MLPs, if MNIST is there)
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-./cuda_check}}"
mkdir -p "$OUTDIR"
export NUMBA_ENABLE_CUDASIM=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$OUTDIR/summary.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  echo "    rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUTDIR/summary.txt"
  tail -n 25 "$OUTDIR/$name.log"
  [ $rc -ne 0 ] && status=1
  return 0
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUTDIR/gpu.txt" 2>&1
step info 60 python -m minidl info
step tests 240 python -m pytest -q -p no:cacheprovider tests/test_cuda.py -m "not slow" -x
step bench 150 python -m minidl bench --device cuda --json "$OUTDIR/cuda_bench.json" \
     --markdown "$OUTDIR/cuda_bench.md"
step figure1 150 python -m minidl figure1 --device cuda --quick --no-progress \
     --out "$OUTDIR/figure1" --overwrite
echo "done: status $status; logs in $OUTDIR" | tee -a "$OUTDIR/summary.txt"
exit $status
