// AVX-512 activations and softmax: vmath_simd.inc over vec_avx512.h's 16-lane Vec.
#include "kernels/vec_avx512.h"

namespace llmos {
namespace simd::avx512 {
namespace {
#include "kernels/vmath_simd.inc"
}  // namespace
}  // namespace simd::avx512

void fill_vmath_avx512(KernelTable* t) { simd::avx512::fill_vmath(t); }

}  // namespace llmos
