// The paged KV cache: a pool of fixed-size blocks shared by the sessions of one model.
//
// A block holds block_tokens positions of every layer's keys and values, laid out per layer as
// K [Nkv][T][D] then V [Nkv][T][D] in the pool's dtype (I8 adds a float scale per (token, kv
// head) after each: [Nkv][T]). Blocks are refcounted: a forked sequence shares its parent's
// blocks, and a block about to be written while shared is copied first (Session::reserve_append).
//
// Prefix cache: a full block can be registered under the hash of (its parent block's hash,
// its tokens). A lookup compares the stored tokens and the parent's identity (block and
// registration number), never just the hash, so a collision can never serve the wrong keys:
// by induction the whole prefix matches. Registered blocks nobody holds stay in an LRU list and
// are evicted (oldest first) when the free list is empty.
//
// Not thread-safe: one owner (the engine's step thread, or a test) calls it; stats() may be
// read from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/buffer.h"
#include "model/arch.h"

namespace llmos {

enum class KvDtype { F32, BF16, F16, I8 };  // I8: symmetric, a float scale per (token, kv head)
KvDtype kv_dtype_from_name(const std::string& name);  // "float32" | "bfloat16" | "float16" | "int8"
const char* kv_dtype_name(KvDtype dtype);

class KvPool {
 public:
  // Throws InvalidInput when budget_bytes holds no block or block_tokens is not positive.
  KvPool(const Architecture& spec, KvDtype dtype, int64_t block_tokens, int64_t budget_bytes);
  KvPool(const KvPool&) = delete;
  KvPool& operator=(const KvPool&) = delete;

  int64_t block_tokens() const { return T_; }
  int64_t num_blocks() const { return num_blocks_; }
  KvDtype dtype() const { return dtype_; }
  const Architecture& spec() const { return *spec_; }
  static int64_t block_bytes(const Architecture& spec, KvDtype dtype, int64_t block_tokens);

  struct Stats {
    int64_t blocks_total, blocks_used /*refcount > 0*/, blocks_cached /*refcount 0, in the prefix cache*/,
        prefix_queries /*tokens looked up*/, prefix_hits /*tokens found*/, evictions;
  };
  Stats stats() const;

  // Test hook: hashes are masked with `mask` (0 makes every block collide).
  void set_hash_mask(uint64_t mask) { hash_mask_ = mask; }

  // --- For Session (and the decoder) -----------------------------------------------------------
  // A prefix-cache identity: the registered block and its registration number; {-1, 0} is the
  // empty prefix.
  struct ChainLink {
    int32_t block = -1;
    uint64_t gen = 0;
    uint64_t hash = 0;
  };
  int32_t allocate();                       // -1 when no block is free even after evicting
  int64_t available() const;                // blocks allocate() can still give
  void ref(int32_t block);
  void unref(int32_t block);
  int32_t refcount(int32_t block) const { return meta_[size_t(block)].refs; }
  void copy_block(int32_t dst, int32_t src);
  // The registered block continuing `parent` with these block_tokens tokens, or -1.
  ChainLink lookup(const ChainLink& parent, const int32_t* tokens) const;
  // Registers `block` (full, holding `tokens`) after `parent`; returns the canonical link:
  // the block already registered with that content when there is one, else `block`'s own.
  ChainLink publish(int32_t block, const ChainLink& parent, const int32_t* tokens);
  void count_query(int64_t queried, int64_t hit) {
    prefix_queries_ += queried;
    prefix_hits_ += hit;
  }

  // Writes one position's keys and values (float [Nkv, D] each) for one layer.
  void write(int32_t block, int64_t layer, int64_t offset, const float* k, const float* v, int64_t stride_kv_head);
  // Reads positions [start, start + len) of kv head h, layer `layer` of a sequence whose blocks
  // are `blocks`, into k, v: [len, D] float.
  void gather(const int32_t* blocks, int64_t layer, int64_t h, int64_t start, int64_t len, float* k, float* v) const;

 private:
  struct Meta {
    int32_t refs = 0;
    bool registered = false;
    uint64_t hash = 0, gen = 0;
    ChainLink parent;
    std::list<int32_t>::iterator lru;  // valid when registered and refs == 0
  };
  uint8_t* block_ptr(int32_t b) { return storage_.data() + size_t(b) * size_t(block_bytes_); }
  const uint8_t* block_ptr(int32_t b) const { return storage_.data() + size_t(b) * size_t(block_bytes_); }
  uint64_t chain_hash(uint64_t parent, const int32_t* tokens) const;
  void unregister(int32_t block);

  const Architecture* spec_;
  KvDtype dtype_;
  int64_t T_, num_blocks_, block_bytes_;
  int64_t elem_;         // bytes per stored value
  int64_t head_bytes_;   // one kv head of one layer, K or V: T * D * elem (+ T * 4 scales for I8)
  Buffer storage_;
  std::vector<Meta> meta_;
  std::vector<int32_t> free_;
  std::list<int32_t> lru_;  // registered, unreferenced; front = least recently released
  std::unordered_multimap<uint64_t, int32_t> by_hash_;
  std::vector<int32_t> tokens_;  // [num_blocks, T]: what a registered block holds
  uint64_t next_gen_ = 1;
  uint64_t hash_mask_ = ~uint64_t(0);
  std::atomic<int64_t> used_{0}, cached_{0}, prefix_queries_{0}, prefix_hits_{0}, evictions_{0};
};

}  // namespace llmos
