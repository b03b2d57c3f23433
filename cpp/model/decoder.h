// The generic decoder-only transformer: one forward pass for every supported family,
// driven by Architecture. A Session holds one sequence's KV cache; the Model holds the weights,
// the thread pool and the scratch space, and is shared by sessions.
//
// One forward call may carry several sequences (a batch): their tokens are stacked so each
// weight matrix is read once for all of them, while attention reads each sequence's own
// cache. A row's result does not depend on the other rows in the batch.
//
// Thread-safety: a Model may be used from several threads; forward() serializes on the
// model's mutex (the pool and the scratch run one job at a time). A Session belongs to
// one caller at a time.
//
// Cancellation: forward() polls its CancelCheck between slices of work of about kCheckWork
// multiply-adds per thread (a matmul's rows or tokens, attention's query blocks), so a check
// comes every few milliseconds whatever the model or input size. A cancelled forward leaves
// the Model as it was and each session as after its last completed piece (n_past counts only
// cached positions; keys written past it are overwritten by the next forward).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "core/buffer.h"
#include "core/cancel.h"
#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/quantized_matmul.h"
#include "model/arch.h"
#include "model/decoder_cuda.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace llmos {

class Model;

class Session {
 public:
  // pool null: the contiguous cache (grows by doubling; beam search, logits). With a pool the
  // session is paged: its positions live in the pool's blocks, which the caller reserves with
  // reserve_append before each forward, and which may be shared with other sessions (fork_from,
  // adopt_prefix). Paged mode refuses longrope models (their keys are recomputed when the
  // sequence outgrows original_max_position_embeddings, which shared blocks cannot allow).
  explicit Session(const Model& model, KvPool* pool = nullptr);
  ~Session() { release(); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  int64_t n_past() const { return n_past_; }
  bool paged() const { return pool_ != nullptr; }
  void reset();
  // Forgets every position from n on (contiguous only): speculative decoding's rollback of the
  // drafted tokens the target rejected. The keys past n stay in memory and are overwritten by
  // the next forward. Throws InvalidInput for n outside [0, n_past], for a paged session, and
  // for a longrope sequence cut back across long_after (its keys were recomputed with the
  // long factors).
  void truncate(int64_t n);
  // Makes this session's sequence and cache a copy of `other`'s (beam search; contiguous only).
  void copy_from(const Session& other);

  // Paged mode (each throws InvalidInput on a contiguous session).
  // Blocks for positions [n_past, n_past + n): new ones, and a private copy of a held block in
  // that range that is shared. False, with nothing changed, when the pool cannot give them even
  // after evicting unreferenced cached blocks. Throws Context beyond the model's context.
  bool reserve_append(int64_t n);
  // Empty session only: takes the cached blocks whose hash chain matches whole blocks of
  // tokens, at most n - 1 tokens (one is always left to compute); returns the tokens adopted
  // (a multiple of block_tokens), which become this session's history.
  int64_t adopt_prefix(const int32_t* tokens, int64_t n);
  // Registers every full block not yet registered in the prefix cache under the hash chain
  // of its tokens. Blocks computed with a sequence-length-dependent rope (dynamic NTK past its
  // base length) are not registered: their keys depend on how the sequence was chunked.
  void publish();
  // Shares `other`'s blocks and history (same pool): n > 1 sequences of one prompt.
  void fork_from(const Session& other);
  // Gives every block back (also in the destructor); the session is empty after.
  void release();
  int64_t blocks_held() const { return int64_t(blocks_.size()); }
  const std::vector<int32_t>& history() const { return history_; }

 private:
  friend class Model;
  friend class CudaDecoder;
  void reserve(int64_t n_total);

  const Architecture* spec_;
  int64_t n_past_ = 0;
  int64_t capacity_ = 0;           // positions the cache holds now; grows by doubling
  std::vector<int32_t> history_;   // every token in the cache (longrope re-prefill; paged: hashing)
  std::vector<Buffer> k_, v_;      // per layer: [num_kv_heads, capacity, head_dim] float32
  // A model on the GPU (Model::to_device) keeps the cache there instead, made by its first forward.
  const CudaDecoder* cuda_ = nullptr;
  std::shared_ptr<CudaKv> cuda_kv_;

  // Paged mode.
  KvPool* pool_ = nullptr;
  std::vector<int32_t> blocks_;              // block of positions [i T, (i + 1) T)
  std::vector<KvPool::ChainLink> chain_;     // prefix-cache identity of the first full blocks
  int64_t cacheable_ = 0;                    // leading positions whose keys depend only on the tokens
};

// A run of new tokens for one sequence.
struct SeqChunk {
  Session* session;
  const int32_t* tokens;
  int64_t n;
};

class Model {
 public:
  Model(Architecture spec, ModelWeights weights, int n_threads);

