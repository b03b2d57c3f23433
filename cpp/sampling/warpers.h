// Logits warpers with transformers' semantics, applied in transformers' order when
// sampling. Each works in place on one row of scores [vocab]; a removed token gets -inf.
#pragma once

#include <cstdint>

#include "sampling/options.h"

namespace llmos {

// Temperature, top-h, top-k, top-p, min-p, typical, epsilon, eta. At least min_keep tokens
// survive each filter that has a minimum (transformers: 1, or n_eos + 1 for beam sampling).
void apply_warpers(const DecodeOptions& o, float* scores, int64_t vocab, int64_t min_keep);

}  // namespace llmos
