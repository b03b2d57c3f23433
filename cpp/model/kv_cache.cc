#include "model/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/errors.h"

namespace llmos {

namespace {

int64_t elem_bytes(KvDtype d) {
  switch (d) {
    case KvDtype::F32: return 4;
    case KvDtype::BF16:
    case KvDtype::F16: return 2;
    case KvDtype::I8: return 1;
  }
  return 4;
}

// One kv head of one layer in a block, K or V: the values, then (I8) a float scale per
// position; rounded to 4 bytes so the scales and the next head stay aligned.
int64_t head_bytes(const Architecture& spec, KvDtype d, int64_t T) {
  int64_t b = T * spec.head_dim * elem_bytes(d);
  b = (b + 3) & ~int64_t(3);
  if (d == KvDtype::I8) b += T * 4;
  return b;
}

uint64_t mix(uint64_t h, uint64_t v) {
  // splitmix64 of the running hash combined with the next value
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

}  // namespace

KvDtype kv_dtype_from_name(const std::string& name) {
  if (name == "float32") return KvDtype::F32;
  if (name == "bfloat16") return KvDtype::BF16;
  if (name == "float16") return KvDtype::F16;
  if (name == "int8") return KvDtype::I8;
  throw Error(Error::Kind::InvalidInput, "", "kv_dtype",
              "'" + name + "' is not one of float32, bfloat16, float16, int8");
}

const char* kv_dtype_name(KvDtype d) {
  switch (d) {
    case KvDtype::F32: return "float32";
    case KvDtype::BF16: return "bfloat16";
    case KvDtype::F16: return "float16";
    case KvDtype::I8: return "int8";
  }
  return "float32";
}

int64_t KvPool::block_bytes(const Architecture& spec, KvDtype dtype, int64_t block_tokens) {
  return spec.num_layers * 2 * spec.num_kv_heads * head_bytes(spec, dtype, block_tokens);
}

KvPool::KvPool(const Architecture& spec, KvDtype dtype, int64_t block_tokens, int64_t budget_bytes)
    : spec_(&spec), dtype_(dtype), T_(block_tokens) {
  if (block_tokens < 1 || block_tokens > spec.max_position_embeddings)
    throw Error(Error::Kind::InvalidInput, "", "block_tokens",
                "must be from 1 to the context (" + std::to_string(spec.max_position_embeddings) + "), got " +
                    std::to_string(block_tokens));
  elem_ = elem_bytes(dtype);
  head_bytes_ = head_bytes(spec, dtype, T_);
  block_bytes_ = block_bytes(spec, dtype, T_);
  num_blocks_ = budget_bytes > 0 ? budget_bytes / block_bytes_ : 0;
  if (num_blocks_ < 1)
    throw Error(Error::Kind::InvalidInput, "", "kv_memory",
                std::to_string(budget_bytes) + " bytes hold no KV block: one block of " + std::to_string(T_) +
                    " positions (" + kv_dtype_name(dtype) + ") takes " + std::to_string(block_bytes_) + " bytes");
  // Block ids are int32 and the token table is num_blocks * T entries.
  if (num_blocks_ > (int64_t(1) << 30) / T_) num_blocks_ = (int64_t(1) << 30) / T_;
  storage_.resize(size_t(num_blocks_) * size_t(block_bytes_));
  meta_.resize(size_t(num_blocks_));
  tokens_.assign(size_t(num_blocks_ * T_), 0);
  free_.reserve(size_t(num_blocks_));
  for (int64_t b = num_blocks_ - 1; b >= 0; --b) free_.push_back(int32_t(b));  // block 0 first
}

KvPool::Stats KvPool::stats() const {
  return Stats{num_blocks_, used_.load(), cached_.load(), prefix_queries_.load(), prefix_hits_.load(),
               evictions_.load()};
}

int64_t KvPool::available() const { return int64_t(free_.size() + lru_.size()); }

int32_t KvPool::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    b = lru_.front();
    unregister(b);  // also takes it off the LRU
    ++evictions_;
  } else {
    return -1;
  }
  meta_[size_t(b)].refs = 1;
  ++used_;
  return b;
}

void KvPool::ref(int32_t b) {
  Meta& m = meta_[size_t(b)];
  if (m.refs == 0) {
    // only a cached block is handed out again by reference (adopt_prefix)
    lru_.erase(m.lru);
    --cached_;
    ++used_;
  }
  ++m.refs;
}

void KvPool::unref(int32_t b) {
  Meta& m = meta_[size_t(b)];
  if (--m.refs > 0) return;
  --used_;
  if (m.registered) {
    m.lru = lru_.insert(lru_.end(), b);
    ++cached_;
  } else {
    free_.push_back(b);
  }
}

void KvPool::unregister(int32_t b) {
  Meta& m = meta_[size_t(b)];
  auto [lo, hi] = by_hash_.equal_range(m.hash);
  for (auto it = lo; it != hi; ++it)
    if (it->second == b) {
      by_hash_.erase(it);
      break;
    }
  if (m.refs == 0) {
    lru_.erase(m.lru);
    --cached_;
  }
  m.registered = false;
  m.gen = 0;
}

void KvPool::copy_block(int32_t dst, int32_t src) {
  std::memcpy(block_ptr(dst), block_ptr(src), size_t(block_bytes_));
}

