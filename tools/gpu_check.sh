#!/usr/bin/env bash
# The GPU checks of the CUDA device, in one run on a machine with an NVIDIA GPU (issue 16):
#   1. the core built with CUDA for this GPU only (-DLLMOS_CUDA=ON -DLLMOS_CUDA_ARCHS=native: one
#      architecture, so it compiles fast), into build/gpu, staged with the Python package in
#      build/gpu/stage (the worktree's own python/llmos/_core*.so is left alone);
#   2. tests/test_cuda_kernels.py with LLMOS_REQUIRE_GPU=1 (a skip becomes a failure);
#   3. tests/test_cuda_model.py: the forward pass on the GPU against the CPU (needs torch and
#      transformers there, as the suite does);
#   4. tools/bench_cuda.py (the GEMV table) and tools/bench_cuda_decode.py (batch-1 decode of a
#      Llama-3.2-3B-shaped model against the HBM limit; LLMOS_GPU_DECODE_ARGS passes options),
#      whose table is printed last.
# Meant to finish in well under 5 minutes, so that a second run fits in a lent GPU's time.
#
# Where the GPU machine cannot build (no nvcc, cmake or pybind11 there), build on any machine
# with the CUDA toolkit (no GPU needed), for the GPU's architecture (sm_90: H100 / H200) and the
# GPU machine's Python, and keep only the module (the build folder is ~100 MB of objects):
#     cmake -S . -B build/cuda90 -G Ninja -DLLMOS_CUDA=ON -DLLMOS_CUDA_ARCHS=90-real \
#           -Dpybind11_DIR=$(python3 -m pybind11 --cmakedir) && cmake --build build/cuda90 -j2 &&
#     mkdir -p build/gpu-prebuilt && cp build/cuda90/_core*.so build/gpu-prebuilt/
# bring that folder along (the device tool's `carry: ["build/gpu-prebuilt"]`, a few MB) and run
#     LLMOS_PREBUILT=build/gpu-prebuilt tools/gpu_check.sh
# (also picked on its own when the machine cannot build and build/gpu-prebuilt/_core*.so exists).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
build=build/gpu
stage=$build/stage

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv || true

nvcc_path=$(command -v nvcc || true)
[ -z "$nvcc_path" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc_path=/usr/local/cuda/bin/nvcc
pybind_dir=$(python3 -m pybind11 --cmakedir 2>/dev/null || true)
prebuilt=${LLMOS_PREBUILT:-}
if [ -z "$prebuilt" ] && { [ -z "$nvcc_path" ] || ! command -v cmake >/dev/null || [ -z "$pybind_dir" ]; }; then
  if ls build/gpu-prebuilt/_core*.so >/dev/null 2>&1; then
    prebuilt=build/gpu-prebuilt
    echo "=== this machine cannot build (nvcc: ${nvcc_path:-none}, cmake: $(command -v cmake || echo none)," \
         "pybind11: ${pybind_dir:-none}): using $prebuilt"
  else
    echo "gpu_check: cannot build here (nvcc: ${nvcc_path:-none}, cmake: $(command -v cmake || echo none)," \
         "pybind11: ${pybind_dir:-none}) and no prebuilt core (LLMOS_PREBUILT or build/gpu-prebuilt); see the" \
         "top of this script" >&2
    exit 2
  fi
fi

if [ -n "$prebuilt" ]; then
  so=$(ls "$prebuilt"/_core*.so | head -1)
else
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  # This GPU's architecture from the driver (CMake's "native" needs CMake 3.24 and asks the GPU itself).
  arch=native
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)
  [ -n "$cc" ] && arch="$cc-real"
  echo "=== building the core with CUDA for this GPU ($arch; nvcc: $nvcc_path)"
  cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DLLMOS_CUDA=ON -DLLMOS_CUDA_ARCHS="$arch" \
        -DCMAKE_CUDA_COMPILER="$nvcc_path" -Dpybind11_DIR="$pybind_dir" >/dev/null
  cmake --build "$build" -j"$(nproc)" >/dev/null
  so=$(ls "$build"/_core*.so | head -1)
  echo "=== built in $((SECONDS - started)) s"
fi

# Python must be the one the core was built for.
suffix=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
case "$so" in
  *"$suffix") ;;
  *) echo "gpu_check: $so was built for another Python than $(python3 --version) (wants *$suffix)" >&2; exit 2 ;;
esac
rm -rf "$stage" && mkdir -p "$stage"
cp -r python/llmos "$stage/llmos"
rm -f "$stage"/llmos/_core*.so
cp "$so" "$stage/llmos/"
export PYTHONPATH="$PWD/$stage"
where=$(python3 -c 'import llmos._core as c; print(c.__file__)')
case "$where" in
  "$PWD/$stage"/*) ;;
  *) echo "gpu_check: python3 imports llmos._core from $where, not the staged build (an editable install" \
          "of llmos takes precedence; uninstall it or run in a clean environment)" >&2; exit 2 ;;
esac
python3 -c 'from llmos import _core
assert _core.cuda_built(), "the staged core has no CUDA"
n = _core.cuda_device_count()
assert n > 0, "no GPU: " + _core.cuda_unavailable_reason(0)
print("=== GPU 0:", _core.cuda_device_info(0))'

# Every step runs even when an earlier one fails (a lent GPU's minutes are few); the exit status
# says whether all passed.
failed=()
echo "=== tests/test_cuda_kernels.py"
# --noconftest: the suite's conftest imports the test extra (torch, onnx), which a GPU machine
# lent for this run may not have; these tests need only numpy and the core.
LLMOS_REQUIRE_GPU=1 python3 -m pytest -q -p no:cacheprovider --noconftest tests/test_cuda_kernels.py ||
  failed+=(test_cuda_kernels)

echo "=== tests/test_cuda_model.py (after $((SECONDS - started)) s)"
# The forward pass against the CPU on checkpoints built by transformers: needs the test extra.
if python3 -c "import torch, transformers, onnx, onnxruntime" 2>/dev/null; then
  LLMOS_REQUIRE_GPU=1 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_model.py || failed+=(test_cuda_model)
else
  echo "gpu_check: tests/test_cuda_model.py needs torch, transformers, onnx and onnxruntime here" >&2
  failed+=(test_cuda_model)
fi

echo "=== tools/bench_cuda.py (after $((SECONDS - started)) s)"
python3 tools/bench_cuda.py --json "$build/bench_cuda.json" || failed+=(bench_cuda)

echo "=== tools/bench_cuda_decode.py (after $((SECONDS - started)) s; its table is the last thing printed)"
python3 tools/bench_cuda_decode.py ${LLMOS_GPU_DECODE_ARGS:-} --json "$build/bench_cuda_decode.json" ||
  failed+=(bench_cuda_decode)

echo "=== gpu_check: $((SECONDS - started)) s; ${#failed[@]} step(s) failed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
