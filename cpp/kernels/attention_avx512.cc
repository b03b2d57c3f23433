// AVX-512 attention: attention_simd.inc over vec_avx512.h's 16-lane Vec.
#include "kernels/vec_avx512.h"

namespace llmos {
namespace simd::avx512 {
namespace {
#include "kernels/attention_simd.inc"
}  // namespace
}  // namespace simd::avx512

void fill_attention_avx512(KernelTable* t) { simd::avx512::fill_attention(t); }

}  // namespace llmos
