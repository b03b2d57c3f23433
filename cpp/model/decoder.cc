#include "model/decoder.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>

#include "core/errors.h"
#include "kernels/ops.h"
#include "kernels/quantized_matmul.h"

namespace llmos {

// Dimension names used below: n = tokens in this call, H = hidden_size, D = head_dim,
// Nq / Nkv = query / key-value heads, QKV = (Nq + 2 Nkv) * D, F = intermediate_size.
// U = F, or 2 F with a gated MLP (gate and up stacked).

namespace {

const Vector kNoVector;  // an absent norm bias

// Work between two cancellation checks, per thread, in multiply-adds: about 10 ms.
// Reading a weight costs about kWeightRead multiply-adds (decode is memory-bound).
constexpr int64_t kCheckWork = int64_t(1) << 27;
constexpr int64_t kWeightRead = 8;

void add_rows(float* dst, const float* src, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] += src[i];
}

}  // namespace

Session::Session(const Model& model, KvPool* pool) : spec_(&model.spec()), cuda_(model.cuda()), pool_(pool) {
  if (pool) {
    const Architecture& ps = pool->spec();
    if (ps.num_layers != spec_->num_layers || ps.num_kv_heads != spec_->num_kv_heads || ps.head_dim != spec_->head_dim)
      throw Error(Error::Kind::InvalidInput, "", "pool", "KV pool was made for another model's shape");
    if (!spec_->rope.inv_freq_long.empty())
      throw Error(Error::Kind::InvalidInput, "", "pool",
                  "a paged KV cache does not support longrope (" + spec_->family +
                      "): its keys are recomputed when the sequence outgrows " + std::to_string(spec_->rope.long_after) +
                      " tokens, which shared blocks cannot allow; use the contiguous cache");
    return;
  }
  k_.resize(size_t(spec_->num_layers));
  v_.resize(size_t(spec_->num_layers));
}

void Session::reset() {
  if (pool_) {
    release();
    return;
  }
  n_past_ = 0;
  history_.clear();
}

void Session::truncate(int64_t n) {
  if (n < 0 || n > n_past_)
    throw Error(Error::Kind::InvalidInput, "", "n",
                "cannot truncate a session of " + std::to_string(n_past_) + " positions to " + std::to_string(n));
  if (pool_) throw Error(Error::Kind::InvalidInput, "", "session", "a paged session is not truncated");
  const Rope& rope = spec_->rope;
  if (!rope.inv_freq_long.empty() && n_past_ > rope.long_after && n <= rope.long_after)
    throw Error(Error::Kind::InvalidInput, "", "n",
                "a longrope sequence cannot be cut back across " + std::to_string(rope.long_after) + " positions");
  n_past_ = n;
  cacheable_ = std::min(cacheable_, n);
  if (int64_t(history_.size()) > n) history_.resize(size_t(n));
}

void Session::copy_from(const Session& other) {
  if (other.spec_ != spec_) throw Error(Error::Kind::InvalidInput, "", "session", "belongs to another model");
  if (pool_ || other.pool_)
    throw Error(Error::Kind::InvalidInput, "", "session", "copy_from is for contiguous sessions; use fork_from");
  if (&other == this) return;
  n_past_ = 0;
  if (other.n_past_ == 0) {  // an empty session has no buffers to copy from
    history_.clear();
    return;
  }
  if (cuda_) {
    if (!other.cuda_kv_) throw Error(Error::Kind::InvalidInput, "", "session", "copy_from a session of the CPU model");
    if (!cuda_kv_) cuda_kv_ = std::make_shared<CudaKv>();
    cuda_->copy_cache(*cuda_kv_, *other.cuda_kv_, other.n_past_);
    n_past_ = other.n_past_;
    history_ = other.history_;
    return;
  }
  reserve(other.n_past_);
  const int64_t D = spec_->head_dim, Nkv = spec_->num_kv_heads;
  for (int64_t l = 0; l < spec_->num_layers; ++l)
    for (int64_t h = 0; h < Nkv; ++h) {
      const size_t bytes = size_t(other.n_past_ * D) * sizeof(float);
      std::memcpy(k_[size_t(l)].as<float>() + h * capacity_ * D, other.k_[size_t(l)].as<float>() + h * other.capacity_ * D, bytes);
      std::memcpy(v_[size_t(l)].as<float>() + h * capacity_ * D, other.v_[size_t(l)].as<float>() + h * other.capacity_ * D, bytes);
    }
  n_past_ = other.n_past_;
  history_ = other.history_;
}

namespace {
void require_paged(const KvPool* pool, const char* what) {
  if (!pool) throw Error(Error::Kind::InvalidInput, "", "session", std::string(what) + " needs a paged session (a KV pool)");
}
}  // namespace

bool Session::reserve_append(int64_t n) {
  require_paged(pool_, "reserve_append");
  if (n < 0) throw Error(Error::Kind::InvalidInput, "", "n", "must not be negative, got " + std::to_string(n));
  const int64_t end = n_past_ + n;
  if (end > spec_->max_position_embeddings)
    throw Error(Error::Kind::Context, "", "token_ids",
                "sequence of " + std::to_string(end) + " tokens exceeds the context of " +
                    std::to_string(spec_->max_position_embeddings));
  if (n == 0) return true;
  const int64_t T = pool_->block_tokens();
  const int64_t first = n_past_ / T, last = (end - 1) / T;  // blocks written
  const int64_t held = int64_t(blocks_.size());
  int64_t need = std::max<int64_t>(0, last + 1 - held);
  for (int64_t i = first; i < std::min(held, last + 1); ++i)
    if (pool_->refcount(blocks_[size_t(i)]) > 1) ++need;
  if (need > pool_->available()) return false;
  for (int64_t i = first; i < std::min(held, last + 1); ++i) {
    const int32_t b = blocks_[size_t(i)];
    if (pool_->refcount(b) == 1) continue;
    const int32_t c = pool_->allocate();
    pool_->copy_block(c, b);
    pool_->unref(b);
    blocks_[size_t(i)] = c;
  }
  while (int64_t(blocks_.size()) <= last) blocks_.push_back(pool_->allocate());
  return true;
}

