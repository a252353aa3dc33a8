#!/usr/bin/env bash
# The GPU check, in two parts sized to fit one short stay on a GPU machine each (docs/gpu.md). From the repository
# root, with the CUDA build of torch and Triton installed:
#
#   bash benchmarks/gpu_check.sh quick    the headline figures: at most ~4 min on an H200 with 16 cores, build included
#   bash benchmarks/gpu_check.sh full     the rest: at most ~5 min (reuses quick's build, else builds first)
#
# Time budget per step, in seconds. ESTIMATES, not measurements: every run records what each step took in
# <gpu>-<part>-steps.json, and the budgets should follow those records.
#   quick  build         90   the CUDA kernels for this GPU's architecture only, MAX_JOBS = every core
#          kernel-tests  50   pytest -m gpu on tests/test_conformance.py, test_cuda.py and test_triton.py: combine,
#                             scatter, mixing weights and embeddings of both GPU backends against the float64
#                             reference, identical uniforms across backends, the fused linear paths (pytest-xdist
#                             workers where it is installed; compile, gradcheck, CUDA graph and the conformance
#                             suite's linear and conv tests are left to full's suite)
#          bench         65   majority-kernels bench, M = 8192, N = K = 4096, e = 4, bf16 autocast, float32 master
#                             weights: dense, naive eager, naive compiled, the cuda and triton backends (and the
#                             triton paths forced); copy bandwidth, combine / scatter as % of it, saved bytes, peak
#          tune          30   majority-kernels tune --quick (a first table for this GPU, not one to ship)
#          summary        2   one screen of the key ratios, from the benchmark's and the tune's JSON
#   full   memcheck      60   compute-sanitizer memcheck on the CUDA backend's tests and conformance pair (where
#                             compute-sanitizer is installed)
#          crossover     40   the benchmark's M sweep of the Triton paths (where each fused path stops paying)
#          conv-fused    40   the fused implicit-GEMM convolution against combine + cuDNN on three shapes
#          tune          60   the full majority-kernels tune (the table to ship, into majority_kernels/tuning_tables/)
#          suite        rest  the rest of the test suite (all that quick's kernel-tests leave out; ~100 s)
# Each step is time-boxed and the part as a whole too (GPU_CHECK_SECONDS: 240 for quick, 300 for full); a failed step
# does not stop the later ones, except a failed build. Logs and JSON go to GPU_CHECK_OUT (default
# benchmarks/results/gpu-check/), every file named after the GPU: <gpu>-<part>-<step>.log, <gpu>-bench.json / .md,
# <gpu>-mk<version>.json (the tuning table), <gpu>-<part>-steps.json, <gpu>-quick-summary.txt.
# Without a CUDA GPU either part stops, before building anything, with one line on stderr and exit status 1.
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:-}
case $part in
  quick) budget=240 ;;
  full) budget=300 ;;
  *) echo "usage: bash benchmarks/gpu_check.sh quick|full" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
out=${GPU_CHECK_OUT:-benchmarks/results/gpu-check}
deadline=$((SECONDS + ${GPU_CHECK_SECONDS:-$budget}))

# The GPU's slug on stdout; without a GPU, the one line on stderr.
gpu=$("$python" - <<'EOF'
import re
import sys
try:
    import torch
except ImportError as error:
    sys.exit(f"gpu_check: torch cannot be imported ({error})")
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}); "
             "this check needs one")
print(re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-"))
EOF
) || exit 1
mkdir -p "$out"
prefix="$out/$gpu-$part"
steps=()
failed=()

# step NAME SECONDS COMMAND...: runs COMMAND for at most SECONDS (less if the deadline is nearer) into
# <prefix>-NAME.log, and records its status and time.
step() {
  local name=$1 limit=$2 start=$SECONDS status=ok
  shift 2
  limit=$((limit < deadline - SECONDS ? limit : deadline - SECONDS))
  echo "== $name (at most ${limit} s)"
  if ((limit < 10)); then
    status=skipped
    echo "   skipped: out of time"
  else
    timeout "$limit" "$@" > "$prefix-$name.log" 2>&1 || status="failed (exit $?)"
    echo "   $status in $((SECONDS - start)) s"
    tail -n 3 "$prefix-$name.log" | sed 's/^/   | /'
  fi
  steps+=("{\"step\": \"$name\", \"status\": \"$status\", \"seconds\": $((SECONDS - start)), \"limit\": $limit}")
  [[ $status == ok ]] || { failed+=("$name"); return 1; }
}

