// The decode loop: prefill the prompt, then one forward per new token, all in C++.
// An optional callback sees each token (for streaming and stop strings) and may end the
// loop; without one, no Python runs until generation is over.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/decoder.h"
#include "sampling/sampler.h"

namespace llmos {

struct GenerateParams {
  int64_t max_new_tokens = 16;
  std::vector<int32_t> eos_token_ids;
  SamplingParams sampling;
};

enum class FinishReason { Length = 0, Eos = 1, Stop = 2 };

struct GenerateResult {
  std::vector<int32_t> tokens;  // new tokens only (an EOS token that ended the loop is included)
  FinishReason finish = FinishReason::Length;
};

// on_token(token) returns true to stop after that token (FinishReason::Stop).
GenerateResult generate(Model& model, Session& session, const std::vector<int32_t>& prompt,
                        const GenerateParams& params, const std::function<bool(int32_t)>& on_token);

}  // namespace llmos
