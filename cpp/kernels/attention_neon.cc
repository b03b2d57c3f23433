// AArch64 NEON attention: attention_simd.inc over vec_neon.h's 4-lane Vec.
#include "kernels/vec_neon.h"

namespace llmos {
namespace simd::neon {
namespace {
#include "kernels/attention_simd.inc"
}  // namespace
}  // namespace simd::neon

void fill_attention_neon(KernelTable* t) { simd::neon::fill_attention(t); }

}  // namespace llmos
