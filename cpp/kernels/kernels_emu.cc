// The shared SIMD algorithms (matmul_simd.inc, attention_simd.inc, vmath_simd.inc) over
// vec_emu.h's portable 16-lane Vec, compiled for the baseline: every path of their AVX-512
// instantiation runs, and is tested against the scalar reference, on any CPU. Test-only
// (kernels_emu16(), the bindings' "emu16"); never chosen for inference.
#include "kernels/vec_emu.h"

namespace llmos {
namespace simd::emu16 {
namespace {
namespace matmul {
#include "kernels/matmul_simd.inc"
}  // namespace matmul
namespace attention {
#include "kernels/attention_simd.inc"
}  // namespace attention
namespace vmath {
#include "kernels/vmath_simd.inc"
}  // namespace vmath
}  // namespace
}  // namespace simd::emu16

const KernelTable& kernels_emu16() {
  static const KernelTable table = [] {
    KernelTable t{};
    fill_kernels_scalar(&t);
    simd::emu16::matmul::fill_matmul(&t);
    simd::emu16::attention::fill_attention(&t);
    simd::emu16::vmath::fill_vmath(&t);
    return t;
  }();
  return table;
}

}  // namespace llmos