int64_t Session::adopt_prefix(const int32_t* tokens, int64_t n) {
  require_paged(pool_, "adopt_prefix");
  if (n_past_ != 0 || !blocks_.empty())
    throw Error(Error::Kind::InvalidInput, "", "session", "adopt_prefix needs an empty session");
  const int64_t T = pool_->block_tokens();
  KvPool::ChainLink parent;
  int64_t adopted = 0;
  while (adopted + T <= n - 1) {
    const KvPool::ChainLink link = pool_->lookup(parent, tokens + adopted);
    if (link.block < 0) break;
    pool_->ref(link.block);
    blocks_.push_back(link.block);
    chain_.push_back(link);
    parent = link;
    adopted += T;
  }
  pool_->count_query(std::max<int64_t>(n, 0), adopted);
  n_past_ = cacheable_ = adopted;
  history_.assign(tokens, tokens + adopted);
  return adopted;
}

void Session::publish() {
  require_paged(pool_, "publish");
  const int64_t T = pool_->block_tokens();
  const int64_t full = std::min(n_past_, cacheable_) / T;
  for (int64_t i = int64_t(chain_.size()); i < full; ++i) {
    const KvPool::ChainLink parent = i ? chain_[size_t(i - 1)] : KvPool::ChainLink{};
    chain_.push_back(pool_->publish(blocks_[size_t(i)], parent, history_.data() + i * T));
  }
}

void Session::fork_from(const Session& other) {
  require_paged(pool_, "fork_from");
  if (other.pool_ != pool_) throw Error(Error::Kind::InvalidInput, "", "session", "fork_from needs a session of the same pool");
  if (&other == this) return;
  release();
  const int64_t T = pool_->block_tokens();
  const int64_t n_blocks = (other.n_past_ + T - 1) / T;
  for (int64_t i = 0; i < n_blocks; ++i) {
    pool_->ref(other.blocks_[size_t(i)]);
    blocks_.push_back(other.blocks_[size_t(i)]);
  }
  n_past_ = other.n_past_;
  history_ = other.history_;
  chain_ = other.chain_;
  cacheable_ = other.cacheable_;
}

void Session::release() {
  if (!pool_) return;
  for (int32_t b : blocks_) pool_->unref(b);
  blocks_.clear();
  chain_.clear();
  history_.clear();
  n_past_ = cacheable_ = 0;
}

void Session::reserve(int64_t n_total) {
  if (n_total <= capacity_) return;
  int64_t cap = std::max<int64_t>(n_total, std::min<int64_t>(2 * capacity_, spec_->max_position_embeddings));
  cap = std::max<int64_t>(cap, 16);
  const int64_t D = spec_->head_dim, Nkv = spec_->num_kv_heads;
  for (int64_t l = 0; l < spec_->num_layers; ++l) {
    for (Buffer* b : {&k_[size_t(l)], &v_[size_t(l)]}) {
      Buffer grown(size_t(Nkv * cap * D) * sizeof(float));
      for (int64_t h = 0; h < Nkv && n_past_ > 0; ++h)
        std::memcpy(grown.as<float>() + h * cap * D, b->as<float>() + h * capacity_ * D,
                    size_t(n_past_ * D) * sizeof(float));
      *b = std::move(grown);
    }
  }
  capacity_ = cap;
}

Model::Model(Architecture spec, ModelWeights weights, int n_threads)
    : spec_(std::move(spec)), w_(std::move(weights)), pool_(n_threads), kernels_(&llmos::kernels()) {
  spec_.validate();
}

void Model::matmul(const float* x, const std::vector<TokenRun>& runs, const Matrix& w, const float* bias, float* y) {
  // y: [n, rows] for the n tokens of the runs, one run at a time, each in slices of about
  // kCheckWork per thread with a cancellation check before each.
  const int64_t rows = w.rows, k = w.cols;
  const int64_t budget = kCheckWork * pool_.size();
  int64_t t = 0;
  for (const TokenRun& run : runs) {
    const float* xr = x + t * k;
    float* yr = y + t * rows;
    t += run.n;
    const bool tiles = run.prefill && !w.quantized() && w.dtype == DType::BF16 && kernels_->matmul_tiles_bf16 &&
                       rows >= 16 && k % 32 == 0;
    if (w.quantized() || tiles) {
      // These kernels take the whole matrix, so the slices are runs of tokens: a token's
      // result does not depend on the others, and a prefill slice keeps at least
      // kMinPrefillTokens tokens so it keeps its kernel.
      int64_t slices = std::max<int64_t>(1, run.n * rows * k / budget);
      slices = std::min(slices, run.prefill ? std::max<int64_t>(1, run.n / kMinPrefillTokens) : run.n);
      for (int64_t i = 0, t0 = 0; i < slices; ++i) {
        const int64_t t1 = run.n * (i + 1) / slices;
        check_cancel();
        if (tiles)
          bf16_matmul_tiles(*kernels_, pool_, qscratch_, xr + t0 * k, t1 - t0, reinterpret_cast<const uint16_t*>(w.data.data()),
                            rows, k, bias, yr + t0 * rows, gemm_for(*kernels_, w.dtype));
        else
          quantized_matmul(*kernels_, pool_, qscratch_, xr + t0 * k, t1 - t0, w.qview(), bias, yr + t0 * rows, run.prefill);
        t0 = t1;
      }
      continue;
    }
    // Float: the slices are runs of output rows, each over all the run's tokens, so every
    // weight row is still read (and, for the packed GEMM, packed) once per run.
    // Threads split a slice's rows. The prefill kernel takes all the run's tokens at once
    // (it packs its rows once per call); the row kernel walks the tokens in blocks so a
    // block of x stays in cache while the thread's rows pass over it.
    const MatmulRowsFn fn = run.prefill ? gemm_for(*kernels_, w.dtype) : matmul_for(*kernels_, w.dtype);
    const int64_t block = run.prefill ? run.n : 64;
    const int64_t min_rows = 64 * pool_.size();
    const int64_t slices = std::max<int64_t>(1, rows / std::max(min_rows, budget / (k * (run.n + kWeightRead))));
    const void* wd = w.data.data();
    for (int64_t i = 0, s0 = 0; i < slices; ++i) {
      const int64_t s1 = rows * (i + 1) / slices;
      const int64_t grain = std::max<int64_t>(32, (((s1 - s0) / (pool_.size() * 8)) + 31) & ~int64_t(31));
      check_cancel();
      pool_.parallel_for(s1 - s0, grain, [&](int64_t a, int64_t b) {
        const int64_t r0 = s0 + a, r1 = s0 + b;
        for (int64_t t0 = 0; t0 < run.n; t0 += block) {
          const int64_t nt = std::min(block, run.n - t0);
          fn(xr + t0 * k, nt, k, wd, r0, r1, yr + t0 * rows + r0, rows);
          if (bias)
            for (int64_t i = t0; i < t0 + nt; ++i)
              for (int64_t r = r0; r < r1; ++r) yr[i * rows + r] += bias[r];
        }
      });
      s0 = s1;
    }
  }
}

