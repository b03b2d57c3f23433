// The decode loops, all in C++: sampling/greedy over a batch of sequences (one forward per
// step for every live sequence), and beam search with transformers' semantics.
// An optional callback sees each token (for streaming and stop strings) and may end that
// sequence; without one, no Python runs until generation is over. An optional CancelCheck is
// polled at every step, for every sequence and inside each forward (model/decoder.h); what
// it throws ends the call, and the Model stays as it was.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "core/cancel.h"
#include "model/decoder.h"
#include "sampling/constraint.h"
#include "sampling/options.h"

namespace llmos {

enum class FinishReason { Length = 0, Eos = 1, Stop = 2 };

struct SequenceResult {
  int64_t prompt_index = 0;          // which prompt this continues
  std::vector<int32_t> tokens;       // new tokens only (an EOS that ended it is included)
  FinishReason finish = FinishReason::Length;
  std::vector<float> logprobs;       // per new token, when options.logprobs
  std::vector<std::vector<std::pair<int32_t, float>>> top_logprobs;  // per new token
  float score = 0.f;                 // beam search: the length-penalized sequence score
};

// on_token(sequence index, token) returns true to end that sequence (FinishReason::Stop).
// Sequence i continues prompt i / num_return_sequences (prompt-major order).
using TokenCallback = std::function<bool(int64_t, int32_t)>;

// One optional constraint per sequence (structured output, sampling/constraint.h); null
// entries and an empty list mean unconstrained. The mask for step t + 1 is computed on a
// helper thread while the forward of step t + 1 runs; what fill_mask or accept throws ends
// the call (after the helper is joined). A constraint that is done allows only EOS; with no
// EOS token in the options its sequence ends there (FinishReason::Stop).
using Constraints = std::vector<std::shared_ptr<TokenConstraint>>;

// Runs greedy/sampled decoding, or beam search when options.num_beams > 1 (which takes no
// constraints). Returns num_return_sequences results per prompt, in prompt order.
std::vector<SequenceResult> generate(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                     const DecodeOptions& options, const TokenCallback& on_token,
                                     CancelCheck* cancel = nullptr, const Constraints& constraints = {});

std::vector<SequenceResult> beam_search(Model& model, const std::vector<int32_t>& prompt, const DecodeOptions& options,
                                        CancelCheck* cancel = nullptr);

}  // namespace llmos
