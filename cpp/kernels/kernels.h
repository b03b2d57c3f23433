// The kernel table: the few primitives whose speed decides the forward pass, one
// implementation per ISA. The scalar versions in kernels_scalar.cc are the reference
// every fast path is tested against (tests/test_kernels.py).
//
// The *_avx2.cc / *_avx512.cc / *_amx.cc (and *_neon*.cc) files are compiled with wider -m flags, so nothing
// they define may share a name with baseline code: the linker keeps one copy of an inline
// function or template instance, and a baseline caller could get the wide one. Their code
// lives in llmos::simd::<isa> with internal linkage, the only external name each defines
// is its fill_* entry point (tests/test_isa_symbols.py checks the objects), and this header
// only declares plain functions and structs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "quant/qformat.h"

namespace llmos {

// y[t * ldy + (r - row0)] = dot(x[t * k .. +k], W[r * k .. +k]) for t < n, row0 <= r < row1.
// W is row-major [rows, k] with element type given by the function slot; x is float32.
using MatmulRowsFn = void (*)(const float* x, int64_t n, int64_t k, const void* w, int64_t row0,
                              int64_t row1, float* y, int64_t ldy);

// The same for a block-quantized W and int8 activations (quant/qformat.h): y[t, r - row0] =
// sum over groups g of d_w * sum_blocks(d_x * dot(u, q_x)) + m_w * sum_blocks(d_x * sum(q_x)).
// sdg: [x.n, cols / group] = per token and weight group, the sum of the blocks' d * sum(q).
using QMatmulRowsFn = void (*)(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1,
                               float* y, int64_t ldy);

// Multi-token products on AMX tiles (Isa::Amx, null elsewhere; qmatmul_amx.cc). The float
// activations are first packed as bfloat16 [n rounded up to 16][k] (the A tiles; tokens
// past n are zero). amx_acts_bytes(n, k) is the size of the packed activations.
int64_t amx_acts_bytes(int64_t n, int64_t k);
// Packs token tiles [tile0, tile1) of x [n, k] (k a multiple of 32) into out (64-byte aligned).
using PackTileActsFn = void (*)(const float* x, int64_t n, int64_t k, int64_t tile0, int64_t tile1, uint8_t* out);
// y[t, r - row0] = x[t] . W[r] for all n tokens of packed activations; row1 - row0 a
// multiple of 16. W is dequantized to bfloat16 on the fly (see qmatmul_amx.cc for why).
using QMatmulTilesFn = void (*)(const uint8_t* acts, int64_t n, const QView& w, int64_t row0, int64_t row1,
                                float* y, int64_t ldy);
// The same for bfloat16 W [rows, k] (raw bits): the weights are used as they are.
using MatmulTilesBf16Fn = void (*)(const uint8_t* acts, int64_t n, int64_t k, const uint16_t* w, int64_t row0,
                                   int64_t row1, float* y, int64_t ldy);

// Causal (optionally sliding-window) attention of a block of up to 16 consecutive queries
// of one head against its keys and values: out = softmax(scale * q K^T (softcapped), masked) V.
// Key j sits at position start + j, query i at p0 + i; query i sees keys at positions in
// [p0 + i - window + 1 (when window > 0), p0 + i].
struct AttnBlock {
  const float* q;  // [nq, D], row stride ldq
  int64_t ldq;
  const float* k;  // [len, D] keys, row stride D
  const float* v;  // [len, D] values, row stride D
  int64_t nq, len, D, start, p0, window;
  float scale, softcap;  // softcap > 0: s = softcap * tanh(s / softcap)
  // An attention sink: a logit in every query's softmax denominator that adds nothing to the
  // output; -inf = none.
  float sink = -__builtin_huge_valf();
  float* out;            // [nq, D], row stride ldo
  int64_t ldo;
};
// Floats of scratch an attend call needs (either implementation).
int64_t attend_scratch_floats(int64_t len, int64_t D);
// The portable attention: Q K^T and P V through the table's matmul_f32, V transposed.
void attend_generic(const struct KernelTable& kt, const AttnBlock& a, float* scratch);

// A 64-byte aligned per-thread scratch block of at least `bytes`, kept between calls (so a
// kernel's panel is not mapped and faulted in again on every call), valid until the next
// call on the same thread. Kernels take it once per call and do not nest.
uint8_t* thread_scratch(size_t bytes);

// Activation codes' range for the formats in KernelTable::qgemm_acts7_types.
constexpr int kActMaxCode7 = 63;

struct KernelTable {
  Isa isa;
  MatmulRowsFn matmul_f32;   // W float32
  MatmulRowsFn matmul_bf16;  // W bfloat16 (raw uint16 bits)
  MatmulRowsFn matmul_f16;   // W IEEE half
  // The same products for many tokens (prefill): W packed per call into k-major panels.
  // Null where the ISA has none (the matmul_* slots serve then); see gemm_for().
  MatmulRowsFn gemm_f32 = nullptr, gemm_bf16 = nullptr, gemm_f16 = nullptr;
  QMatmulRowsFn qmatmul;     // block-quantized W (every QuantType)
  // Which qmatmul the level chose, for logs and tests/cpp/kernel_check's report.
  const char* qmatmul_name = "scalar";
  // The same product for many tokens (prefill): W repacked per call into k-major int8 panels,
  // the same int8 activations. Null where the level has none; it serves the QuantTypes whose
  // bit (1 << type) is in qgemm_types, where it measured faster than the other prefill paths.
  QMatmulRowsFn qgemm_prefill = nullptr;
  uint32_t qgemm_types = 0;
  // The formats (bits as qgemm_types) whose qgemm_prefill takes activation codes in
  // [-kActMaxCode7, kActMaxCode7]: int8 weights times 7-bit activations is the widest product
  // vpmaddubsw sums without saturating (qgemm_avx2.cc), where VNNI has no such limit.
  uint32_t qgemm_acts7_types = 0;
  PackTileActsFn pack_tile_acts = nullptr;  // AMX only
  QMatmulTilesFn qmatmul_tiles = nullptr;   // AMX only
  MatmulTilesBf16Fn matmul_tiles_bf16 = nullptr;  // AMX only
  // quant/qformat.h's quantize_activations, vectorized where the ISA allows.
  void (*quantize_acts)(const float* x, int64_t n, int64_t k, int8_t* q, float* d, float* sd, int32_t* qsum,
                        int max_code);
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float* y, float a, const float* x, int64_t n);  // y += a * x
  // Activations (Activation from model/arch.h, passed as int) and softmax: the fast paths
  // vectorize exp (SiLU and tanh-GELU are x * sigmoid(...)); others use the scalar code.
  void (*activate)(int act, float* x, int64_t n);
  void (*activate_gated)(int act, const float* gate, const float* up, float* out, int64_t n);
  void (*softmax)(float* x, int64_t n);
  // Optional (AVX2, AVX-512): one AttnBlock, queries in vector lanes; null means attend_generic.
  void (*attend)(const AttnBlock& a, float* scratch) = nullptr;
};