  const Architecture& spec() const { return spec_; }
  int n_threads() const { return pool_.size(); }
  const KernelTable& kernels() const { return *kernels_; }
  ThreadPool& pool() { return pool_; }
  const ModelWeights& weights() const { return w_; }

  // Runs every later forward on GPU `device` (decoder_cuda.h), weights copied there; sessions
  // made after this keep their caches on the GPU. Throws InvalidInput (field "device") with the
  // reason when the GPU or this model's architecture cannot be used; once only.
  void to_device(int device);
  // "cpu" or "cuda:N".
  std::string device() const { return cuda_ ? "cuda:" + std::to_string(cuda_->device()) : "cpu"; }
  const CudaDecoder* cuda() const { return cuda_.get(); }

  // Appends each chunk's tokens to its session and runs them through the model.
  // logits receives, per chunk in order, [n, vocab] rows when all_logits, else one row
  // for the chunk's last token. Throws InvalidInput for a token id out of range and
  // Context when a sequence would exceed spec.max_position_embeddings; nothing is changed then.
  // cancel (may be null) is polled throughout; what it throws ends the forward.
  void forward(const std::vector<SeqChunk>& chunks, float* logits, bool all_logits, CancelCheck* cancel = nullptr);
  void forward(Session& s, const int32_t* tokens, int64_t n, float* logits, bool all_logits,
               CancelCheck* cancel = nullptr) {
    forward({SeqChunk{&s, tokens, n}}, logits, all_logits, cancel);
  }
  // One forward over all the chunks at once, never split into pieces (the caller bounds the
  // stacked tokens; the scratch grows to fit): the serving engine's step. logits: one row per
  // chunk, its last token's. Paged sessions must have reserved their positions.
  void forward_step(const std::vector<SeqChunk>& chunks, float* logits, CancelCheck* cancel = nullptr);

 private:
  // A run of stacked tokens whose products take the same kernels: the many-token ones
  // (AMX tiles, packed GEMM) for sequences with at least kMinPrefillTokens new tokens, the
  // row kernels otherwise, so a token's result never depends on what else is in the batch.
  struct TokenRun {
    int64_t n;
    bool prefill;
  };
  // The stacked tokens of one forward and how they group; plan_batch builds it, every step
  // reads it. n = tokens in this forward.
  struct Batch {
    int64_t n = 0;
    std::vector<int32_t> tokens;                       // [n]
    std::vector<Session*> session;                     // [n] the sequence of each token
    std::vector<int64_t> pos;                          // [n] its position in that sequence
    std::vector<std::pair<int64_t, int64_t>> qblocks;  // (first token, count): consecutive queries of one sequence
    std::vector<TokenRun> runs, head_runs;             // the stacked tokens, and the LM head's rows
  };
  // The activations of one forward, sized by plan_batch for Batch::n tokens (decoder.cc
  // names the dimensions). Reused across forwards so decode does not allocate.
  struct Scratch {
    Buffer x;         // [n, H] residual stream
    Buffer h;         // [n, H] normed input of a block
    Buffer qkv;       // [n, QKV]
    Buffer attn;      // [n, Nq * D]
    Buffer tmp;       // [n, H] block output
    Buffer up;        // [n, U]
    Buffer act;       // [n, F]
    // Mixture of experts: router logits [n, E], the top-k choice of each token, the tokens
    // routed to one expert gathered [m, H], that expert's output [m, H], the MLP sum [n, H].
    Buffer router, gathered, expert_out, moe_sum;
    std::vector<int32_t> route_expert;  // [n, K]
    std::vector<float> route_weight;    // [n, K]
    Buffer cos, sin;  // [n, rotary_dim / 2] rope rows of each token's position
    Buffer cos_local, sin_local;  // the same for Architecture::rope_local (sliding-window layers)
  };

