// Scalar reference kernels and the run-time choice of kernel table.
#include <cstring>

#include "core/errors.h"
#include "kernels/kernels.h"

#include "core/buffer.h"
#include "kernels/ops.h"

namespace llmos {

namespace {

inline float load_f32(const void* w, int64_t i) { return static_cast<const float*>(w)[i]; }
inline float load_bf16(const void* w, int64_t i) { return bf16_to_f32(static_cast<const uint16_t*>(w)[i]); }
inline float load_f16(const void* w, int64_t i) { return f16_to_f32(static_cast<const uint16_t*>(w)[i]); }

template <float (*Load)(const void*, int64_t)>
void matmul_ref(const float* x, int64_t n, int64_t k, const void* w, int64_t row0, int64_t row1,
                float* y, int64_t ldy) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = row0; r < row1; ++r) {
      float acc = 0.f;
      const int64_t base = r * k;
      for (int64_t i = 0; i < k; ++i) acc += x[t * k + i] * Load(w, base + i);
      y[t * ldy + (r - row0)] = acc;
    }
}

// The reference for every quantized kernel: integer dot products per activation block,
// scaled per block, plus the zero-point / min term per weight group.
void qmatmul_ref(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y,
                 int64_t ldy) {
  const int64_t k = w.cols, ng = k / w.group, nb = k / kActBlock, per_group = w.group / kActBlock;
  const int zp = quant_zero_point(w.type);
  const int64_t row_bytes = quant_row_bytes(w.type, k);
  for (int64_t t = 0; t < x.n; ++t)
    for (int64_t r = row0; r < row1; ++r) {
      const uint8_t* codes = w.codes + r * row_bytes;
      float acc = 0.f, mterm = 0.f;
      for (int64_t g = 0; g < ng; ++g) {
        const float dw = f16_to_f32(w.scale[r * ng + g]);
        const float mw = w.type == QuantType::Q4Asym ? f16_to_f32(w.min[r * ng + g]) : -float(zp) * dw;
        for (int64_t b = g * per_group; b < (g + 1) * per_group; ++b) {
          int32_t dot = 0;
          for (int64_t i = b * kActBlock; i < (b + 1) * kActBlock; ++i) {
            int u;
            if (w.type == QuantType::Q8) u = codes[i];
            else {
              const int64_t j = i % kQ4Chunk;
              const uint8_t* chunk = codes + (i / kQ4Chunk) * (w.type == QuantType::Q6 ? kQ6ChunkBytes : 32);
              const uint8_t byte = chunk[j % 32];
              u = j < 32 ? (byte & 0x0F) : (byte >> 4);
              if (w.type == QuantType::Q6) u |= ((chunk[32 + j % 16] >> (2 * (j / 16))) & 3) << 4;
            }
            dot += u * int32_t(x.q[t * k + i]);
          }
          acc += dw * x.d[t * nb + b] * float(dot);
        }
        mterm += mw * sdg[t * ng + g];
      }
      y[t * ldy + (r - row0)] = acc + mterm;
    }
}

