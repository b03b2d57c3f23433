// The quantized row kernel for armv8.2-a dotprod (compiled with +dotprod; only runs where
// AT_HWCAP has ASIMDDP): qmatmul_neon.inc with sdot (vdotq_s32), four int8 products per lane
// per instruction.
#include <arm_neon.h>

#include "kernels/kernels.h"

namespace llmos {
namespace simd::neon_dotprod {
namespace {

inline int32x4_t dot16(int8x16_t w, int8x16_t x, int32x4_t acc) { return vdotq_s32(acc, w, x); }

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
}  // namespace simd::neon_dotprod

void fill_qkernels_neon_dotprod(KernelTable* t) {
  t->qmatmul = simd::neon_dotprod::qmatmul;
  t->qmatmul_name = "neon_dotprod (sdot)";
}

}  // namespace llmos
