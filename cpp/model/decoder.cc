#include "model/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "core/errors.h"
#include "kernels/ops.h"

namespace llmos {

// Dimension names used below: n = tokens in this call, H = hidden_size, D = head_dim,
// Nq / Nkv = query / key-value heads, QKV = (Nq + 2 Nkv) * D, F = intermediate_size.

Session::Session(const Model& model) : spec_(&model.spec()) {
  k_.resize(size_t(spec_->n_layers));
  v_.resize(size_t(spec_->n_layers));
}

void Session::reserve(int64_t n_total) {
  if (n_total <= capacity_) return;
  int64_t cap = std::max<int64_t>(n_total, std::min<int64_t>(2 * capacity_, spec_->max_positions));
  cap = std::max<int64_t>(cap, 16);
  const int64_t D = spec_->head_dim, Nkv = spec_->n_kv_heads;
  for (int64_t l = 0; l < spec_->n_layers; ++l) {
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

Model::Model(ArchSpec spec, ModelWeights weights, int n_threads)
    : spec_(std::move(spec)), w_(std::move(weights)), pool_(n_threads), kernels_(&llmos::kernels()) {
  spec_.validate();
}

void Model::matmul(const float* x, int64_t n, const Matrix& w, const float* bias, float* y) {
  // y: [n, rows]. Threads split the output rows; each walks the tokens in blocks so a
  // block of x stays in cache while the thread's rows pass over it.
  const MatmulRowsFn fn = matmul_for(*kernels_, w.dtype);
  const int64_t rows = w.rows, k = w.cols;
  const int64_t grain = std::max<int64_t>(16, ((rows / (pool_.size() * 8)) + 3) & ~int64_t(3));
  constexpr int64_t kTokenBlock = 64;
  const void* wd = w.data.data();
  pool_.parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t t = 0; t < n; t += kTokenBlock) {
      const int64_t nt = std::min(kTokenBlock, n - t);
      fn(x + t * k, nt, k, wd, r0, r1, y + t * rows + r0, rows);
      if (bias)
        for (int64_t i = t; i < t + nt; ++i)
          for (int64_t r = r0; r < r1; ++r) y[i * rows + r] += bias[r];
    }
  });
}

void Model::rope_tables(Session& s, int64_t n) {
  const RopeSpec& rope = spec_.rope;
  const int64_t half = rope.rotary_dim / 2;
  if (half == 0) return;
  const int64_t seq_len = s.n_past_ + n;  // transformers: max(position_ids) + 1
  std::vector<float> dyn;
  const float* inv = rope.inv_freq.data();
  if (!rope.inv_freq_long.empty() && seq_len > rope.long_after) inv = rope.inv_freq_long.data();
  if (rope.dynamic && seq_len > rope.dynamic_max_positions) {
    const double dim = double(rope.rotary_dim);
    const double f = rope.dynamic_factor;
    const double base = rope.dynamic_base *
                        std::pow(f * double(seq_len) / double(rope.dynamic_max_positions) - (f - 1.0), dim / (dim - 2.0));
    dyn.resize(size_t(half));
    for (int64_t i = 0; i < half; ++i)
      dyn[size_t(i)] = float(1.0 / std::pow(base, double(float(2 * i) / float(dim))));
    inv = dyn.data();
  }
  s.cos_.resize(size_t(n * half) * sizeof(float));
  s.sin_.resize(size_t(n * half) * sizeof(float));
  float* c = s.cos_.as<float>();
  float* sn = s.sin_.as<float>();
  for (int64_t t = 0; t < n; ++t) {
    const float pos = float(s.n_past_ + t);
    for (int64_t i = 0; i < half; ++i) {
      const float a = pos * inv[i];
      c[t * half + i] = std::cos(a) * rope.attention_scaling;
      sn[t * half + i] = std::sin(a) * rope.attention_scaling;
    }
  }
}

void Model::attention(Session& s, int64_t layer, const float* qkv, int64_t n, float* out) {
  const int64_t D = spec_.head_dim, Nq = spec_.n_heads, Nkv = spec_.n_kv_heads;
  const int64_t QKV = (Nq + 2 * Nkv) * D, group = Nq / Nkv, cap = s.capacity_;
  const int64_t window = spec_.sliding_window[size_t(layer)];
  const float scale = spec_.attn_scale > 0 ? spec_.attn_scale : 1.0f / std::sqrt(float(D));
  const float cap_soft = spec_.attn_softcap;
  const float* K = s.k_[size_t(layer)].as<float>();
  const float* V = s.v_[size_t(layer)].as<float>();
  const KernelTable& kt = *kernels_;
  pool_.parallel_for(n * Nq, 1, [&](int64_t b, int64_t e) {
    // Scores of one query against its keys; per thread, grown once.
    thread_local std::vector<float> scores;
    for (int64_t task = b; task < e; ++task) {
      const int64_t t = task / Nq, h = task % Nq, kvh = h / group;
      const int64_t pos = s.n_past_ + t;
      const int64_t start = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
      const int64_t len = pos - start + 1;
      if (int64_t(scores.size()) < len) scores.resize(size_t(len));
      const float* q = qkv + t * QKV + h * D;
      const float* kh = K + kvh * cap * D;
      const float* vh = V + kvh * cap * D;
      for (int64_t j = 0; j < len; ++j) {
        float sc = kt.dot(q, kh + (start + j) * D, D) * scale;
        if (cap_soft > 0) sc = std::tanh(sc / cap_soft) * cap_soft;
        scores[size_t(j)] = sc;
      }
      softmax(scores.data(), len);
      float* o = out + t * Nq * D + h * D;
      std::fill(o, o + D, 0.f);
      for (int64_t j = 0; j < len; ++j) kt.axpy(o, scores[size_t(j)], vh + (start + j) * D, D);
    }
  });
}