uint64_t KvPool::chain_hash(uint64_t parent, const int32_t* tokens) const {
  uint64_t h = mix(0x6b76u, parent);
  for (int64_t i = 0; i < T_; ++i) h = mix(h, uint64_t(uint32_t(tokens[i])));
  return h & hash_mask_;
}

KvPool::ChainLink KvPool::lookup(const ChainLink& parent, const int32_t* tokens) const {
  const uint64_t h = chain_hash(parent.hash, tokens);
  auto [lo, hi] = by_hash_.equal_range(h);
  for (auto it = lo; it != hi; ++it) {
    const Meta& m = meta_[size_t(it->second)];
    if (m.parent.block == parent.block && m.parent.gen == parent.gen &&
        std::equal(tokens, tokens + T_, tokens_.begin() + int64_t(it->second) * T_))
      return ChainLink{it->second, m.gen, m.hash};
  }
  return ChainLink{};
}

KvPool::ChainLink KvPool::publish(int32_t b, const ChainLink& parent, const int32_t* tokens) {
  const ChainLink found = lookup(parent, tokens);
  if (found.block >= 0) return found;
  Meta& m = meta_[size_t(b)];
  if (m.registered) return ChainLink{b, m.gen, m.hash};  // registered under another chain: keep that
  m.registered = true;
  m.hash = chain_hash(parent.hash, tokens);
  m.gen = next_gen_++;
  m.parent = parent;
  std::copy(tokens, tokens + T_, tokens_.begin() + int64_t(b) * T_);
  by_hash_.emplace(m.hash, b);
  return ChainLink{b, m.gen, m.hash};
}

void KvPool::write(int32_t block, int64_t layer, int64_t off, const float* k, const float* v, int64_t stride) {
  const int64_t Nkv = spec_->num_kv_heads, D = spec_->head_dim;
  uint8_t* base = block_ptr(block) + size_t(layer * 2 * Nkv * head_bytes_);
  for (int64_t kv = 0; kv < 2; ++kv)
    for (int64_t h = 0; h < Nkv; ++h) {
      const float* src = (kv == 0 ? k : v) + h * stride;
      uint8_t* head = base + (kv * Nkv + h) * head_bytes_;
      switch (dtype_) {
        case KvDtype::F32:
          std::memcpy(head + off * D * 4, src, size_t(D) * 4);
          break;
        case KvDtype::BF16: {
          uint16_t* dst = reinterpret_cast<uint16_t*>(head) + off * D;
          for (int64_t i = 0; i < D; ++i) dst[i] = f32_to_bf16(src[i]);
          break;
        }
        case KvDtype::F16: {
          uint16_t* dst = reinterpret_cast<uint16_t*>(head) + off * D;
          for (int64_t i = 0; i < D; ++i) dst[i] = f32_to_f16(src[i]);
          break;
        }
        case KvDtype::I8: {
          int8_t* dst = reinterpret_cast<int8_t*>(head) + off * D;
          float* scales = reinterpret_cast<float*>(head + ((T_ * D + 3) & ~int64_t(3)));
          float amax = 0.0f;
          for (int64_t i = 0; i < D; ++i) amax = std::max(amax, std::fabs(src[i]));
          // A non-finite key stays visible as NaN after the round trip rather than as a clamp.
          const float scale = amax / 127.0f;
          scales[off] = scale;
          const float inv = scale > 0 ? 1.0f / scale : 0.0f;
          for (int64_t i = 0; i < D; ++i) {
            const float q = std::nearbyint(src[i] * inv);
            dst[i] = int8_t(std::isfinite(q) ? std::max(-127.0f, std::min(127.0f, q)) : 0.0f);
          }
          if (!std::isfinite(amax)) scales[off] = NAN;
          break;
        }
      }
    }
}

void KvPool::gather(const int32_t* blocks, int64_t layer, int64_t h, int64_t start, int64_t len, float* k,
                    float* v) const {
  const int64_t Nkv = spec_->num_kv_heads, D = spec_->head_dim;
  for (int64_t kv = 0; kv < 2; ++kv) {
    float* out = kv == 0 ? k : v;
    for (int64_t p = start; p < start + len;) {
      const int64_t off = p % T_, n = std::min(T_ - off, start + len - p);
      const uint8_t* head =
          block_ptr(blocks[p / T_]) + size_t(((layer * 2 + kv) * Nkv + h) * head_bytes_);
      float* dst = out + (p - start) * D;
      switch (dtype_) {
        case KvDtype::F32:
          std::memcpy(dst, head + off * D * 4, size_t(n * D) * 4);
          break;
        case KvDtype::BF16: {
          const uint16_t* src = reinterpret_cast<const uint16_t*>(head) + off * D;
          for (int64_t i = 0; i < n * D; ++i) dst[i] = bf16_to_f32(src[i]);
          break;
        }
        case KvDtype::F16: {
          const uint16_t* src = reinterpret_cast<const uint16_t*>(head) + off * D;
          for (int64_t i = 0; i < n * D; ++i) dst[i] = f16_to_f32(src[i]);
          break;
        }
        case KvDtype::I8: {
          const int8_t* src = reinterpret_cast<const int8_t*>(head) + off * D;
          const float* scales = reinterpret_cast<const float*>(head + ((T_ * D + 3) & ~int64_t(3)));
          for (int64_t j = 0; j < n; ++j)
            for (int64_t i = 0; i < D; ++i) dst[j * D + i] = float(src[j * D + i]) * scales[off + j];
          break;
        }
      }
      p += n;
    }
  }
}

}  // namespace llmos
