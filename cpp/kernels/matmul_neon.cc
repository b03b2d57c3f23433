// AArch64 NEON float matmuls: matmul_simd.inc over vec_neon.h's 4-lane Vec.
#include "kernels/vec_neon.h"

namespace llmos {
namespace simd::neon {
namespace {
#include "kernels/matmul_simd.inc"
}  // namespace
}  // namespace simd::neon

void fill_kernels_neon(KernelTable* t) { simd::neon::fill_matmul(t); }

}  // namespace llmos
