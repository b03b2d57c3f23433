#!/bin/sh
# Builds tests/cpp/kernel_check (the core's kernels without Python) with CXX (default g++)
# for the machine CXX targets, each ISA file with the flags CMakeLists.txt gives it.
# Usage: build_kernel_check.sh OUT_BINARY [OBJECT_DIR]; the objects are kept in OBJECT_DIR when
# given (.ci/arm64 reads their symbols), else built in a temporary directory and removed.
set -e
cd "$(dirname "$0")/../.."
out=$1
cxx=${CXX:-g++}
objs=${2:-$(mktemp -d)}
mkdir -p "$objs"
arch=$($cxx -dumpmachine)
# The same flags per file suffix as CMakeLists.txt: change both together.
avx2="-mavx2 -mfma -mf16c"
avx512="-mavx512f -mavx512bw -mavx512vl -mavx512dq $avx2"
for src in cpp/core/*.cc cpp/kernels/*.cc cpp/quant/*.cc tests/cpp/kernel_check.cc; do
  flags=
  case "$arch:$src" in
    x86_64*:*_neon*.cc | aarch64*:*_avx2.cc | aarch64*:*_avx512*.cc | aarch64*:*_amx.cc) continue ;;
    x86_64*:*_amx.cc) flags="-mamx-tile -mamx-int8 -mamx-bf16 -mavx512bf16 -mavx512vnni $avx512" ;;
    x86_64*:*_avx512bf16.cc) flags="-mavx512bf16 -mavx512vnni $avx512" ;;
    x86_64*:*_avx512vnni.cc) flags="-mavx512vnni $avx512" ;;
    x86_64*:*_avx512.cc) flags="$avx512" ;;
    x86_64*:*_avx2.cc) flags="$avx2" ;;
    aarch64*:*_neon_i8mm.cc) flags="-march=armv8.2-a+dotprod+i8mm" ;;
    aarch64*:*_neon_dotprod.cc) flags="-march=armv8.2-a+dotprod" ;;
  esac
  $cxx -std=c++17 -O2 -fno-math-errno -Icpp $flags -c "$src" -o "$objs/$(echo "$src" | tr / _).o" &
done
wait
$cxx -o "$out" "$objs"/*.o -pthread ${LDFLAGS:-}
[ -n "${2:-}" ] || rm -rf "$objs"
