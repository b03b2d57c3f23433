#include "model/generate.h"

#include <algorithm>
#include <future>
#include <memory>

#include "core/errors.h"
#include "sampling/processors.h"
#include "sampling/sampler.h"

namespace llmos {

namespace {

void check_prompts(const Model& model, const std::vector<std::vector<int32_t>>& prompts, const DecodeOptions& o) {
  const Architecture& spec = model.spec();
  if (prompts.empty()) throw Error(Error::Kind::InvalidInput, "", "prompt", "no prompts given");
  for (const auto& p : prompts) {
    if (p.empty()) throw Error(Error::Kind::InvalidInput, "", "prompt", "needs at least one token");
    if (int64_t(p.size()) + o.max_new_tokens > spec.max_position_embeddings)
      throw Error(Error::Kind::Context, "", "max_new_tokens",
                  "prompt of " + std::to_string(p.size()) + " tokens plus " + std::to_string(o.max_new_tokens) +
                      " new tokens exceeds the context of " + std::to_string(spec.max_position_embeddings));
    for (int32_t t : p)
      if (t < 0 || t >= spec.vocab_size)
        throw Error(Error::Kind::InvalidInput, "", "prompt",
                    "token id " + std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(spec.vocab_size) + ")");
  }
}

bool is_eos(const DecodeOptions& o, int32_t t) {
  return std::find(o.eos_token_ids.begin(), o.eos_token_ids.end(), t) != o.eos_token_ids.end();
}

}  // namespace

std::vector<SequenceResult> generate(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                     const DecodeOptions& o, const TokenCallback& on_token, CancelCheck* cancel,
                                     const Constraints& constraints) {
  o.validate(model.spec().vocab_size);
  check_prompts(model, prompts, o);
  CancelCheck never;
  CancelCheck& check = cancel ? *cancel : never;
  const bool constrained = std::any_of(constraints.begin(), constraints.end(), [](const auto& c) { return bool(c); });
  if (constrained && o.num_beams > 1)
    throw Error(Error::Kind::InvalidInput, "", "constraint", "structured output needs num_beams=1 (beam search takes no constraint)");
  if (!constraints.empty() && int64_t(constraints.size()) != int64_t(prompts.size()) * o.num_return_sequences)
    throw Error(Error::Kind::InvalidInput, "", "constraint",
                "expected one constraint (or None) per sequence: " +
                    std::to_string(int64_t(prompts.size()) * o.num_return_sequences) + ", got " +
                    std::to_string(constraints.size()));
  if (o.num_beams > 1) {
    std::vector<SequenceResult> all;
    for (size_t i = 0; i < prompts.size(); ++i)
      for (SequenceResult& r : beam_search(model, prompts[i], o, &check)) {
        r.prompt_index = int64_t(i);
        all.push_back(std::move(r));
      }
    return all;
  }

  // One sequence per (prompt, return index); each has its own RNG so a prompt gives the
  // same tokens alone or in a batch.
  const int64_t V = model.spec().vocab_size;
  const int64_t n_seq = int64_t(prompts.size()) * o.num_return_sequences;
  std::vector<SequenceResult> res(static_cast<size_t>(n_seq));
  std::vector<std::unique_ptr<Session>> sessions;
  std::vector<std::unique_ptr<TokenHistory>> hist;
  std::vector<std::unique_ptr<Sampler>> samplers;
  for (int64_t i = 0; i < n_seq; ++i) {
    check();
    const auto& p = prompts[size_t(i / o.num_return_sequences)];
    res[size_t(i)].prompt_index = i / o.num_return_sequences;
    sessions.push_back(std::make_unique<Session>(model));
    hist.push_back(std::make_unique<TokenHistory>(p, V));
    samplers.push_back(std::make_unique<Sampler>(o, o.seed + uint64_t(i % o.num_return_sequences)));
  }
  if (o.max_new_tokens == 0) return res;

  std::vector<int64_t> live(static_cast<size_t>(n_seq));
  for (int64_t i = 0; i < n_seq; ++i) live[size_t(i)] = i;
  std::vector<int32_t> next_tok(static_cast<size_t>(n_seq));
  std::vector<float> logits;

  // Structured output: each constrained sequence's mask for the coming step, filled by a
  // helper thread while the forward runs (declared before `pending` so that a forward that
  // throws joins the helper, in the future's destructor, before the buffers go).
  const int64_t W = mask_words(V);
  std::vector<std::vector<uint32_t>> masks(constrained ? size_t(n_seq) : 0);
  std::future<void> pending;
  auto fill_masks = [&](std::vector<int64_t> seqs) {
    for (int64_t i : seqs) {
      std::vector<uint32_t>& m = masks[size_t(i)];
      m.assign(size_t(W), 0u);
      constraints[size_t(i)]->fill_mask(m.data(), V);
    }
  };
  auto start_masks = [&](const std::vector<int64_t>& seqs) {
    std::vector<int64_t> todo;
    for (int64_t i : seqs)
      if (constraints[size_t(i)]) todo.push_back(i);
    if (!todo.empty()) pending = std::async(std::launch::async, fill_masks, std::move(todo));
  };
  if (constrained) start_masks(live);

  bool prefill = true;
  while (!live.empty()) {
    std::vector<SeqChunk> chunks;
    for (int64_t i : live) {
      if (prefill) {
        const auto& p = prompts[size_t(i / o.num_return_sequences)];
        chunks.push_back({sessions[size_t(i)].get(), p.data(), int64_t(p.size())});
      } else {
        chunks.push_back({sessions[size_t(i)].get(), &next_tok[size_t(i)], 1});
      }
    }
    prefill = false;
    logits.resize(chunks.size() * size_t(V));
    model.forward(chunks, logits.data(), false, &check);
    if (pending.valid()) pending.get();  // rethrows what fill_mask threw

    std::vector<int64_t> still;
    for (size_t c = 0; c < live.size(); ++c) {
      check();  // sampling a large vocabulary for thousands of sequences takes a while too
      const int64_t i = live[c];
      SequenceResult& r = res[size_t(i)];
      TokenLogprobs lp;
      TokenConstraint* con = constrained ? constraints[size_t(i)].get() : nullptr;
      const uint32_t* allowed = con ? masks[size_t(i)].data() : nullptr;
      const int32_t tok = samplers[size_t(i)]->next(logits.data() + c * size_t(V), V, *hist[size_t(i)],
                                                    o.logprobs ? &lp : nullptr, allowed);
      if (allowed && !mask_allows(allowed, tok))  // every allowed token was banned by another option
        throw Error(Error::Kind::InvalidInput, "", "constraint",
                    "no token the output constraint allows survives the other options (min_new_tokens, "
                    "bad_words_ids, suppress_tokens, ...) after " + std::to_string(r.tokens.size()) + " tokens");
      if (con && !is_eos(o, tok)) con->accept(tok);
      hist[size_t(i)]->push(tok);
      r.tokens.push_back(tok);
      if (o.logprobs) {
        r.logprobs.push_back(lp.logprob);
        r.top_logprobs.push_back(std::move(lp.top));
      }
      next_tok[size_t(i)] = tok;
      const bool stop = on_token && on_token(i, tok);
      if (is_eos(o, tok)) r.finish = FinishReason::Eos;
      else if (stop) r.finish = FinishReason::Stop;
      else if (int64_t(r.tokens.size()) >= o.max_new_tokens) r.finish = FinishReason::Length;
      else if (con && o.eos_token_ids.empty() && con->done()) r.finish = FinishReason::Stop;  // no EOS to end it
      else { still.push_back(i); continue; }
      sessions[size_t(i)].reset();  // free the cache of a finished sequence now
    }
    live.swap(still);
    if (constrained) start_masks(live);
  }
  return res;
}

}  // namespace llmos
