// y = x W^T (+ bias) for a block-quantized W over n tokens, on the model's thread pool:
// the one place that decides how a quantized product runs. With `tiles` (and AMX in the
// kernel table), tiles take whole 16-row slices (bf16 activations, W dequantized to bf16
// per chunk of rows); otherwise, and for the last rows % 16, the row kernel
// (KernelTable::qmatmul) runs on int8 activations. Either way each token's result depends
// only on that token, so callers choose per sequence (see kMinPrefillTokens).
#pragma once

#include <cstdint>

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

void quantized_matmul(const KernelTable& kt, ThreadPool& pool, QuantScratch& s, const float* x, int64_t n,
                      const QView& w, const float* bias, float* y, bool tiles);

}  // namespace llmos
