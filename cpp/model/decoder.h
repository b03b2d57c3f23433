// The generic decoder-only transformer: one forward pass for every supported family,
// driven by ArchSpec. A Session holds one sequence's KV cache and scratch space; the Model
// holds the weights and the thread pool and is shared by sessions.
//
// Thread-safety: a Model may be used from several threads; forward() serializes on the
// model's mutex (the pool runs one job at a time). A Session belongs to one caller.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "core/buffer.h"
#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "model/arch.h"
#include "model/weights.h"

namespace llmos {

class Model;

class Session {
 public:
  explicit Session(const Model& model);
  int64_t n_past() const { return n_past_; }
  void reset() { n_past_ = 0; history_.clear(); }

 private:
  friend class Model;
  void reserve(int64_t n_total);

  const ArchSpec* spec_;
  int64_t n_past_ = 0;
  int64_t capacity_ = 0;           // positions the cache holds now; grows by doubling
  std::vector<int32_t> history_;   // every token in the cache, for a longrope re-prefill
  std::vector<Buffer> k_, v_;      // per layer: [n_kv_heads, capacity, head_dim] float32
  // Scratch reused across calls; grows to the largest batch seen.
  Buffer x_, h_, qkv_, attn_, tmp_, up_, act_, cos_, sin_;
};

class Model {
 public:
  Model(ArchSpec spec, ModelWeights weights, int n_threads);

  const ArchSpec& spec() const { return spec_; }
  int n_threads() const { return pool_.size(); }
  const KernelTable& kernels() const { return *kernels_; }

  // Appends tokens[0..n) to the session's sequence and runs them through the model.
  // logits receives [n, vocab] when all_logits, else [1, vocab] for the last token.
  // Throws InvalidInput for a token id out of range, Context when the sequence would
  // exceed spec.max_positions.
  void forward(Session& s, const int32_t* tokens, int64_t n, float* logits, bool all_logits);

 private:
  void forward_locked(Session& s, const int32_t* tokens, int64_t n, float* logits, bool all_logits);
  void matmul(const float* x, int64_t n, const Matrix& w, const float* bias, float* y);
  void rope_tables(Session& s, int64_t n);
  void attention(Session& s, int64_t layer, const float* qkv, int64_t n, float* out);

  ArchSpec spec_;
  ModelWeights w_;
  ThreadPool pool_;
  const KernelTable* kernels_;
  std::mutex mu_;
};

}  // namespace llmos
