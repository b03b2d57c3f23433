// AVX-512 float matmuls: matmul_simd.inc over vec_avx512.h's 16-lane Vec.
#include "kernels/vec_avx512.h"

namespace llmos {
namespace simd::avx512 {
namespace {
#include "kernels/matmul_simd.inc"
}  // namespace
}  // namespace simd::avx512

void fill_kernels_avx512(KernelTable* t) { simd::avx512::fill_matmul(t); }

}  // namespace llmos