void Model::forward(Session& s, const int32_t* tokens, int64_t n, float* logits, bool all_logits) {
  if (n <= 0) throw Error(Error::Kind::InvalidInput, "", "token_ids", "needs at least one token");
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= spec_.vocab_size)
      throw Error(Error::Kind::InvalidInput, "", "token_ids",
                  "token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                      " is outside the vocabulary [0, " + std::to_string(spec_.vocab_size) + ")");
  if (s.n_past_ + n > spec_.max_positions)
    throw Error(Error::Kind::Context, "", "token_ids",
                "sequence of " + std::to_string(s.n_past_ + n) + " tokens exceeds the context of " +
                    std::to_string(spec_.max_positions));
  if (s.spec_ != &spec_) throw Error(Error::Kind::InvalidInput, "", "session", "belongs to another model");

  std::lock_guard<std::mutex> lock(mu_);
  // longrope switches to the long factors once the sequence outgrows long_after. Keys
  // cached before the switch were rotated with the short ones, so, as transformers does
  // for Phi-3, the whole sequence is run again when a forward crosses the threshold.
  const RopeSpec& rope = spec_.rope;
  if (!rope.inv_freq_long.empty() && s.n_past_ > 0 && s.n_past_ <= rope.long_after &&
      s.n_past_ + n > rope.long_after) {
    std::vector<int32_t> all = s.history_;
    all.insert(all.end(), tokens, tokens + n);
    const int64_t n_old = int64_t(s.history_.size());
    s.reset();
    if (!all_logits) {
      forward_locked(s, all.data(), int64_t(all.size()), logits, false);
      return;
    }
    std::vector<float> full(size_t(all.size()) * size_t(spec_.vocab_size));
    forward_locked(s, all.data(), int64_t(all.size()), full.data(), true);
    std::memcpy(logits, full.data() + size_t(n_old) * size_t(spec_.vocab_size),
                size_t(n) * size_t(spec_.vocab_size) * sizeof(float));
    return;
  }
  forward_locked(s, tokens, n, logits, all_logits);
}

