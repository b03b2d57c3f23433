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

void qmatmul(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y, int64_t ldy) {
  switch (w.type) {
    case QuantType::Q8: qmatmul_rows4<QuantType::Q8>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q4: qmatmul_rows4<QuantType::Q4>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q4Asym: qmatmul_rows4<QuantType::Q4Asym>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q6: qmatmul_rows4<QuantType::Q6>(x, sdg, w, row0, row1, y, ldy); break;
    default: break;
  }
}

}  // namespace
}  // namespace simd::neon

void fill_qkernels_neon(KernelTable* t) {
  t->qmatmul = simd::neon::qmatmul;
  t->qmatmul_name = "neon (vmull_s8 + vpadalq_s16)";
}

}  // namespace llmos