record_steps() {
  local IFS=,
  echo "[${steps[*]}]" > "$prefix-steps.json"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  "$python" -c 'import sys, torch, triton
print("python", sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda, "triton",
      triton.__version__)'
} | tee "$prefix-versions.txt"

has_cuda_kernels() {
  "$python" -c 'from majority_kernels import ops; raise SystemExit(not ops.HAS_CUDA_KERNELS)' 2>/dev/null
}
if [[ $part == quick ]] || ! has_cuda_kernels; then
  "$python" -c 'from torch.utils import cpp_extension as c; raise SystemExit(not c.is_ninja_available())' ||
    echo "   (no ninja: the build runs one file at a time, MAX_JOBS unused)"
  arch=$("$python" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  step build 150 env TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" FORCE_CUDA=1 \
    "$python" -m pip install --no-build-isolation --no-deps -e . || { record_steps; exit 1; }
  has_cuda_kernels || { echo "gpu_check: the build has no CUDA kernels (see $prefix-build.log)" >&2; exit 1; }
fi

# pytest-xdist where installed: building the Triton kernels for every test's shapes is CPU work.
workers=()
"$python" -c 'import xdist' 2>/dev/null && workers=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))")
pytest=("$python" -m pytest -q -p no:cacheprovider)
# quick's kernel tests: the gpu tests of these files but the slow-starting ones, which full's suite runs: compile,
# gradcheck and CUDA-graph tests, and the conformance suite's layer tests (each Triton GEMM autotunes on first use).
export KERNEL_FILES="tests/test_conformance.py tests/test_cuda.py tests/test_triton.py"
export SLOW_GPU="(compiled or gradcheck or graph or test_linear or test_conv)"

if [[ $part == quick ]]; then
  step kernel-tests 70 "${pytest[@]}" ${workers[@]+"${workers[@]}"} -m gpu $KERNEL_FILES -k "not $SLOW_GPU"
  step bench 100 "$python" -m majority_kernels bench --device cuda --backend cuda,triton --shapes 8192x4096x4096 \
    --expansion 4 --dtype bf16 --only linear,kernels --repeats 10 --warmup 2 --output "$out/$gpu-bench"
  step tune 50 "$python" -m majority_kernels tune --device cuda --quick --output "$out"
  record_steps
  echo "== summary (failed steps: ${failed[*]:-none}; logs and results in $out)"
  "$python" benchmarks/gpu_summary.py "$out" "$gpu" | tee "$prefix-summary.txt"
else
  # Without torch's caching allocator every tensor is its own allocation, so memcheck sees any access past a
  # tensor's end. (Graph capture needs the caching allocator, and compile / gradcheck are slow here: left out.)
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
  if [[ -n $sanitizer ]]; then
    step memcheck 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 \
      "${pytest[@]}" -m gpu tests/test_cuda.py tests/test_conformance.py -k "not $SLOW_GPU and not triton"
  else
    echo "== memcheck: skipped, no compute-sanitizer installed"
  fi
  step crossover 40 "$python" -m majority_kernels bench --device cuda --backend triton --shapes 8192x4096x4096 \
    --expansion 4 --dtype bf16 --only crossover --repeats 10 --warmup 2 --output "$out/$gpu-crossover"
  # From many output pixels per batch (where redrawing P per pixel tile should lose) to few.
  step conv-fused 40 "$python" -m majority_kernels bench --device cuda --backend cuda,triton \
    --conv-shapes 64x128x128x56x56x3,8x256x256x14x14x3,1x512x512x7x7x3 --expansion 4 --only conv-fused \
    --repeats 10 --warmup 2 --output "$out/$gpu-conv-fused"
  step tune 70 "$python" -m majority_kernels tune --device cuda --output "$out"
  # The rest of the suite, all that quick's kernel tests leave out, in the time left; one file per worker keeps
  # the two-process distributed tests together.
  step suite $((deadline - SECONDS)) bash -c 'status=0
    "$@" $(printf -- "--ignore=%s " $KERNEL_FILES) || status=1
    "$@" -m "not gpu" $KERNEL_FILES || status=1
    "$@" -m gpu -k "$SLOW_GPU" $KERNEL_FILES || status=1
    exit $status' suite "${pytest[@]}" ${workers[@]+"${workers[@]}" --dist loadfile}
  record_steps
  echo "== full: failed steps: ${failed[*]:-none}; logs and results in $out"
fi
((${#failed[@]} == 0))
