#include "model/generate.h"

#include <algorithm>

#include "core/errors.h"

namespace llmos {

GenerateResult generate(Model& model, Session& session, const std::vector<int32_t>& prompt,
                        const GenerateParams& params, const std::function<bool(int32_t)>& on_token) {
  const ArchSpec& spec = model.spec();
  if (prompt.empty()) throw Error(Error::Kind::InvalidInput, "", "prompt", "needs at least one token");
  if (params.max_new_tokens < 0) throw Error(Error::Kind::InvalidInput, "", "max_new_tokens", "must be >= 0");
  const int64_t total = session.n_past() + int64_t(prompt.size()) + params.max_new_tokens;
  if (total > spec.max_positions)
    throw Error(Error::Kind::Context, "", "max_new_tokens",
                "prompt of " + std::to_string(prompt.size()) + " tokens plus " + std::to_string(params.max_new_tokens) +
                    " new tokens exceeds the context of " + std::to_string(spec.max_positions));

  GenerateResult res;
  if (params.max_new_tokens == 0) return res;
  Sampler sampler(params.sampling);
  std::vector<float> logits(size_t(spec.vocab_size));
  model.forward(session, prompt.data(), int64_t(prompt.size()), logits.data(), false);
  res.tokens.reserve(size_t(params.max_new_tokens));
  for (;;) {
    const int32_t tok = sampler.sample(logits.data(), spec.vocab_size);
    res.tokens.push_back(tok);
    if (std::find(params.eos_token_ids.begin(), params.eos_token_ids.end(), tok) != params.eos_token_ids.end()) {
      if (on_token) on_token(tok);
      res.finish = FinishReason::Eos;
      return res;
    }
    if (on_token && on_token(tok)) { res.finish = FinishReason::Stop; return res; }
    if (int64_t(res.tokens.size()) >= params.max_new_tokens) { res.finish = FinishReason::Length; return res; }
    model.forward(session, &tok, 1, logits.data(), false);
  }
}

}  // namespace llmos
