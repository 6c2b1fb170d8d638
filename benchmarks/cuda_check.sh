#!/usr/bin/env bash
# One-shot check of the CUDA backend on a machine with an NVIDIA GPU.
# Run from the repository root:   bash benchmarks/cuda_check.sh [OUT_DIR]
# It needs numba, numba-cuda, pytest (pytest-xdist and pytest-timeout if present; PyTorch
# with CUDA for the comparisons) and minidl installed
# (pip install --no-deps --no-build-isolation -e .); it installs nothing.
# Steps, each with its own time limit so one hang cannot eat the rest, all output under
# OUT_DIR (default: $OUT or ./cuda_check):
#   1. versions, nvidia-smi, minidl info     (is CUDA usable, and why not)
#   2. tests/test_cuda.py on the hardware    (NUMBA_ENABLE_CUDASIM=0, the slow tests too:
#                                             kernels vs reference, MLP/CNN/Inception steps
#                                             vs the CPU, checkpoints, allocator)
#   3. minidl bench --device cuda            (kernels and training steps vs PyTorch CUDA)
#   4. minidl figure1 --device cuda --quick  (3,000 steps of both MLPs)
#   5. minidl ablation --device cuda         (a short BN-Inception-lite run: steps/s)
# Data for 4 and 5: $MINIDL_CHECK_DATA, a folder with Fashion-MNIST's IDX files (else
# minidl's own lookup: MNIST if it is there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-./cuda_check}}"
RUNS="${MINIDL_CHECK_RUNS:-$OUTDIR/runs}"  # figure1's and the ablation's own outputs
mkdir -p "$OUTDIR" "$RUNS"
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
PY="${PYTHON:-python3}"  # the interpreter that has numba-cuda (and PyTorch)
step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$OUTDIR/summary.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  echo "    rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUTDIR/summary.txt"
  tail -n 12 "$OUTDIR/$name.log"
  [ $rc -ne 0 ] && status=1
  return 0
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  lscpu | grep -E "^Model name|^CPU\(s\)"
  "$PY" -c "import sys, numpy, numba, numba_cuda; print(sys.version.split()[0], 'numpy',
numpy.__version__, 'numba', numba.__version__, 'numba-cuda', numba_cuda.__version__)"
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
} 2>&1 | tee -a "$OUTDIR/summary.txt"
step info 40 "$PY" -m minidl info
# Compiling the kernels dominates the tests on a GPU: spread them over up to 8 workers.
xdist=()
"$PY" -c "import xdist" 2>/dev/null && xdist=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))")
tmo=()
"$PY" -c "import pytest_timeout" 2>/dev/null && tmo=(--timeout 120)
step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py "${xdist[@]}" \
     "${tmo[@]}" -rfE
step bench 90 "$PY" -m minidl bench --device cuda --json "$RUNS/cuda_bench.json" \
     --markdown "$RUNS/cuda_bench.md"
data=()
[ -n "${MINIDL_CHECK_DATA:-}" ] && data=(--dataset fashion-mnist --data-root "$MINIDL_CHECK_DATA")
step figure1 75 "$PY" -m minidl figure1 --device cuda --quick --no-progress \
     "${data[@]}" --out "$RUNS/figure1" --overwrite
step ablation 45 "$PY" -m minidl ablation --device cuda --variants bn-baseline --seeds 1 \
     --steps 200 --base-lr 0.02 --eval-every 100 --eval-examples 500 --final-examples 2000 \
     --no-progress "${data[@]}" --out "$RUNS/ablation" --overwrite
cp "$RUNS/figure1/summary.txt" "$OUTDIR/figure1_summary.txt" 2>/dev/null
cp "$RUNS/ablation/ablation.md" "$OUTDIR/ablation.md" 2>/dev/null
echo "done: status $status; logs in $OUTDIR" | tee -a "$OUTDIR/summary.txt"
exit $status