void Model::rope_tables(const std::vector<SeqChunk>& chunks, const Batch& b, Scratch& s) {
  const Rope& rope = spec_.rope;
  const int64_t half = rope.rotary_dim / 2;
  if (half == 0) return;
  s.cos.resize(size_t(b.n * half) * sizeof(float));
  s.sin.resize(size_t(b.n * half) * sizeof(float));
  float* c = s.cos.as<float>();  // c, sn: [n, half]
  float* sn = s.sin.as<float>();
  std::vector<float> dyn;
  int64_t t = 0;
  for (const SeqChunk& ch : chunks) {
    // The frequencies may depend on the sequence length (transformers: max(position_ids) + 1).
    const int64_t seq_len = ch.session->n_past_ + ch.n;
    const float* inv = rope.inv_freq.data();
    if (!rope.inv_freq_long.empty() && seq_len > rope.long_after) inv = rope.inv_freq_long.data();
    if (rope.dynamic && seq_len > rope.dynamic_max_positions) {
      const double dim = double(rope.rotary_dim);
      const double f = rope.dynamic_factor;
      const double base = rope.dynamic_base * std::pow(f * double(seq_len) / double(rope.dynamic_max_positions) - (f - 1.0),
                                                       dim / (dim - 2.0));
      dyn.resize(size_t(half));
      for (int64_t i = 0; i < half; ++i) dyn[size_t(i)] = float(1.0 / std::pow(base, double(float(2 * i) / float(dim))));
      inv = dyn.data();
    }
    for (int64_t j = 0; j < ch.n; ++j, ++t) {
      const float pos = float(ch.session->n_past_ + j);
      for (int64_t i = 0; i < half; ++i) {
        const float a = pos * inv[i];
        c[t * half + i] = std::cos(a) * rope.attention_scaling;
        sn[t * half + i] = std::sin(a) * rope.attention_scaling;
      }
    }
  }
  const Rope& local = spec_.rope_local;
  if (local.rotary_dim == 0) return;
  s.cos_local.resize(size_t(b.n * half) * sizeof(float));
  s.sin_local.resize(size_t(b.n * half) * sizeof(float));
  float* cl = s.cos_local.as<float>();
  float* sl = s.sin_local.as<float>();
  for (int64_t t2 = 0; t2 < b.n; ++t2) {
    const float pos = float(b.pos[size_t(t2)]);
    for (int64_t i = 0; i < half; ++i) {
      const float a = pos * local.inv_freq[size_t(i)];
      cl[t2 * half + i] = std::cos(a) * local.attention_scaling;
      sl[t2 * half + i] = std::sin(a) * local.attention_scaling;
    }
  }
}

void Model::attention(int64_t layer, const Batch& b, const float* qkv, float* out) {
  // Per (query block, head), one call of the attention kernel (kernels.h AttnBlock), so the
  // keys are read once per block of up to kQueryBlock queries instead of once per query.
  const int64_t D = spec_.head_dim, Nq = spec_.num_heads, Nkv = spec_.num_kv_heads;
  const int64_t QKV = (Nq + 2 * Nkv) * D, group = Nq / Nkv;
  const int64_t window = spec_.sliding_window[size_t(layer)];
  const float scale = spec_.attn_scale > 0 ? spec_.attn_scale : 1.0f / std::sqrt(float(D));
  const float cap_soft = spec_.attn_softcap;
  const KernelTable& kt = *kernels_;
  // The keys a query block attends: (start, len) for [start, p0 + nq).
  auto key_range = [&](int64_t t0, int64_t nq) {
    const int64_t p0 = b.pos[size_t(t0)];
    const int64_t start = window > 0 ? std::max<int64_t>(0, p0 - window + 1) : 0;
    return std::make_pair(start, p0 + nq - start);
  };
  // Names this call for the per-thread gather buffers (unique across models and calls).
  static std::atomic<uint64_t> epochs{0};
  const uint64_t epoch = ++epochs;
  auto attend_task = [&](int64_t task, std::vector<float>& scratch) {
    const auto [t0, nq] = b.qblocks[size_t(task / Nq)];
    const int64_t h = task % Nq, kvh = h / group;
    const Session& s = *b.session[size_t(t0)];
    const int64_t cap = s.capacity_;
    const auto [start, len] = key_range(t0, nq);
    AttnBlock blk;
    blk.q = qkv + t0 * QKV + h * D;
    blk.ldq = QKV;
    if (s.pool_) {
      // Paged: the keys and values of the range, gathered (and converted to float) into a
      // per-thread buffer, then the same kernel as the contiguous cache. The query heads of
      // one kv head are consecutive tasks, so a thread gathers once per group.
      thread_local std::vector<float> kbuf, vbuf;
      thread_local uint64_t have_epoch = 0;
      thread_local int64_t have_t0 = -1, have_kvh = -1;
      if (have_epoch != epoch || have_t0 != t0 || have_kvh != kvh) {
        kbuf.resize(size_t(len * D));
        vbuf.resize(size_t(len * D));
        s.pool_->gather(s.blocks_.data(), layer, kvh, start, len, kbuf.data(), vbuf.data());
        have_epoch = epoch, have_t0 = t0, have_kvh = kvh;
      }
      blk.k = kbuf.data();
      blk.v = vbuf.data();
    } else {
      blk.k = s.k_[size_t(layer)].as<float>() + (kvh * cap + start) * D;
      blk.v = s.v_[size_t(layer)].as<float>() + (kvh * cap + start) * D;
    }
    blk.nq = nq, blk.len = len, blk.D = D, blk.start = start, blk.p0 = b.pos[size_t(t0)], blk.window = window;
    blk.scale = scale, blk.softcap = cap_soft;
    if (spec_.attn_sinks) blk.sink = w_.layers[size_t(layer)].sinks[size_t(h)];
    blk.out = out + t0 * Nq * D + h * D;
    blk.ldo = Nq * D;
    scratch.resize(size_t(attend_scratch_floats(len, D)));
    if (kt.attend) kt.attend(blk, scratch.data());
    else attend_generic(kt, blk, scratch.data());
  };
  // Slices of whole query blocks of about kCheckWork per thread, with a cancellation check
  // before each: a block's work grows with the context.
  const int64_t n_blocks = int64_t(b.qblocks.size());
  const int64_t budget = kCheckWork * pool_.size();
  for (int64_t q0 = 0, q1 = 0; q0 < n_blocks; q0 = q1) {
    for (int64_t work = 0; q1 < n_blocks && (q1 == q0 || work < budget); ++q1) {
      const auto [t0, nq] = b.qblocks[size_t(q1)];
      work += 2 * Nq * nq * key_range(t0, nq).second * D;
    }
    check_cancel();
    pool_.parallel_for((q1 - q0) * Nq, 1, [&](int64_t task0, int64_t task1) {
      thread_local std::vector<float> scratch;
      for (int64_t task = task0; task < task1; ++task) attend_task(q0 * Nq + task, scratch);
    });
  }
}

