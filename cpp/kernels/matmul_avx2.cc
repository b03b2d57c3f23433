// AVX2 + FMA + F16C float matmuls: matmul_simd.inc over vec_avx2.h's 8-lane Vec.
#include "kernels/vec_avx2.h"

namespace llmos {
namespace simd::avx2 {
namespace {
#include "kernels/matmul_simd.inc"
}  // namespace
}  // namespace simd::avx2

void fill_kernels_avx2(KernelTable* t) { simd::avx2::fill_matmul(t); }

}  // namespace llmos
