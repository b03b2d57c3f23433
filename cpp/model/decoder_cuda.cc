// The forward pass on the GPU (decoder_cuda.h): Model::forward_locked's steps on the CUDA ops.
#include "model/decoder_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/errors.h"
#include "model/decoder.h"

namespace llmos {

namespace {

// Tokens per piece: the activations are sized for this many; longer inputs run in pieces.
constexpr int64_t kPiece = 256;

[[noreturn]] void refuse(const std::string& why) { throw Error(Error::Kind::InvalidInput, "", "device", why); }

}  // namespace

std::string CudaDecoder::unsupported(const Architecture& spec) {
  const std::string f = spec.family + ": ";
  if (spec.num_experts) return f + "mixture-of-experts models do not run on the GPU yet";
  if (spec.attn_sinks) return f + "attention sinks (gpt-oss) do not run on the GPU yet";
  if (spec.learned_positions) return f + "learned position embeddings (GPT-2) do not run on the GPU yet";
  if (spec.rope.dynamic) return f + "dynamic NTK rope does not run on the GPU yet";
  if (!spec.rope.inv_freq_long.empty()) return f + "longrope does not run on the GPU yet";
  if (spec.head_dim > cuda::kMaxAttentionHeadDim)
    return f + "head_dim " + std::to_string(spec.head_dim) + " exceeds the GPU attention's " +
           std::to_string(cuda::kMaxAttentionHeadDim);
  if (spec.swiglu_limit > 0) return f + "the clamped SwiGLU does not run on the GPU yet";
  return "";
}

CudaDecoder::CudaDecoder(const Architecture& spec, const ModelWeights& w, int device)
    : spec_(spec), host_(w), device_(device) {
  const std::string why = unsupported(spec);
  if (!why.empty()) refuse(why);
  cuda::set_device(device);
  const char* graphs = std::getenv("LLMOS_CUDA_GRAPHS");
  graphs_ = !(graphs && std::string(graphs) == "0");
  pos_ = cuda::DeviceBuffer(2 * sizeof(int64_t));
  layers_.reserve(w.layers.size());
  for (const LayerWeights& L : w.layers) {
    DLayer d;
    d.attn_norm_w = upload(L.attn_norm_w);
    d.attn_norm_b = upload(L.attn_norm_b);
    d.qkv = upload(L.qkv);
    d.qkv_b = upload(L.qkv_b);
    d.q_norm_w = upload(L.q_norm_w);
    d.k_norm_w = upload(L.k_norm_w);
    d.o = upload(L.o);
    d.o_b = upload(L.o_b);
    d.attn_post_norm_w = upload(L.attn_post_norm_w);
    d.ffn_norm_w = upload(L.ffn_norm_w);
    d.ffn_norm_b = upload(L.ffn_norm_b);
    d.up = upload(L.up);
    d.up_b = upload(L.up_b);
    d.down = upload(L.down);
    d.down_b = upload(L.down_b);
    d.ffn_post_norm_w = upload(L.ffn_post_norm_w);
    layers_.push_back(std::move(d));
  }
  final_norm_w_ = upload(w.final_norm_w);
  final_norm_b_ = upload(w.final_norm_b);
  lm_head_ = upload(w.output_matrix());
  cuda::synchronize();
  stream_ = cuda::stream_create();  // last: nothing after it throws, so the destructor frees it
}

CudaDecoder::~CudaDecoder() { cuda::stream_destroy(stream_); }

CudaDecoder::DMatrix CudaDecoder::upload(const Matrix& m) {
  DMatrix d;
  d.dtype = m.dtype, d.qtype = m.qtype, d.rows = m.rows, d.cols = m.cols, d.group = m.group;
  if (m.empty()) return d;
  // The products need 16-byte rows for the vector loads: every format's rows are, except
  // float rows of odd widths, which the GEMV kernels take on their scalar path.
  d.data = cuda::DeviceBuffer(m.data.size());
  cuda::copy_to_device(d.data.data(), m.data.data(), m.data.size());
  weight_bytes_ += int64_t(m.data.size());
  if (m.quantized()) {
    d.scale = cuda::DeviceBuffer(m.scale.size());
    cuda::copy_to_device(d.scale.data(), m.scale.data(), m.scale.size());
    weight_bytes_ += int64_t(m.scale.size());
    if (m.qtype == QuantType::Q4Asym) {
      d.min = cuda::DeviceBuffer(m.min.size());
      cuda::copy_to_device(d.min.data(), m.min.data(), m.min.size());
      weight_bytes_ += int64_t(m.min.size());
    }
  }
  return d;
}

cuda::DeviceBuffer CudaDecoder::upload(const Vector& v) {
  if (v.empty()) return cuda::DeviceBuffer();
  cuda::DeviceBuffer d(v.size() * sizeof(float));
  cuda::copy_to_device(d.data(), v.data(), v.size() * sizeof(float));
  return d;
}

void CudaDecoder::matmul(const DMatrix& w, const float* x, int64_t n, const cuda::DeviceBuffer& bias, float* y) {
  // y [n, rows] = x [n, cols] W^T (+ bias), in runs of the GEMV kernels' token limit.
  for (int64_t t0 = 0; t0 < n; t0 += cuda::kMaxGemvTokens) {
    const int64_t m = std::min(cuda::kMaxGemvTokens, n - t0);
    const float* xr = x + t0 * w.cols;
    float* yr = y + t0 * w.rows;
    if (w.qtype != QuantType::None) {
      const QView v{w.qtype, w.rows, w.cols, w.group, w.data.as<uint8_t>(), w.scale.as<uint16_t>(),
                    w.qtype == QuantType::Q4Asym ? w.min.as<uint16_t>() : nullptr};
      cuda::gemv_quant(v, xr, m, yr, w.rows, stream_);
    } else if (w.dtype == DType::F32) {
      cuda::gemv_float(w.data.as<float>(), w.rows, w.cols, xr, m, yr, w.rows, stream_);
    } else {
      cuda::gemv_half(w.dtype, w.data.as<uint16_t>(), w.rows, w.cols, xr, m, yr, w.rows, stream_);
    }
  }
  if (bias.data()) cuda::add_bias(y, n, w.rows, w.rows, bias.as<float>(), stream_);
}

void CudaDecoder::norm(int64_t n, const float* x, const cuda::DeviceBuffer& w, const cuda::DeviceBuffer& b,
                       float* out) {
  const int64_t H = spec_.hidden_size;
  cuda::norm_rows(x, H, n, 1, H, w.as<float>(), b.as<float>(), spec_.norm_eps, spec_.norm == NormKind::LayerNorm, out,
                  stream_);
}

void CudaDecoder::scratch(int64_t n) {
  if (n <= scratch_tokens_) return;
  const int64_t H = spec_.hidden_size, D = spec_.head_dim, Nq = spec_.num_heads, Nkv = spec_.num_kv_heads;
  const int64_t F = spec_.intermediate_size, U = (spec_.gated_mlp ? 2 : 1) * F;
  const int64_t half = std::max<int64_t>(1, std::max(spec_.rope.rotary_dim, spec_.rope_local.rotary_dim) / 2);
  auto floats = [](int64_t k) { return cuda::DeviceBuffer(size_t(k) * sizeof(float)); };
  x_ = floats(n * H), h_ = floats(n * H), qkv_ = floats(n * (Nq + 2 * Nkv) * D), attn_ = floats(n * Nq * D);
  tmp_ = floats(n * H), up_ = floats(n * U), act_ = floats(n * F), logits_ = floats(n * spec_.vocab_size);
  cos_ = floats(n * half), sin_ = floats(n * half), cos_local_ = floats(n * half), sin_local_ = floats(n * half);
  scratch_tokens_ = n;
  ++buffers_;  // every captured step read the old ones
}

void CudaDecoder::reserve(CudaKv& kv, int64_t n_past, int64_t n_total) {
  // Grows by doubling, as Session::reserve on the host; the first n_past positions move over.
  const int64_t D = spec_.head_dim, Nkv = spec_.num_kv_heads, L = spec_.num_layers;
  if (n_total > kv.capacity) {
    int64_t cap = std::max<int64_t>(n_total, std::min<int64_t>(2 * kv.capacity, spec_.max_position_embeddings));
    cap = std::max<int64_t>(cap, 256);
    cap = std::min<int64_t>(cap, std::max(n_total, spec_.max_position_embeddings));
    std::vector<cuda::DeviceBuffer> k(static_cast<size_t>(L)), v(static_cast<size_t>(L));
    for (int64_t l = 0; l < L; ++l) {
      k[size_t(l)] = cuda::DeviceBuffer(size_t(Nkv * cap * D) * sizeof(float));
      v[size_t(l)] = cuda::DeviceBuffer(size_t(Nkv * cap * D) * sizeof(float));
      for (int64_t h = 0; h < Nkv && n_past > 0; ++h) {
        const size_t bytes = size_t(n_past * D) * sizeof(float);
        cuda::copy_on_device(k[size_t(l)].as<float>() + h * cap * D, kv.k[size_t(l)].as<float>() + h * kv.capacity * D,
                             bytes);
        cuda::copy_on_device(v[size_t(l)].as<float>() + h * cap * D, kv.v[size_t(l)].as<float>() + h * kv.capacity * D,
                             bytes);
      }
    }
    kv.k = std::move(k), kv.v = std::move(v), kv.capacity = cap;
  }
  if (n_total > attn_ws_len_) {
    const int64_t len = std::max<int64_t>(n_total, kv.capacity);
    attn_ws_ = cuda::DeviceBuffer(size_t(cuda::attention_workspace_floats(spec_.num_heads, D, len)) * sizeof(float));
    attn_ws_len_ = len;
    ++buffers_;
  }
}

void CudaDecoder::copy_cache(CudaKv& dst, const CudaKv& src, int64_t n) const {
  const int64_t D = spec_.head_dim, Nkv = spec_.num_kv_heads, L = spec_.num_layers;
  cuda::set_device(device_);
  if (dst.capacity < n || dst.k.size() != size_t(L)) {
    dst.k.clear();
    dst.v.clear();
    dst.k.resize(static_cast<size_t>(L));
    dst.v.resize(static_cast<size_t>(L));
    for (int64_t l = 0; l < L; ++l) {
      dst.k[size_t(l)] = cuda::DeviceBuffer(size_t(Nkv * src.capacity * D) * sizeof(float));
      dst.v[size_t(l)] = cuda::DeviceBuffer(size_t(Nkv * src.capacity * D) * sizeof(float));
    }
    dst.capacity = src.capacity;
  }
  for (int64_t l = 0; l < L; ++l)
    for (int64_t h = 0; h < Nkv; ++h) {
      const size_t bytes = size_t(n * D) * sizeof(float);
      cuda::copy_on_device(dst.k[size_t(l)].as<float>() + h * dst.capacity * D,
                           src.k[size_t(l)].as<float>() + h * src.capacity * D, bytes);
      cuda::copy_on_device(dst.v[size_t(l)].as<float>() + h * dst.capacity * D,
                           src.v[size_t(l)].as<float>() + h * src.capacity * D, bytes);
    }
}

void CudaDecoder::forward(const std::vector<SeqChunk>& chunks, float* logits, bool all_logits, CancelCheck* cancel) {
  cuda::set_device(device_);
  const int64_t V = spec_.vocab_size;
  float* out = logits;
  for (const SeqChunk& ch : chunks) {
    Session& s = *ch.session;
    if (s.pool_) refuse("the serving engine's paged KV cache does not run on the GPU yet");
    if (!s.cuda_kv_) s.cuda_kv_ = std::make_shared<CudaKv>();
    reserve(*s.cuda_kv_, s.n_past_, s.n_past_ + ch.n);
    for (int64_t off = 0; off < ch.n; off += kPiece) {
      const int64_t n = std::min(kPiece, ch.n - off);
      const bool last = off + n == ch.n;
      float* piece_logits = all_logits ? out + off * V : (last ? out : nullptr);
      piece(*s.cuda_kv_, ch.tokens + off, n, s.n_past_, piece_logits, all_logits, cancel);
      s.n_past_ += n;
      if (s.cacheable_ == s.n_past_ - n) s.cacheable_ = s.n_past_;
    }
    out += (all_logits ? ch.n : 1) * V;
  }
}

void CudaDecoder::piece(CudaKv& kv, const int32_t* tokens, int64_t n, int64_t pos0, float* logits, bool all_logits,
                        CancelCheck* cancel) {
  scratch(n);
  if (cancel) (*cancel)();
  upload_inputs(tokens, n, pos0);
  if (n == 1 && logits && graphs_) {
    decode_step(kv);
  } else {
    layers(kv, n, pos0, nullptr, cancel);
    if (!logits) {
      cuda::stream_synchronize(stream_);
      return;
    }
    head(n, all_logits ? n : 1);
  }
  const int64_t rows = all_logits ? n : 1;
  // A synchronous copy on the legacy stream: it waits for the step's work on stream_.
  cuda::copy_to_host(logits, logits_.data(), size_t(rows * spec_.vocab_size) * sizeof(float));
}

void CudaDecoder::decode_step(CudaKv& kv) {
  if (!kv.step || kv.step_k0 != kv.k[0].data() || kv.step_capacity != kv.capacity || kv.step_buffers != buffers_) {
    cuda::graph_destroy(kv.step);
    kv.step = nullptr;
    cuda::stream_synchronize(stream_);
    cuda::capture_begin(stream_);
    try {
      layers(kv, 1, 0, pos_.as<int64_t>(), nullptr);
      head(1, 1);
    } catch (...) {
      cuda::capture_abort(stream_);
      throw;
    }
    kv.step = cuda::capture_end(stream_);
    kv.step_k0 = kv.k[0].data();
    kv.step_capacity = kv.capacity;
    kv.step_buffers = buffers_;
  }
  cuda::graph_launch(kv.step, stream_);
}

void CudaDecoder::upload_inputs(const int32_t* tokens, int64_t n, int64_t pos0) {
  const int64_t H = spec_.hidden_size;
  // x = embed[tokens] * scale, made on the host (one row per token) and copied up.
  host_rows_.resize(size_t(n * H));
  for (int64_t t = 0; t < n; ++t) {
    float* row = host_rows_.data() + t * H;
    host_.embed.row(tokens[t], row);
    if (spec_.embed_scale != 1.0f)
      for (int64_t i = 0; i < H; ++i) row[i] *= spec_.embed_scale;
  }
  cuda::copy_to_device(x_.data(), host_rows_.data(), host_rows_.size() * sizeof(float));

  // The rope tables of the piece's positions, as Model::rope_tables computes them.
  auto tables = [&](const Rope& rope, cuda::DeviceBuffer& c, cuda::DeviceBuffer& sn) {
    const int64_t half = rope.rotary_dim / 2;
    if (half == 0) return;
    host_cos_.resize(size_t(n * half));
    host_sin_.resize(size_t(n * half));
    for (int64_t t = 0; t < n; ++t) {
      const float pos = float(pos0 + t);
      for (int64_t i = 0; i < half; ++i) {
        const float a = pos * rope.inv_freq[size_t(i)];
        host_cos_[size_t(t * half + i)] = std::cos(a) * rope.attention_scaling;
        host_sin_[size_t(t * half + i)] = std::sin(a) * rope.attention_scaling;
      }
    }
    cuda::copy_to_device(c.data(), host_cos_.data(), host_cos_.size() * sizeof(float));
    cuda::copy_to_device(sn.data(), host_sin_.data(), host_sin_.size() * sizeof(float));
  };
  tables(spec_.rope, cos_, sin_);
  tables(spec_.rope_local, cos_local_, sin_local_);
  const int64_t pos[2] = {pos0, pos0 + 1};  // a one-token step's position and its number of keys
  cuda::copy_to_device(pos_.data(), pos, sizeof(pos));
}

void CudaDecoder::layers(CudaKv& kv, int64_t n, int64_t pos0, const int64_t* pos_dev, CancelCheck* cancel) {
  const int64_t H = spec_.hidden_size, D = spec_.head_dim, Nq = spec_.num_heads, Nkv = spec_.num_kv_heads;
  const int64_t QKV = (Nq + 2 * Nkv) * D, F = spec_.intermediate_size, U = (spec_.gated_mlp ? 2 : 1) * F;
  float* x = x_.as<float>();
  float* h = h_.as<float>();
  float* qkv = qkv_.as<float>();
  float* attn = attn_.as<float>();
  float* tmp = tmp_.as<float>();
  const float scale = spec_.attn_scale > 0 ? spec_.attn_scale : 1.0f / std::sqrt(float(D));
  const bool across = spec_.qk_norm && spec_.qk_norm_across_heads;
  const cuda::Stream s = stream_;

  for (int64_t l = 0; l < spec_.num_layers; ++l) {
    if (cancel) (*cancel)();
    const DLayer& L = layers_[size_t(l)];
    const int64_t window = spec_.sliding_window[size_t(l)];
    // x += post_norm(o(attention(rope(qkv(norm(x))))))
    const float* in = x;
    if (spec_.pre_norm) {
      norm(n, x, L.attn_norm_w, L.attn_norm_b, h);
      in = h;
    }
    matmul(L.qkv, in, n, L.qkv_b, qkv);
    if (spec_.qk_norm) {
      const float eps = spec_.norm_eps;
      if (across) {
        cuda::norm_rows(qkv, QKV, n, 1, Nq * D, L.q_norm_w.as<float>(), nullptr, eps, false, qkv, s);
        cuda::norm_rows(qkv + Nq * D, QKV, n, 1, Nkv * D, L.k_norm_w.as<float>(), nullptr, eps, false, qkv + Nq * D, s);
      } else {
        cuda::norm_rows(qkv, QKV, n * Nq, Nq, D, L.q_norm_w.as<float>(), nullptr, eps, false, qkv, s);
        cuda::norm_rows(qkv + Nq * D, QKV, n * Nkv, Nkv, D, L.k_norm_w.as<float>(), nullptr, eps, false, qkv + Nq * D,
                        s);
      }
    }
    const bool rotates = spec_.rope_layers.empty() || spec_.rope_layers[size_t(l)];
    if (rotates && spec_.rope.rotary_dim > 0) {
      const bool local = spec_.rope_local.rotary_dim > 0 && window > 0;
      cuda::rope_rows(qkv, n, QKV, Nq + Nkv, D, spec_.rope.rotary_dim, (local ? cos_local_ : cos_).as<float>(),
                      (local ? sin_local_ : sin_).as<float>(), s);
    }
    float* kc = kv.k[size_t(l)].as<float>();
    float* vc = kv.v[size_t(l)].as<float>();
    cuda::kv_append(qkv, n, QKV, Nq * D, (Nq + Nkv) * D, Nkv, D, kc, vc, kv.capacity, pos0, s, pos_dev);
    for (int64_t t = 0; t < n; ++t) {
      cuda::DecodeAttention a;
      a.q = qkv + t * QKV;
      a.k = kc, a.v = vc;
      a.heads = Nq, a.kv_heads = Nkv, a.D = D, a.capacity = kv.capacity, a.window = window;
      // With the position on the device, len is the bound the graph is sized for.
      a.len = pos_dev ? kv.capacity : pos0 + t + 1;
      a.len_dev = pos_dev ? pos_dev + 1 : nullptr;
      a.scale = scale, a.softcap = spec_.attn_softcap;
      a.out = attn + t * Nq * D;
      cuda::attention_decode(a, attn_ws_.as<float>(), s);
    }
    matmul(L.o, attn, n, L.o_b, tmp);
    if (spec_.post_attn_norm) norm(n, tmp, L.attn_post_norm_w, cuda::DeviceBuffer(), tmp);
    cuda::add_residual(x, tmp, n * H, spec_.residual_scale, s);

    // x += post_norm(down(act(gate) * up)(norm(x)))
    in = x;
    if (spec_.pre_norm) {
      norm(n, x, L.ffn_norm_w, L.ffn_norm_b, h);
      in = h;
    }
    matmul(L.up, in, n, L.up_b, up_.as<float>());
    cuda::mlp_activation(int(spec_.activation), spec_.gated_mlp, up_.as<float>(), n, U, F, act_.as<float>(), s);
    matmul(L.down, act_.as<float>(), n, L.down_b, tmp);
    if (spec_.post_ffn_norm) norm(n, tmp, L.ffn_post_norm_w, cuda::DeviceBuffer(), tmp);
    cuda::add_residual(x, tmp, n * H, spec_.residual_scale, s);
  }
}

void CudaDecoder::head(int64_t n, int64_t rows) {
  // Final norm and LM head on the last `rows` rows, into logits_.
  const int64_t H = spec_.hidden_size;
  float* h = h_.as<float>();
  norm(rows, x_.as<float>() + (n - rows) * H, final_norm_w_, final_norm_b_, h);
  matmul(lm_head_, h, rows, cuda::DeviceBuffer(), logits_.as<float>());
  cuda::finish_logits(logits_.as<float>(), rows * spec_.vocab_size, spec_.logit_scale, spec_.final_softcap, stream_);
}

}  // namespace llmos