void Model::validate(const std::vector<SeqChunk>& chunks) const {
  if (chunks.empty()) throw Error(Error::Kind::InvalidInput, "", "token_ids", "no sequences given");
  for (const SeqChunk& ch : chunks) {
    if (ch.session->spec_ != &spec_)
      throw Error(Error::Kind::InvalidInput, "", "session", "belongs to another model");
    if (ch.n <= 0) throw Error(Error::Kind::InvalidInput, "", "token_ids", "needs at least one token");
    for (int64_t i = 0; i < ch.n; ++i)
      if (ch.tokens[i] < 0 || ch.tokens[i] >= spec_.vocab_size)
        throw Error(Error::Kind::InvalidInput, "", "token_ids",
                    "token id " + std::to_string(ch.tokens[i]) + " at index " + std::to_string(i) +
                        " is outside the vocabulary [0, " + std::to_string(spec_.vocab_size) + ")");
    if (ch.session->n_past_ + ch.n > spec_.max_position_embeddings)
      throw Error(Error::Kind::Context, "", "token_ids",
                  "sequence of " + std::to_string(ch.session->n_past_ + ch.n) + " tokens exceeds the context of " +
                      std::to_string(spec_.max_position_embeddings));
    for (const SeqChunk& other : chunks)
      if (&other != &ch && other.session == ch.session)
        throw Error(Error::Kind::InvalidInput, "", "session", "appears twice in one batch");
    if (ch.session->pool_) {
      // The caller reserved the positions (reserve_append), which also made them private.
      const Session& s = *ch.session;
      const int64_t T = s.pool_->block_tokens(), end = s.n_past_ + ch.n;
      if (int64_t(s.blocks_.size()) * T < end)
        throw Error(Error::Kind::InvalidInput, "", "session",
                    "positions up to " + std::to_string(end) + " are not reserved (reserve_append first)");
      for (int64_t i = s.n_past_ / T; i <= (end - 1) / T; ++i)
        if (s.pool_->refcount(s.blocks_[size_t(i)]) != 1)
          throw Error(Error::Kind::InvalidInput, "", "session", "a block to be written is shared (reserve_append first)");
    }
  }
}

void Model::forward(const std::vector<SeqChunk>& chunks, float* logits, bool all_logits, CancelCheck* cancel) {
  validate(chunks);
  run(chunks, logits, all_logits, true, cancel);
}

void Model::forward_step(const std::vector<SeqChunk>& chunks, float* logits, CancelCheck* cancel) {
  validate(chunks);
  run(chunks, logits, false, false, cancel);
}

void Model::to_device(int device) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cuda_) throw Error(Error::Kind::InvalidInput, "", "device", "the model is already on " + this->device());
  cuda_ = std::make_unique<CudaDecoder>(spec_, w_, device);
}

void Model::run(const std::vector<SeqChunk>& chunks, float* logits, bool all_logits, bool split, CancelCheck* cancel) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cuda_) {
    for (const SeqChunk& ch : chunks)
      if (ch.session->cuda_ != cuda_.get())
        throw Error(Error::Kind::InvalidInput, "", "session", "was made before the model moved to " + device());
    cuda_->forward(chunks, logits, all_logits, cancel);
    return;
  }
  cancel_ = cancel;
  struct ForgetCancel {
    CancelCheck*& c;
    ~ForgetCancel() { c = nullptr; }
  } forget{cancel_};
  // longrope switches to the long factors once a sequence outgrows long_after. Keys cached
  // before the switch were rotated with the short ones, so, as transformers does for
  // Phi-3, such a sequence is run again from its first token, on its own.
  const Rope& rope = spec_.rope;
  const int64_t V = spec_.vocab_size;
  auto go = [&](const std::vector<SeqChunk>& cs, float* out, bool all) {
    if (split) forward_pieces(cs, out, all);
    else forward_locked(cs, out, all);
  };
  std::vector<SeqChunk> rest;
  float* out = logits;
  for (const SeqChunk& ch : chunks) {
    Session& s = *ch.session;
    const bool crosses = !rope.inv_freq_long.empty() && s.n_past_ > 0 && s.n_past_ <= rope.long_after &&
                         s.n_past_ + ch.n > rope.long_after;
    if (!crosses) {
      rest.push_back(ch);
      out += (all_logits ? ch.n : 1) * V;
      continue;
    }
    if (!rest.empty()) {
      go(rest, logits, all_logits);
      rest.clear();
    }
    std::vector<int32_t> all = s.history_;
    all.insert(all.end(), ch.tokens, ch.tokens + ch.n);
    const int64_t n_old = int64_t(s.history_.size());
    s.reset();
    const SeqChunk whole{&s, all.data(), int64_t(all.size())};
    if (!all_logits) {
      go({whole}, out, false);
    } else {
      std::vector<float> full(all.size() * size_t(V));
      go({whole}, full.data(), true);
      std::memcpy(out, full.data() + size_t(n_old * V), size_t(ch.n * V) * sizeof(float));
    }
    out += (all_logits ? ch.n : 1) * V;
    logits = out;
  }
  if (!rest.empty()) go(rest, logits, all_logits);
}

