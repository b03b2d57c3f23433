// Structured output: a constraint says which tokens may come next (a JSON schema, a regex, a
// grammar), so the reply always parses. The loop that owns a sequence (the decode loop, the
// serving engine) asks the constraint for the allowed set before sampling, passes it to
// Sampler::next, then reports the chosen token with accept().
//
// fill_mask is the slow part (tens of microseconds to milliseconds for a large vocabulary),
// and the set for step t + 1 is known as soon as token t is accepted, so a loop may compute
// it while the forward pass of step t + 1 runs. fill_mask and accept are never called
// concurrently on one constraint; different constraints may run on different threads.
#pragma once

#include <cstdint>

namespace llmos {

class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  // Sets bit (t % 32) of allowed[t / 32] for every token t allowed next; allowed holds
  // mask_words(vocab) words, all zero on entry. An empty set means the constraint is stuck
  // (the caller ends the sequence with an error).
  virtual void fill_mask(uint32_t* allowed, int64_t vocab) = 0;
  // Advances past the chosen token (one the last mask allowed).
  virtual void accept(int32_t token) = 0;
  // True once the constrained text is complete (then the mask allows only end-of-sequence).
  virtual bool done() const = 0;
};

inline int64_t mask_words(int64_t vocab) { return (vocab + 31) / 32; }

inline bool mask_allows(const uint32_t* allowed, int32_t token) {
  return (allowed[token >> 5] >> (token & 31)) & 1u;
}

}  // namespace llmos
