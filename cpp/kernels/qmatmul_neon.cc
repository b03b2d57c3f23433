// The baseline (armv8-a) NEON quantized row kernel: qmatmul_neon.inc with int8 products
// widened by vmull_s8 and summed in pairs by vpadalq_s16. No product overflows int16:
// |(u - 128) * x| <= 128 * 127, and the 4- / 6-bit codes are smaller.
#include <arm_neon.h>

#include "kernels/kernels.h"

namespace llmos {
namespace simd::neon {
namespace {

inline int32x4_t dot16(int8x16_t w, int8x16_t x, int32x4_t acc) {
  acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w), vget_low_s8(x)));
  return vpadalq_s16(acc, vmull_high_s8(w, x));
}

#include "kernels/qmatmul_neon.inc"

}  // namespace
}  // namespace simd::neon

void fill_qkernels_neon(KernelTable* t) {
  t->qmatmul = simd::neon::qmatmul_rows;
  t->qmatmul_name = "neon (vmull_s8 + vpadalq_s16)";
}

}  // namespace llmos
