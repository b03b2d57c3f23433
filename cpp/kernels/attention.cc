// The portable attention kernel (every ISA's table can run it; AVX2 and AVX-512 have their
// own, attention_simd.inc). Per block: scores = Q K^T through matmul_f32, masked and softmaxed
// per query, then out = P V with V transposed so matmul_f32 reads it row by row. Keys
// outside a query's window get probability exactly 0, so they add nothing to the sums.
#include <cmath>
#include <algorithm>
#include <cstring>

#include "kernels/kernels.h"

namespace llmos {

int64_t attend_scratch_floats(int64_t len, int64_t D) { return 32 * D + 16 * len + D * len + 256; }

void attend_generic(const KernelTable& kt, const AttnBlock& a, float* scratch) {
  const int64_t nq = a.nq, len = a.len, D = a.D;
  float* qb = scratch;            // [nq, D]
  float* ob = qb + 16 * D;        // [nq, D]
  float* sc = ob + 16 * D;        // [nq, len]
  float* vt = sc + 16 * len;      // [D, len]
  for (int64_t i = 0; i < nq; ++i) std::memcpy(qb + i * D, a.q + i * a.ldq, size_t(D) * 4);
  kt.matmul_f32(qb, nq, D, a.k, 0, len, sc, len);
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t pos = a.p0 + i;
    const int64_t lo = a.window > 0 ? pos - a.window + 1 : 0;
    float* row = sc + i * len;
    for (int64_t j = 0; j < len; ++j) {
      const int64_t key = a.start + j;
      if (key < lo || key > pos) { row[j] = -INFINITY; continue; }
      float v = row[j] * a.scale;
      if (a.softcap > 0) v = std::tanh(v / a.softcap) * a.softcap;
      row[j] = v;
    }
    if (a.sink == -INFINITY) {
      kt.softmax(row, len);
      continue;
    }
    // With a sink: softmax over the row and the sink logit, the sink's share dropped.
    float mx = a.sink;
    for (int64_t j = 0; j < len; ++j) mx = std::max(mx, row[j]);
    float sum = std::exp(a.sink - mx);
    for (int64_t j = 0; j < len; ++j) sum += row[j] = std::exp(row[j] - mx);
    for (int64_t j = 0; j < len; ++j) row[j] /= sum;
  }
  for (int64_t j = 0; j < len; ++j)
    for (int64_t d = 0; d < D; ++d) vt[d * len + j] = a.v[j * D + d];
  kt.matmul_f32(sc, nq, len, vt, 0, D, ob, D);
  for (int64_t i = 0; i < nq; ++i) std::memcpy(a.out + i * a.ldo, ob + i * D, size_t(D) * 4);
}

}  // namespace llmos
