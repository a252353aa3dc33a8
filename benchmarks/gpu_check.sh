#!/usr/bin/env bash
# One-shot GPU check, for a session with a GPU machine (run it from the repository root, in one device call):
#   1. build the CUDA kernels in place for the visible GPU     4. fused small-M forward vs combine + cuBLAS
#   2. the GPU tests (pytest -m gpu)                           5. majority-kernels bench --device cuda (cuda, triton)
#   3. compute-sanitizer memcheck on tests/test_cuda.py        6. the fused convolution prototype (bench conv-fused)
#                                                              7. the rest of the suite (pytest -m "not gpu")
# Each step is time-boxed so that the whole script ends within ~9 minutes; a failed step does not stop the next
# ones (except the build). Logs, the timing JSON and the benchmark results go to $OUT (the device tool's result
# folder) when set, else benchmarks/results/gpu-check/; the benchmark also writes benchmarks/results/ as usual.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
logs=${OUT:-benchmarks/results/gpu-check}
mkdir -p "$logs"
deadline=$((SECONDS + ${GPU_CHECK_SECONDS:-540}))
failed=()

# step NAME SECONDS COMMAND...: runs COMMAND for at most SECONDS (less if the deadline is nearer), into NAME.log.
step() {
  local name=$1 limit=$2 start=$SECONDS status=ok
  shift 2
  limit=$((limit < deadline - SECONDS ? limit : deadline - SECONDS))
  echo "== $name (at most ${limit} s)"
  if ((limit < 10)); then
    echo "   skipped: out of time"; failed+=("$name"); return 1
  fi
  timeout "$limit" "$@" > "$logs/$name.log" 2>&1 || { status="FAILED (exit $?)"; failed+=("$name"); }
  echo "   $status in $((SECONDS - start)) s"
  tail -n 4 "$logs/$name.log" | sed 's/^/   | /'
  [[ $status == ok ]]
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$logs/gpu.txt"
arch=$("$python" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
"$python" -c 'import sys, torch, triton
print("Python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__)' \
  | tee -a "$logs/gpu.txt"

step build 240 env TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" FORCE_CUDA=1 \
  "$python" -m pip install --no-build-isolation --no-deps -e . || exit 1

step gpu-tests 150 "$python" -m pytest -q -p no:cacheprovider -m gpu

# Without torch's caching allocator every tensor is its own allocation, so memcheck sees any access past a
# tensor's end. (Graph capture needs the caching allocator, and compile / gradcheck are slow here: left out.)
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
step memcheck 150 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${sanitizer:-compute-sanitizer}" --tool memcheck \
  --error-exitcode 1 "$python" -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda.py \
  -k "not graph and not compiled and not gradcheck"

# The fused forward against combine + cuBLAS, per M (the data for cuda_ops.FUSED_MAX_ROWS).
step linear-paths 60 "$python" - "$logs/cuda-linear-paths.json" <<'EOF'
import json, os, sys
import torch
import majority_kernels as mk
from torch.utils.benchmark import Timer

layer = mk.MKLinear(4096, 4096, expansion=4, device="cuda")
rows = []
for m in (1, 2, 4, 8, 16, 32, 64):
    x = torch.randn(m, 4096, device="cuda")
    for path in ("fused", "combine"):
        os.environ["MK_LINEAR_PATH"] = path
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16), mk.use_backend("cuda"):
            seconds = Timer("layer(x)", globals={"layer": layer, "x": x}).blocked_autorange(min_run_time=0.3).median
        rows.append({"M": m, "N": 4096, "K": 4096, "expansion": 4, "dtype": "bf16-autocast", "path": path,
                     "forward_us": seconds * 1e6})
        print(rows[-1])
json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, open(sys.argv[1], "w"), indent=1)
EOF

step bench 240 "$python" -m majority_kernels bench --device cuda --backend cuda,triton --shapes 8192x4096x4096 \
  --expansion 4 --only linear,kernels,crossover

# The fused implicit-GEMM convolution forward against combine + cuDNN (issue 3, item 5), in its own time box so that
# a slow autotune cannot cost the linear results: from many output pixels per batch (where redrawing P per pixel
# tile should lose) to few.
step bench-conv-fused 90 "$python" -m majority_kernels bench --device cuda --backend cuda,triton \
  --conv-shapes 64x128x128x56x56x3,8x256x256x14x14x3,1x512x512x7x7x3 --expansion 4 --only conv-fused \
  --output benchmarks/results/cuda-conv-fused
cp benchmarks/results/cuda-* "$logs/" 2>/dev/null

# On 6 workers where pytest-xdist is installed (the GPU image has it): building the Triton kernels for every test's
# shapes is CPU work. One file per worker keeps the two-process distributed tests together.
parallel=()
"$python" -c 'import xdist' 2>/dev/null && parallel=(-n 6 --dist loadfile)
step rest-of-suite 300 "$python" -m pytest -q -p no:cacheprovider -m "not gpu" ${parallel[@]+"${parallel[@]}"}

echo "== failed steps: ${failed[*]:-none}"
((${#failed[@]} == 0))