// The table for the process (cpu_active_isa()), and the one for a given ISA when the CPU
// supports it (tests compare them); kernels_for() throws InvalidInput otherwise.
const KernelTable& kernels();
const KernelTable& kernels_for(Isa isa);

void fill_kernels_scalar(KernelTable* t);
void fill_kernels_avx2(KernelTable* t);
void fill_kernels_avx512(KernelTable* t);
void fill_qkernels_avx2(KernelTable* t);
void fill_qkernels_avx512vnni(KernelTable* t);
void fill_qgemm_avx512vnni(KernelTable* t);
void fill_qgemm_avx512(KernelTable* t);
void fill_qgemm_avx2(KernelTable* t);
void fill_qkernels_amx(KernelTable* t);
void fill_vmath_avx2(KernelTable* t);
void fill_vmath_avx512(KernelTable* t);
void fill_attention_avx2(KernelTable* t);
void fill_attention_avx512(KernelTable* t);
void fill_kernels_neon(KernelTable* t);
void fill_vmath_neon(KernelTable* t);
void fill_attention_neon(KernelTable* t);
void fill_qkernels_neon(KernelTable* t);
void fill_qkernels_neon_dotprod(KernelTable* t);
void fill_qkernels_neon_i8mm(KernelTable* t);

// Test-only: the table for a name given to the bindings: an ISA name (kernels_for), or
// "emu16", the scalar table with the shared SIMD algorithms over a portable 16-lane vector
// (kernels_emu.cc). Throws InvalidInput for other names.
const KernelTable& kernels_named(const std::string& name);
const KernelTable& kernels_emu16();

// The slot of `t` that reads weights of type `dt` (F32, BF16 or F16); gemm_for prefers the
// many-token kernel and falls back to matmul_for's.
MatmulRowsFn matmul_for(const KernelTable& t, DType dt);
MatmulRowsFn gemm_for(const KernelTable& t, DType dt);

}  // namespace llmos