  void validate(const std::vector<SeqChunk>& chunks) const;
  // forward without the checks; split: long inputs may run in pieces (forward_pieces).
  void run(const std::vector<SeqChunk>& chunks, float* logits, bool all_logits, bool split, CancelCheck* cancel);
  void forward_pieces(const std::vector<SeqChunk>& chunks, float* logits, bool all_logits);
  // logits null: run the layers and fill the caches only.
  void forward_locked(const std::vector<SeqChunk>& chunks, float* logits, bool all_logits);

  // The steps of forward_locked, in order. Each reads the batch and works on the scratch
  // (and, for attention, the sessions' caches); a backend for another device implements these.
  void plan_batch(const std::vector<SeqChunk>& chunks, Batch& b, Scratch& s);
  void embed(const Batch& b, Scratch& s);
  void rope_tables(const std::vector<SeqChunk>& chunks, const Batch& b, Scratch& s);
  void attention_block(int64_t layer, const Batch& b, Scratch& s);
  void mlp_block(int64_t layer, const Batch& b, Scratch& s);
  // out[n, H] = down(act(gate) * up) of in[n, H] with F-wide matrices (gated or plain).
  void dense_mlp(const float* in, const std::vector<TokenRun>& runs, int64_t n, const Matrix& up, const Vector& up_b,
                 const Matrix& down, const Vector& down_b, int64_t F, Scratch& s, float* out,
                 float swiglu_limit = 0.0f);
  // act[n, F] = act(gate) * up of up[n, U] (U = 2F gated, F plain; gpt-oss's clamped SwiGLU
  // when swiglu_limit > 0): the MLPs' and the experts' activation.
  void mlp_activation(const float* up, int64_t n, int64_t F, float* act, float swiglu_limit);
  // out[n, H] = the experts' weighted sum (+ the gated shared expert) for in[n, H].
  void moe_mlp(int64_t layer, const Batch& b, Scratch& s, const float* in, float* out);
  // moe_mlp's routed experts added into sum[n, H]: (token, choice) slots i = t * K + k, listed
  // by expert in `slots` (expert e's are slots[start[e] .. start[e + 1])).
  void moe_per_expert(const LayerWeights& L, Scratch& s, const float* in, const std::vector<int64_t>& start,
                      const std::vector<int64_t>& slots, const std::vector<uint8_t>& prefill, float* sum);
  void moe_decode(const LayerWeights& L, Scratch& s, const float* in, const std::vector<int64_t>& start,
                  const std::vector<int64_t>& slots, float* sum);
  void head(const std::vector<SeqChunk>& chunks, const Batch& b, Scratch& s, float* logits, bool all_logits);

  // What the blocks are made of.
  void check_cancel() {
    if (cancel_) (*cancel_)();
  }
  void matmul(const float* x, const std::vector<TokenRun>& runs, const Matrix& w, const float* bias, float* y);
  void norm_rows(int64_t n, const float* in, const Vector& w, const Vector& b, float* out);
  const float* pre_norm(int64_t n, const float* x, const Vector& w, const Vector& b, float* h);
  void add_residual(float* x, float* out, int64_t n);
  void rope_and_cache(int64_t layer, const Batch& b, const Scratch& s, float* qkv);
  void attention(int64_t layer, const Batch& b, const float* qkv, float* out);

  Architecture spec_;
  ModelWeights w_;
  std::unique_ptr<CudaDecoder> cuda_;  // set by to_device
  ThreadPool pool_;
  const KernelTable* kernels_;
  std::mutex mu_;
  // Per-forward state, valid while mu_ is held.
  CancelCheck* cancel_ = nullptr;
  Batch batch_;
  Scratch scratch_;
  QuantScratch qscratch_;  // int8 activations for quantized matmuls
};

}  // namespace llmos