void Model::forward_locked(Session& s, const int32_t* tokens, int64_t n, float* logits, bool all_logits) {
  const int64_t H = spec_.hidden_size, D = spec_.head_dim, Nq = spec_.n_heads, Nkv = spec_.n_kv_heads;
  const int64_t QKV = (Nq + 2 * Nkv) * D, F = spec_.intermediate_size;
  const int64_t U = (spec_.gated_mlp ? 2 : 1) * F;
  s.reserve(s.n_past_ + n);
  const int64_t cap = s.capacity_;

  s.x_.resize(size_t(n * H) * 4);
  s.h_.resize(size_t(n * H) * 4);
  s.qkv_.resize(size_t(n * QKV) * 4);
  s.attn_.resize(size_t(n * Nq * D) * 4);
  s.tmp_.resize(size_t(n * H) * 4);
  s.up_.resize(size_t(n * U) * 4);
  s.act_.resize(size_t(n * F) * 4);
  float* x = s.x_.as<float>();      // x: [n, H] residual stream
  float* h = s.h_.as<float>();      // h: [n, H] normed input of a block
  float* qkv = s.qkv_.as<float>();  // qkv: [n, QKV]
  float* attn = s.attn_.as<float>();  // attn: [n, Nq * D]
  float* tmp = s.tmp_.as<float>();  // tmp: [n, H] block output
  float* up = s.up_.as<float>();    // up: [n, U]
  float* act = s.act_.as<float>();  // act: [n, F]

  // Embedding (+ learned positions) (* scale).
  const Matrix& emb = w_.embed;
  pool_.parallel_for(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      float* row = x + t * H;
      const int64_t tok = tokens[t];
      if (emb.dtype == DType::F32) std::memcpy(row, emb.data.as<float>() + tok * H, size_t(H) * 4);
      else {
        const uint16_t* src = emb.data.as<uint16_t>() + tok * H;
        for (int64_t i = 0; i < H; ++i)
          row[i] = emb.dtype == DType::BF16 ? bf16_to_f32(src[i]) : f16_to_f32(src[i]);
      }
      if (spec_.learned_positions) {
        const Matrix& pe = w_.pos_embed;
        const int64_t p = s.n_past_ + t;
        for (int64_t i = 0; i < H; ++i) {
          const int64_t j = p * H + i;
          row[i] += pe.dtype == DType::F32 ? pe.data.as<float>()[j]
                    : pe.dtype == DType::BF16 ? bf16_to_f32(pe.data.as<uint16_t>()[j])
                                              : f16_to_f32(pe.data.as<uint16_t>()[j]);
        }
      }
      if (spec_.embed_scale != 1.0f)
        for (int64_t i = 0; i < H; ++i) row[i] *= spec_.embed_scale;
    }
  });

  rope_tables(s, n);
  const int64_t half = spec_.rope.rotary_dim / 2;
  const float* cos_t = s.cos_.as<float>();
  const float* sin_t = s.sin_.as<float>();
  const float eps = spec_.norm_eps;
  const NormKind nk = spec_.norm;
  auto norm_rows = [&](const float* in, const Vector& w, const Vector& b, float* out) {
    pool_.parallel_for(n, 4, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        norm_row(nk, in + t * H, w.data(), b.empty() ? nullptr : b.data(), eps, H, out + t * H);
    });
  };
  auto add_rows = [&](float* dst, const float* src) {
    for (int64_t i = 0; i < n * H; ++i) dst[i] += src[i];
  };

  for (int64_t l = 0; l < spec_.n_layers; ++l) {
    const LayerWeights& L = w_.layers[size_t(l)];
    // Attention block.
    norm_rows(x, L.attn_norm_w, L.attn_norm_b, h);
    matmul(h, n, L.qkv, L.qkv_b.empty() ? nullptr : L.qkv_b.data(), qkv);
    float* K = s.k_[size_t(l)].as<float>();  // K, V: [Nkv, cap, D]
    float* V = s.v_[size_t(l)].as<float>();
    pool_.parallel_for(n, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        float* q = qkv + t * QKV;
        float* k = q + Nq * D;
        const float* v = k + Nkv * D;
        for (int64_t hh = 0; hh < Nq + Nkv; ++hh) {
          float* head = q + hh * D;
          if (spec_.qk_norm)
            norm_row(NormKind::RMSNorm, head, hh < Nq ? L.q_norm_w.data() : L.k_norm_w.data(), nullptr, eps, D, head);
          if (half) rope_head(head, cos_t + t * half, sin_t + t * half, spec_.rope.rotary_dim);
        }
        const int64_t pos = s.n_past_ + t;
        for (int64_t kh = 0; kh < Nkv; ++kh) {
          std::memcpy(K + (kh * cap + pos) * D, k + kh * D, size_t(D) * 4);
          std::memcpy(V + (kh * cap + pos) * D, v + kh * D, size_t(D) * 4);
        }
      }
    });
    attention(s, l, qkv, n, attn);
    matmul(attn, n, L.o, L.o_b.empty() ? nullptr : L.o_b.data(), tmp);
    if (spec_.post_attn_norm) norm_rows(tmp, L.attn_post_norm_w, Vector(), tmp);
    add_rows(x, tmp);

    // MLP block.
    norm_rows(x, L.ffn_norm_w, L.ffn_norm_b, h);
    matmul(h, n, L.up, L.up_b.empty() ? nullptr : L.up_b.data(), up);
    pool_.parallel_for(n, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        if (spec_.gated_mlp) activate_gated(spec_.act, up + t * U, up + t * U + F, act + t * F, F);
        else {
          std::memcpy(act + t * F, up + t * U, size_t(F) * 4);
          activate(spec_.act, act + t * F, F);
        }
      }
    });
    matmul(act, n, L.down, L.down_b.empty() ? nullptr : L.down_b.data(), tmp);
    if (spec_.post_ffn_norm) norm_rows(tmp, L.ffn_post_norm_w, Vector(), tmp);
    add_rows(x, tmp);
  }
  s.n_past_ += n;
  if (!spec_.rope.inv_freq_long.empty()) s.history_.insert(s.history_.end(), tokens, tokens + n);

  // Final norm and LM head, on every row or only the last.
  const int64_t first = all_logits ? 0 : n - 1, rows = n - first;
  for (int64_t t = first; t < n; ++t)
    norm_row(nk, x + t * H, w_.final_norm_w.data(), w_.final_norm_b.empty() ? nullptr : w_.final_norm_b.data(), eps, H,
             h + (t - first) * H);
  matmul(h, rows, w_.output_matrix(), nullptr, logits);
  if (spec_.final_softcap > 0) {
    const float c = spec_.final_softcap;
    for (int64_t i = 0; i < rows * spec_.vocab_size; ++i) logits[i] = std::tanh(logits[i] / c) * c;
  }
}

}  // namespace llmos
