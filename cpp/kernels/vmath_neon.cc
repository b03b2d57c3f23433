// AArch64 NEON activations and softmax: vmath_simd.inc over vec_neon.h's 4-lane Vec.
#include "kernels/vec_neon.h"

namespace llmos {
namespace simd::neon {
namespace {
#include "kernels/vmath_simd.inc"
}  // namespace
}  // namespace simd::neon

void fill_vmath_neon(KernelTable* t) { simd::neon::fill_vmath(t); }

}  // namespace llmos