void Model::forward_pieces(const std::vector<SeqChunk>& chunks, float* logits, bool all_logits) {
  // The scratch holds activations for every stacked token, so long inputs run in pieces of
  // at most kPrefillPiece tokens: each sequence on its own, cut into equal pieces (so none
  // falls under kMinPrefillTokens and each token keeps the kernels it would get in one
  // piece). Results are the same as in one forward; only the last piece needs the LM head
  // unless every position's logits are asked for.
  // Not for ropes whose frequencies depend on the sequence length (dynamic, longrope):
  // there a piece would be rotated for a shorter sequence than the whole.
  int64_t total = 0;
  for (const SeqChunk& ch : chunks) total += ch.n;
  if (total <= kPrefillPiece || spec_.rope.dynamic || !spec_.rope.inv_freq_long.empty()) {
    forward_locked(chunks, logits, all_logits);
    return;
  }
  const int64_t V = spec_.vocab_size;
  float* out = logits;
  for (const SeqChunk& ch : chunks) {
    const int64_t pieces = (ch.n + kPrefillPiece - 1) / kPrefillPiece;
    for (int64_t p = 0, off = 0; p < pieces; ++p) {
      const int64_t end = ch.n * (p + 1) / pieces;
      const SeqChunk piece{ch.session, ch.tokens + off, end - off};
      const bool last = p + 1 == pieces;
      forward_locked({piece}, all_logits || last ? out : nullptr, all_logits);
      if (all_logits) out += piece.n * V;
      else if (last) out += V;
      off = end;
    }
  }
}

// One forward of the stacked tokens: embed, then per layer an attention block and an MLP
// block, each adding its output to the residual stream x, then the LM head.
void Model::forward_locked(const std::vector<SeqChunk>& chunks, float* logits, bool all_logits) {
  check_cancel();
  plan_batch(chunks, batch_, scratch_);
  embed(batch_, scratch_);
  rope_tables(chunks, batch_, scratch_);
  for (int64_t l = 0; l < spec_.num_layers; ++l) {
    attention_block(l, batch_, scratch_);
    mlp_block(l, batch_, scratch_);
  }
  for (const SeqChunk& ch : chunks) {
    Session& s = *ch.session;
    const bool cacheable = s.cacheable_ == s.n_past_;
    s.n_past_ += ch.n;
    if (!spec_.rope.inv_freq_long.empty() || s.pool_) s.history_.insert(s.history_.end(), ch.tokens, ch.tokens + ch.n);
    // Under dynamic NTK a chunk that ends past the base length was rotated for its length.
    if (cacheable && (!spec_.rope.dynamic || s.n_past_ <= spec_.rope.dynamic_max_positions)) s.cacheable_ = s.n_past_;
  }
  if (!logits) return;  // a piece before the last (forward_pieces)
  head(chunks, batch_, scratch_, logits, all_logits);
}

void Model::plan_batch(const std::vector<SeqChunk>& chunks, Batch& b, Scratch& s) {
  const int64_t H = spec_.hidden_size, D = spec_.head_dim, Nq = spec_.num_heads, Nkv = spec_.num_kv_heads;
  const int64_t QKV = (Nq + 2 * Nkv) * D;
  const int64_t F = std::max(spec_.mlp_width(), spec_.num_experts ? spec_.expert_intermediate_size : 0);
  const int64_t U = (spec_.gated_mlp ? 2 : 1) * F;

  // Stack the chunks' tokens; remember each one's session and position.
  int64_t n = 0;
  for (const SeqChunk& ch : chunks) n += ch.n;
  b.n = n;
  b.session.resize(size_t(n));
  b.pos.resize(size_t(n));
  b.tokens.resize(size_t(n));
  {
    int64_t t = 0;
    for (const SeqChunk& ch : chunks) {
      if (!ch.session->pool_) ch.session->reserve(ch.session->n_past_ + ch.n);
      for (int64_t j = 0; j < ch.n; ++j, ++t) {
        b.session[size_t(t)] = ch.session;
        b.pos[size_t(t)] = ch.session->n_past_ + j;
        b.tokens[size_t(t)] = ch.tokens[j];
      }
    }
  }

  // Runs of sequences that take the same kernels; the LM head without all_logits
  // sees one token per sequence.
  b.runs.clear();
  for (const SeqChunk& ch : chunks) {
    const bool prefill = ch.n >= kMinPrefillTokens;
    if (!b.runs.empty() && b.runs.back().prefill == prefill) b.runs.back().n += ch.n;
    else b.runs.push_back({ch.n, prefill});
  }
  b.head_runs.assign(1, TokenRun{int64_t(chunks.size()), false});

  // Attention works on blocks of consecutive queries of one sequence.
  constexpr int64_t kQueryBlock = 16;
  b.qblocks.clear();
  {
    int64_t t = 0;
    for (const SeqChunk& ch : chunks) {
      for (int64_t j = 0; j < ch.n; j += kQueryBlock) b.qblocks.emplace_back(t + j, std::min(kQueryBlock, ch.n - j));
      t += ch.n;
    }
  }
  s.x.resize(size_t(n * H) * 4);
  s.h.resize(size_t(n * H) * 4);
  s.qkv.resize(size_t(n * QKV) * 4);
  s.attn.resize(size_t(n * Nq * D) * 4);
  s.tmp.resize(size_t(n * H) * 4);
  s.up.resize(size_t(n * U) * 4);
  s.act.resize(size_t(n * F) * 4);
  if (spec_.num_experts) {
    s.router.resize(size_t(n * spec_.num_experts) * 4);
    s.gathered.resize(size_t(n * H) * 4);
    s.expert_out.resize(size_t(n * H) * 4);
    s.moe_sum.resize(size_t(n * H) * 4);
  }
}

