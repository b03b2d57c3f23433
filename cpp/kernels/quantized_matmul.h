// y = x W^T (+ bias) for a block-quantized W over n tokens, on the model's thread pool:
// the one place that decides how a quantized product runs. For a `prefill` run: with AMX,
// tiles take whole 16-row slices (bf16 activations, W dequantized to bf16 per chunk of
// rows; the last rows % 16 go to the row kernel); without AMX, the packed int8 GEMM
// (KernelTable::qgemm_prefill) on int8 activations for the formats it serves (7-bit codes for
// int8 weights without VNNI, KernelTable::qgemm_acts7_types), else the row kernel. Otherwise
// the row kernel (KernelTable::qmatmul) runs on int8 activations. Each token's result depends
// only on that token and the kind of run, so callers choose per sequence (see kMinPrefillTokens).
#pragma once

#include <cstdint>
#include <vector>

#include "core/buffer.h"
#include "core/thread_pool.h"
#include "kernels/kernels.h"

namespace llmos {

// Reused between calls so a forward pass stops allocating after its first layer.
struct QuantScratch {
  Buffer q, d, sd, sdg, qsum, tiles;
};

// Sequences with fewer new tokens than this use the row kernels: the many-token kernels
// repack (AMX: dequantize to bf16) the weights per call, which pays off only when several
// tokens share it.
constexpr int64_t kMinPrefillTokens = 8;
// The most tokens one forward stacks: longer inputs run in pieces (Model::forward_pieces),
// which bounds the activation scratch (peak memory) without changing results.
constexpr int64_t kPrefillPiece = 256;

void quantized_matmul(const KernelTable& kt, ThreadPool& pool, QuantScratch& s, const float* x, int64_t n,
                      const QView& w, const float* bias, float* y, bool prefill);

// Several row-kernel products in one pass over the pool, for a mixture of experts' decode:
// job j computes y_j = x[t0 .. t0 + n) W_j^T (+ bias_j) on the int8 row kernel, exactly as
// quantized_matmul(..., prefill = false) would, but the activations x [n_x, k] are quantized
// once for all jobs and the jobs' rows share one parallel_for, so many small matrices (the
// routed experts) cost one dispatch instead of one each. Every W_j has k columns and the
// same group.
struct QuantJob {
  QView w;
  int64_t t0, n;      // the job's tokens: rows [t0, t0 + n) of x
  const float* bias;  // [w.rows] or null
  float* y;           // [n, w.rows]
};
void quantized_matmul_group(const KernelTable& kt, ThreadPool& pool, QuantScratch& s, const float* x, int64_t n_x,
                            const std::vector<QuantJob>& jobs);

// y = x W^T (+ bias) for bfloat16 W [rows, k] on AMX tiles (kt.matmul_tiles_bf16 must be
// set, k a multiple of 32): the activations are rounded to bf16 (as a bf16 model's are in
// transformers); the last rows % 16 use `rest` (the float32 kernel) on float activations.
void bf16_matmul_tiles(const KernelTable& kt, ThreadPool& pool, QuantScratch& s, const float* x, int64_t n,
                       const uint16_t* w, int64_t rows, int64_t k, const float* bias, float* y, MatmulRowsFn rest);

}  // namespace llmos
