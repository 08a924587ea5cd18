#!/usr/bin/env bash
# Everything this repository checks on a GPU, in one call (for a lent H100/H200, see .library/device).
# Builds the extension against that machine's own torch, checks the cubin, runs the `cuda` tests, then the
# kernel benchmarks (bf16 and fp32) and the 2b training step, and copies logs and results to $OUT.
#
#   GPU_CHECK=tests scripts/gpu_check.sh     # build, cubin check, `pytest -m cuda`
#   GPU_CHECK=kernels scripts/gpu_check.sh   # build, then the kernel benchmarks (bf16 and fp32)
#   GPU_CHECK=train scripts/gpu_check.sh     # build, then the 2b training step at 93x704x1280
#
# Each part fits one 10-minute call. Logs and results go to a work folder; $OUT receives its summary and
# one archive of the rest (a call brings back at most 8 files).
#
# Wheels the machine lacks (it reaches no registry) go in .whl/ (git-ignored; carry it): at least `av`
# for the clip-writing fixtures. nvidia-dali's wheel (199 MB) exceeds what a call can carry (64 MiB), so
# the DALI tests skip there (and the summary says so). Status: written from the device documentation; not
# yet run on a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
WORK=/tmp/gpu_check
mkdir -p "$OUT" "$WORK"
PY=${PYTHON:-python3}
PART=${GPU_CHECK:-tests}
failed=0
log() { echo "gpu_check: $*" | tee -a "$WORK/summary.txt"; }
finish() { cp benchmarks/results/*.json "$WORK/" 2>/dev/null; cp "$WORK/summary.txt" "$OUT/"; tar -czf "$OUT/gpu_check_$PART.tgz" -C "$WORK" .; }
trap finish EXIT

if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | tee "$WORK/gpu.txt"
$PY -c "import nvidia.dali" 2>/dev/null || log "nvidia-dali is absent: the DALI test skips (not a failure)"

# Build against this machine's torch (never a build made elsewhere: the library refuses another torch), for
# this GPU's arch only (fast); 9.0 and 10.0 get the "a" cubins the shipped list has.
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
case "$ARCH" in 9.0|10.0) ARCH="${ARCH}a" ;; esac
log "building for TORCH_CUDA_ARCH_LIST=$ARCH"
if ! COSMOS_ENGINE_CUDA=ON TORCH_CUDA_ARCH_LIST=$ARCH $PY -m pip install -q --no-index --no-deps \
    --no-build-isolation -e . > "$WORK/build.log" 2>&1; then
  log "build FAILED (tail of build.log):"; tail -30 "$WORK/build.log"; exit 1
fi
$PY -m cosmos_engine.cli info | tee "$WORK/info.txt"
$PY scripts/check_cubin.py 2>&1 | tee -a "$WORK/summary.txt"

case "$PART" in
  tests)
    $PY -m pytest -m cuda -q -p no:cacheprovider > "$WORK/pytest_cuda.log" 2>&1
    status=$?
    log "cuda tests: $(tail -1 "$WORK/pytest_cuda.log")"
    grep -E "^(FAILED|ERROR)" "$WORK/pytest_cuda.log" | head -20
    exit $status ;;
  kernels)
    for op in adaln_layernorm gate_residual rmsnorm_rope; do
      for dtype in bfloat16 float32; do
        $PY "benchmarks/kernels/bench_$op.py" --device cuda --dtype "$dtype" --frames 1 4 24 \
          > "$WORK/bench_${op}_${dtype}.log" 2>&1 || { log "bench_$op $dtype FAILED"; failed=1; }
        log "$op $dtype: $(grep -A6 '^tokens' "$WORK/bench_${op}_${dtype}.log" | tr -s ' ' | tr '\n' ';')"
      done
    done ;;
  train)
    $PY benchmarks/e2e/bench_train.py --flavors 2b --frames 93 --height 704 --width 1280 \
      --activation-checkpointing selective > "$WORK/bench_train_2b.log" 2>&1 || { log "bench_train 2b FAILED"; failed=1; }
    log "2b step: $(tail -6 "$WORK/bench_train_2b.log" | tr -s ' ' | tr '\n' ';')" ;;
  *) log "GPU_CHECK must be tests, kernels or train, got $PART"; exit 2 ;;
esac
exit $failed