void Model::embed(const Batch& b, Scratch& s) {
  // x = embed[tokens] (+ pos_embed[positions]) (* scale)
  const int64_t H = spec_.hidden_size;
  float* x = s.x.as<float>();
  const Matrix& emb = w_.embed;
  pool_.parallel_for(b.n, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> pos_row;
    for (int64_t t = t0; t < t1; ++t) {
      float* row = x + t * H;
      emb.row(b.tokens[size_t(t)], row);
      if (spec_.learned_positions) {
        pos_row.resize(size_t(H));
        w_.pos_embed.row(b.pos[size_t(t)], pos_row.data());
        for (int64_t i = 0; i < H; ++i) row[i] += pos_row[size_t(i)];
      }
      if (spec_.embed_scale != 1.0f)
        for (int64_t i = 0; i < H; ++i) row[i] *= spec_.embed_scale;
    }
  });
}

void Model::attention_block(int64_t layer, const Batch& b, Scratch& s) {
  // x += post_norm(o(attention(rope(qkv(norm(x))))))
  const LayerWeights& L = w_.layers[size_t(layer)];
  float* x = s.x.as<float>();
  float* h = s.h.as<float>();
  float* qkv = s.qkv.as<float>();
  float* attn = s.attn.as<float>();
  float* tmp = s.tmp.as<float>();
  matmul(pre_norm(b.n, x, L.attn_norm_w, L.attn_norm_b, h), b.runs, L.qkv, L.qkv_b.empty() ? nullptr : L.qkv_b.data(), qkv);
  rope_and_cache(layer, b, s, qkv);
  attention(layer, b, qkv, attn);
  matmul(attn, b.runs, L.o, L.o_b.empty() ? nullptr : L.o_b.data(), tmp);
  if (spec_.post_attn_norm) norm_rows(b.n, tmp, L.attn_post_norm_w, kNoVector, tmp);
  add_residual(x, tmp, b.n);
}

void Model::rope_and_cache(int64_t layer, const Batch& b, const Scratch& s, float* qkv) {
  // Per token: q and k heads normed (qk_norm) and rotated in place; k and v appended to the
  // token's session cache at its position.
  const LayerWeights& L = w_.layers[size_t(layer)];
  const int64_t D = spec_.head_dim, Nq = spec_.num_heads, Nkv = spec_.num_kv_heads;
  const int64_t QKV = (Nq + 2 * Nkv) * D;
  // NoPE layers (rope_layers) do not rotate; sliding-window layers use rope_local when there is one.
  const bool rotates = spec_.rope_layers.empty() || spec_.rope_layers[size_t(layer)];
  const int64_t half = rotates ? spec_.rope.rotary_dim / 2 : 0;
  const bool local = spec_.rope_local.rotary_dim > 0 && spec_.sliding_window[size_t(layer)] > 0;
  const float* cos_t = (local ? s.cos_local : s.cos).as<float>();
  const float* sin_t = (local ? s.sin_local : s.sin).as<float>();
  const float eps = spec_.norm_eps;
  const bool across = spec_.qk_norm && spec_.qk_norm_across_heads;
  pool_.parallel_for(b.n, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* q = qkv + t * QKV;
      float* k = q + Nq * D;
      const float* v = k + Nkv * D;
      if (across) {
        norm_row(NormKind::RMSNorm, q, L.q_norm_w.data(), nullptr, eps, Nq * D, q);
        norm_row(NormKind::RMSNorm, k, L.k_norm_w.data(), nullptr, eps, Nkv * D, k);
      }
      for (int64_t hh = 0; hh < Nq + Nkv; ++hh) {
        float* head = q + hh * D;
        if (spec_.qk_norm && !across)
          norm_row(NormKind::RMSNorm, head, hh < Nq ? L.q_norm_w.data() : L.k_norm_w.data(), nullptr, eps, D, head);
        if (half) rope_head(head, cos_t + t * half, sin_t + t * half, spec_.rope.rotary_dim);
      }
      Session& ses = *b.session[size_t(t)];
      const int64_t pos = b.pos[size_t(t)], cap = ses.capacity_;
      if (ses.pool_) {
        const int64_t T = ses.pool_->block_tokens();
        ses.pool_->write(ses.blocks_[size_t(pos / T)], layer, pos % T, k, v, D);
        continue;
      }
      float* K = ses.k_[size_t(layer)].as<float>();  // K, V: [Nkv, cap, D]
      float* Vc = ses.v_[size_t(layer)].as<float>();
      for (int64_t kh = 0; kh < Nkv; ++kh) {
        std::memcpy(K + (kh * cap + pos) * D, k + kh * D, size_t(D) * 4);
        std::memcpy(Vc + (kh * cap + pos) * D, v + kh * D, size_t(D) * 4);
      }
    }
  });
}

void Model::mlp_block(int64_t layer, const Batch& b, Scratch& s) {
  // x += post_norm(mlp(norm(x))): a dense MLP, or the routed experts (+ a shared one).
  const LayerWeights& L = w_.layers[size_t(layer)];
  float* x = s.x.as<float>();
  float* tmp = s.tmp.as<float>();
  const float* in = pre_norm(b.n, x, L.ffn_norm_w, L.ffn_norm_b, s.h.as<float>());
  if (spec_.num_experts) moe_mlp(layer, b, s, in, tmp);
  else dense_mlp(in, b.runs, b.n, L.up, L.up_b, L.down, L.down_b, spec_.intermediate_size, s, tmp);
  if (spec_.post_ffn_norm) norm_rows(b.n, tmp, L.ffn_post_norm_w, kNoVector, tmp);
  add_residual(x, tmp, b.n);
}

namespace {
// gpt-oss's expert activation (arch.h swiglu_limit), in float as transformers computes it.
void clamped_swiglu(const float* gate, const float* up, float* out, int64_t n, float limit, float alpha) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = std::min(gate[i], limit);
    const float u = std::clamp(up[i], -limit, limit);
    out[i] = (u + 1.0f) * (g / (1.0f + std::exp(-alpha * g)));
  }
}
}  // namespace