float dot_ref(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void axpy_ref(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void activate_ref(int act, float* x, int64_t n) { activate(Activation(act), x, n); }
void activate_gated_ref(int act, const float* gate, const float* up, float* out, int64_t n) {
  activate_gated(Activation(act), gate, up, out, n);
}

KernelTable make(Isa isa) {
  KernelTable t{};
  fill_kernels_scalar(&t);
#if defined(__x86_64__)
  if (isa >= Isa::Avx2) {
    fill_kernels_avx2(&t);
    fill_qkernels_avx2(&t);
    fill_qgemm_avx2(&t);  // every format (int8 on 7-bit activations, qgemm_avx2.cc)
    fill_vmath_avx2(&t);
    fill_attention_avx2(&t);
  }
  if (isa >= Isa::Avx512) {
    fill_kernels_avx512(&t);
    fill_vmath_avx512(&t);
    fill_attention_avx512(&t);
    fill_qgemm_avx512(&t);
  }
  // The quantized row kernels need vpdpbusd; plain AVX-512 keeps AVX2's.
  if (isa >= Isa::Avx512Vnni) {
    fill_qkernels_avx512vnni(&t);
    fill_qgemm_avx512vnni(&t);  // every format
  }
  if (isa >= Isa::Amx) fill_qkernels_amx(&t);
#elif defined(__aarch64__)
  if (isa >= Isa::Neon) {
    fill_kernels_neon(&t);
    fill_vmath_neon(&t);
    fill_attention_neon(&t);
    fill_qkernels_neon(&t);
  }
  // Each quantized kernel from the file compiled for its level (+dotprod, +dotprod+i8mm): only
  // the table of a level the CPU has is ever used (kernels_for refuses the others).
  if (isa >= Isa::NeonDotprod) fill_qkernels_neon_dotprod(&t);
  if (isa >= Isa::NeonI8mm) fill_qkernels_neon_i8mm(&t);
#endif
  t.isa = isa;
  return t;
}

}  // namespace

void fill_kernels_scalar(KernelTable* t) {
  t->isa = Isa::Scalar;
  t->matmul_f32 = matmul_ref<load_f32>;
  t->matmul_bf16 = matmul_ref<load_bf16>;
  t->matmul_f16 = matmul_ref<load_f16>;
  t->qmatmul = qmatmul_ref;
  t->quantize_acts = quantize_activations;
  t->dot = dot_ref;
  t->axpy = axpy_ref;
  t->activate = activate_ref;
  t->activate_gated = activate_gated_ref;
  t->softmax = softmax;
}

const KernelTable& kernels_for(Isa isa) {
  // Indexed by the enum's value; slots of the other architecture's levels stay unused.
  static const KernelTable tables[13] = {
      make(Isa::Scalar), make(Isa::Avx2),   make(Isa::Avx512),      make(Isa::Avx512Vnni), make(Isa::Avx512Bf16),
      make(Isa::Amx),    make(Isa::Scalar), make(Isa::Scalar),      make(Isa::Scalar),     make(Isa::Scalar),
      make(Isa::Neon),   make(Isa::NeonDotprod), make(Isa::NeonI8mm)};
  if (isa > cpu_best_isa() || (isa != Isa::Scalar && isa_is_arm(isa) != isa_is_arm(cpu_best_isa())))
    throw Error(Error::Kind::InvalidInput, "", "isa",
                std::string("this CPU does not support ") + isa_name(isa) + " (best: " +
                    isa_name(cpu_best_isa()) + ")");
  return tables[int(isa)];
}

const KernelTable& kernels_named(const std::string& name) {
  if (name == "emu16") return kernels_emu16();
  Isa isa;
  if (!isa_from_name(name, &isa)) throw Error(Error::Kind::InvalidInput, "", "isa", "unknown ISA '" + name + "'");
  return kernels_for(isa);
}

const KernelTable& kernels() {
  static const KernelTable& t = kernels_for(cpu_active_isa());
  return t;
}

uint8_t* thread_scratch(size_t bytes) {
  thread_local Buffer block;
  if (block.size() < bytes) block.resize(bytes);
  return block.data();
}

int64_t amx_acts_bytes(int64_t n, int64_t k) { return ((n + 15) / 16) * 16 * k * 2; }

MatmulRowsFn matmul_for(const KernelTable& t, DType dt) {
  switch (dt) {
    case DType::F32: return t.matmul_f32;
    case DType::BF16: return t.matmul_bf16;
    case DType::F16: return t.matmul_f16;
    default:
      throw Error(Error::Kind::Tensor, "", "", std::string("no matmul kernel for dtype ") + dtype_name(dt));
  }
}

MatmulRowsFn gemm_for(const KernelTable& t, DType dt) {
  MatmulRowsFn f = dt == DType::F32 ? t.gemm_f32 : dt == DType::BF16 ? t.gemm_bf16 : dt == DType::F16 ? t.gemm_f16 : nullptr;
  return f ? f : matmul_for(t, dt);
}

}  // namespace llmos
