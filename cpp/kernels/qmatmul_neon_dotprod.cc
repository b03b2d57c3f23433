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

}  // namespace
}  // namespace simd::neon_dotprod

void fill_qkernels_neon_dotprod(KernelTable* t) {
  t->qmatmul = simd::neon_dotprod::qmatmul_rows;
  t->qmatmul_name = "neon_dotprod (sdot)";
}

}  // namespace llmos