void Model::mlp_activation(const float* up, int64_t n, int64_t F, float* act, float swiglu_limit) {
  // act[t] = act(gate) * up (gated: gate and up stacked in each row of U = 2F) or act(up).
  const int64_t U = (spec_.gated_mlp ? 2 : 1) * F;
  pool_.parallel_for(n, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (swiglu_limit > 0) clamped_swiglu(up + t * U, up + t * U + F, act + t * F, F, swiglu_limit, spec_.swiglu_alpha);
      else if (spec_.gated_mlp) kernels_->activate_gated(int(spec_.activation), up + t * U, up + t * U + F, act + t * F, F);
      else {
        std::memcpy(act + t * F, up + t * U, size_t(F) * 4);
        kernels_->activate(int(spec_.activation), act + t * F, F);
      }
    }
  });
}

void Model::dense_mlp(const float* in, const std::vector<TokenRun>& runs, int64_t n, const Matrix& up_w,
                      const Vector& up_b, const Matrix& down_w, const Vector& down_b, int64_t F, Scratch& s, float* out,
                      float swiglu_limit) {
  float* up = s.up.as<float>();
  float* act = s.act.as<float>();
  matmul(in, runs, up_w, up_b.empty() ? nullptr : up_b.data(), up);
  mlp_activation(up, n, F, act, swiglu_limit);
  matmul(act, runs, down_w, down_b.empty() ? nullptr : down_b.data(), out);
}

void Model::moe_mlp(int64_t layer, const Batch& b, Scratch& s, const float* in, float* out) {
  // Route every token (softmax over all experts in float, top-k, optionally renormalised),
  // then run each expert that some token chose over just those tokens, gathered: an expert no
  // token chose is never read, so a decode step reads only the routed experts' weights.
  const LayerWeights& L = w_.layers[size_t(layer)];
  const int64_t n = b.n, H = spec_.hidden_size, E = spec_.num_experts, K = spec_.experts_per_token;
  float* logits = s.router.as<float>();
  matmul(in, b.runs, L.router, L.router_b.empty() ? nullptr : L.router_b.data(), logits);
  s.route_expert.resize(size_t(n * K));
  s.route_weight.resize(size_t(n * K));
  std::vector<float> probs(static_cast<size_t>(E));
  for (int64_t t = 0; t < n; ++t) {
    const float* lg = logits + t * E;
    float mx = lg[0];
    for (int64_t e = 1; e < E; ++e) mx = std::max(mx, lg[e]);
    float sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += probs[size_t(e)] = std::exp(lg[e] - mx);
    for (float& p : probs) p /= sum;
    // Top-k by probability; on a tie the lower expert index first.
    float picked = 0;
    for (int64_t k = 0; k < K; ++k) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e)
        if (probs[size_t(e)] >= 0 && (best < 0 || probs[size_t(e)] > probs[size_t(best)])) best = e;
      s.route_expert[size_t(t * K + k)] = int32_t(best);
      s.route_weight[size_t(t * K + k)] = probs[size_t(best)];
      picked += probs[size_t(best)];
      probs[size_t(best)] = -1.0f;  // taken
    }
    if (spec_.norm_topk_prob)
      for (int64_t k = 0; k < K; ++k) s.route_weight[size_t(t * K + k)] /= picked;
  }
  // Each token keeps its kernel (prefill or decode) inside an expert's gathered batch, so its
  // result does not depend on which other tokens chose the same expert.
  std::vector<uint8_t> prefill(static_cast<size_t>(n));
  {
    int64_t t = 0;
    for (const TokenRun& r : b.runs)
      for (int64_t j = 0; j < r.n; ++j) prefill[size_t(t++)] = r.prefill;
  }
  float* sum = s.moe_sum.as<float>();
  std::fill(sum, sum + n * H, 0.0f);
  // The (token, choice) slots bucketed by expert in one pass, in token order within an expert.
  std::vector<int64_t> start(static_cast<size_t>(E) + 1, 0);
  for (int32_t e : s.route_expert) ++start[size_t(e) + 1];
  for (int64_t e = 0; e < E; ++e) start[size_t(e) + 1] += start[size_t(e)];
  std::vector<int64_t> slots(static_cast<size_t>(n * K));
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n * K; ++i) slots[size_t(next[size_t(s.route_expert[size_t(i)])]++)] = i;
  }
  // Decode tokens only, quantized experts: every routed expert's products in one pass over
  // the pool (moe_decode), the same results as one expert at a time.
  const bool decode_only = std::find(prefill.begin(), prefill.end(), uint8_t(1)) == prefill.end();
  if (decode_only && L.expert_up[0].quantized() && L.expert_down[0].quantized()) {
    moe_decode(L, s, in, start, slots, sum);
  } else {
    moe_per_expert(L, s, in, start, slots, prefill, sum);
  }
  if (spec_.shared_expert_size > 0) {
    float* y = s.expert_out.as<float>();  // after the experts: moe_decode may have grown it
    dense_mlp(in, b.runs, n, L.up, L.up_b, L.down, L.down_b, spec_.shared_expert_size, s, y);
    if (spec_.shared_expert_gate) {
      std::vector<float> gate(static_cast<size_t>(n));
      matmul(in, b.runs, L.shared_gate, nullptr, gate.data());
      for (int64_t t = 0; t < n; ++t) {
        const float g = 1.0f / (1.0f + std::exp(-gate[size_t(t)]));
        for (int64_t c = 0; c < H; ++c) sum[t * H + c] += g * y[t * H + c];
      }
    } else {
      for (int64_t i = 0; i < n * H; ++i) sum[i] += y[i];
    }
  }
  std::memcpy(out, sum, size_t(n * H) * 4);
}

void Model::moe_per_expert(const LayerWeights& L, Scratch& s, const float* in, const std::vector<int64_t>& start,
                           const std::vector<int64_t>& slots, const std::vector<uint8_t>& prefill, float* sum) {
  // Each expert that some token chose, over just those tokens gathered, one after another.
  const int64_t H = spec_.hidden_size, E = spec_.num_experts, K = spec_.experts_per_token;
  float* gathered = s.gathered.as<float>();
  float* y = s.expert_out.as<float>();
  std::vector<int64_t> rows;
  std::vector<float> weights;
  std::vector<TokenRun> runs;
  for (int64_t e = 0; e < E; ++e) {
    rows.clear();
    weights.clear();
    for (int64_t j = start[size_t(e)]; j < start[size_t(e) + 1]; ++j) {
      rows.push_back(slots[size_t(j)] / K);
      weights.push_back(s.route_weight[size_t(slots[size_t(j)])]);
    }
    if (rows.empty()) continue;
    runs.clear();
    for (size_t i = 0; i < rows.size(); ++i) {
      const bool p = prefill[size_t(rows[i])];
      if (!runs.empty() && runs.back().prefill == p) ++runs.back().n;
      else runs.push_back({1, p});
      std::memcpy(gathered + int64_t(i) * H, in + rows[i] * H, size_t(H) * 4);
    }
    const bool eb = spec_.expert_bias;
    dense_mlp(gathered, runs, int64_t(rows.size()), L.expert_up[size_t(e)], eb ? L.expert_up_b[size_t(e)] : kNoVector,
              L.expert_down[size_t(e)], eb ? L.expert_down_b[size_t(e)] : kNoVector, spec_.expert_intermediate_size,
              s, y, spec_.swiglu_limit);
    for (size_t i = 0; i < rows.size(); ++i) {
      float* dst = sum + rows[i] * H;
      const float* src = y + int64_t(i) * H;
      for (int64_t c = 0; c < H; ++c) dst[c] += weights[i] * src[c];
    }
  }
}

void Model::moe_decode(const LayerWeights& L, Scratch& s, const float* in, const std::vector<int64_t>& start,
                       const std::vector<int64_t>& slots, float* sum) {
  // Every (token, choice) slot's input gathered by expert into one matrix [slots, H]; the
  // routed experts' gate|up products as one group of row-kernel jobs, the activation over all
  // slots, the down products as another group, then each slot's output weighted into its
  // token's sum. Two pool passes for the products instead of two per routed expert.
  const int64_t H = spec_.hidden_size, E = spec_.num_experts, K = spec_.experts_per_token;
  const int64_t F = spec_.expert_intermediate_size, U = (spec_.gated_mlp ? 2 : 1) * F;
  const int64_t m = int64_t(slots.size());
  s.gathered.resize(size_t(m * H) * 4);
  s.up.resize(size_t(m * U) * 4);
  s.act.resize(size_t(m * F) * 4);
  s.expert_out.resize(size_t(m * H) * 4);
  float* gathered = s.gathered.as<float>();
  float* up = s.up.as<float>();
  float* act = s.act.as<float>();
  float* y = s.expert_out.as<float>();
  const bool eb = spec_.expert_bias;
  std::vector<QuantJob> ups, downs;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t j0 = start[size_t(e)], cnt = start[size_t(e) + 1] - j0;
    if (cnt == 0) continue;
    for (int64_t j = j0; j < j0 + cnt; ++j)
      std::memcpy(gathered + j * H, in + (slots[size_t(j)] / K) * H, size_t(H) * 4);
    ups.push_back({L.expert_up[size_t(e)].qview(), j0, cnt, eb ? L.expert_up_b[size_t(e)].data() : nullptr,
                   up + j0 * U});
    downs.push_back({L.expert_down[size_t(e)].qview(), j0, cnt, eb ? L.expert_down_b[size_t(e)].data() : nullptr,
                     y + j0 * H});
  }
  check_cancel();
  quantized_matmul_group(*kernels_, pool_, qscratch_, gathered, m, ups);
  mlp_activation(up, m, F, act, spec_.swiglu_limit);
  quantized_matmul_group(*kernels_, pool_, qscratch_, act, m, downs);
  for (int64_t j = 0; j < m; ++j) {
    float* dst = sum + (slots[size_t(j)] / K) * H;
    const float* src = y + j * H;
    const float wt = s.route_weight[size_t(slots[size_t(j)])];
    for (int64_t c = 0; c < H; ++c) dst[c] += wt * src[c];
  }
}

void Model::head(const std::vector<SeqChunk>& chunks, const Batch& b, Scratch& s, float* logits, bool all_logits) {
  // Final norm and LM head, on every row or on each chunk's last row: logits [rows, V].
  const int64_t H = spec_.hidden_size;
  const float* x = s.x.as<float>();
  float* h = s.h.as<float>();
  int64_t rows = 0;
  {
    int64_t t = 0;
    for (const SeqChunk& ch : chunks) {
      for (int64_t j = 0; j < ch.n; ++j, ++t) {
        if (!all_logits && j != ch.n - 1) continue;
        norm_row(spec_.norm, x + t * H, w_.final_norm_w.data(),
                 w_.final_norm_b.empty() ? nullptr : w_.final_norm_b.data(), spec_.norm_eps, H, h + rows * H);
        ++rows;
      }
    }
  }
  matmul(h, all_logits ? b.runs : b.head_runs, w_.output_matrix(), nullptr, logits);
  if (spec_.logit_scale != 1.0f)
    for (int64_t i = 0; i < rows * spec_.vocab_size; ++i) logits[i] *= spec_.logit_scale;
  if (spec_.final_softcap > 0) {
    const float c = spec_.final_softcap;
    for (int64_t i = 0; i < rows * spec_.vocab_size; ++i) logits[i] = std::tanh(logits[i] / c) * c;
  }
}

const float* Model::pre_norm(int64_t n, const float* x, const Vector& w, const Vector& b, float* h) {
  // The input of a block: norm(x) into h, or x itself where the family has no pre-norm (OLMo 2).
  if (!spec_.pre_norm) return x;
  norm_rows(n, x, w, b, h);
  return h;
}

void Model::add_residual(float* x, float* out, int64_t n) {
  // x += out (* residual_scale: Granite)
  const int64_t size = n * spec_.hidden_size;
  if (spec_.residual_scale != 1.0f)
    for (int64_t i = 0; i < size; ++i) out[i] *= spec_.residual_scale;
  add_rows(x, out, size);
}

void Model::norm_rows(int64_t n, const float* in, const Vector& w, const Vector& b, float* out) {
  // out[t] = norm(in[t]) for t < n rows of H; in == out is allowed.
  const int64_t H = spec_.hidden_size;
  const NormKind nk = spec_.norm;
  const float eps = spec_.norm_eps;
  pool_.parallel_for(n, 4, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      norm_row(nk, in + t * H, w.data(), b.empty() ? nullptr : b.data(), eps, H, out + t * H);
  });
}

}  // namespace llmos
