#include "sampling/processors.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace llmos {

namespace {
constexpr float kNegInf = -INFINITY;
using Tokens = std::vector<int32_t>;

// Whether `seq` ends with the n tokens at `prefix`.
bool ends_with(const Tokens& seq, const int32_t* prefix, int64_t n) {
  return n <= int64_t(seq.size()) && std::equal(prefix, prefix + n, seq.end() - n);
}

void ban(const Tokens& ids, float* scores) {
  for (int32_t t : ids) scores[t] = kNegInf;
}

// Only `ids` stay possible, all at 0.
void force(const Tokens& ids, float* scores, int64_t vocab) {
  std::fill(scores, scores + vocab, kNegInf);
  for (int32_t t : ids) scores[t] = 0.f;
}

// transformers sums every bias that applies to a token, then adds the sum once.
void add_sequence_bias(const std::vector<std::pair<Tokens, float>>& biases, const Tokens& seq, float* scores) {
  thread_local std::vector<std::pair<int32_t, float>> sum;
  sum.clear();
  for (const auto& [ids, b] : biases) {
    if (!ends_with(seq, ids.data(), int64_t(ids.size()) - 1)) continue;
    auto it = std::find_if(sum.begin(), sum.end(), [&](const auto& e) { return e.first == ids.back(); });
    if (it == sum.end()) sum.emplace_back(ids.back(), b);
    else it->second += b;
  }
  for (const auto& [t, b] : sum) scores[t] += b;
}

void add_logit_bias(const std::vector<std::pair<int32_t, float>>& bias, float* scores) {
  for (const auto& [t, b] : bias) scores[t] += b;
}

// transformers' repetition penalty: a positive score is divided by p, a negative one
// multiplied, so p > 1 always makes the token less likely. The encoder variant passes 1/p.
void penalize(float p, const Tokens& ids, float* scores) {
  for (int32_t t : ids) scores[t] = scores[t] < 0 ? scores[t] * p : scores[t] / p;
}

void penalize_presence_frequency(float presence, float frequency,
                                 const std::unordered_map<int32_t, int32_t>& generated, float* scores) {
  for (const auto& [t, c] : generated) scores[t] -= presence + frequency * float(c);
}

// Bans every token that would complete an n-gram of `source` after the last n-1 tokens of
// `seq` (no_repeat_ngram_size: source = seq; the encoder variant: source = the prompt).
void ban_ngram_completions(int64_t n, const int32_t* source, int64_t source_len, const Tokens& seq, float* scores) {
  if (int64_t(seq.size()) < n - 1) return;
  const int32_t* tail = seq.data() + (int64_t(seq.size()) - (n - 1));
  for (int64_t i = 0; i + n <= source_len; ++i)
    if (std::equal(tail, tail + (n - 1), source + i)) scores[source[i + n - 1]] = kNegInf;
}

void ban_bad_words(const std::vector<Tokens>& words, const Tokens& eos, const Tokens& seq, float* scores) {
  for (const auto& word : words) {
    // transformers never bans a single-token "word" that is an EOS token.
    if (word.size() == 1 && std::find(eos.begin(), eos.end(), word[0]) != eos.end()) continue;
    if (ends_with(seq, word.data(), int64_t(word.size()) - 1)) scores[word.back()] = kNegInf;
  }
}

void replace_invalid_values(float* scores, int64_t vocab) {
  for (int64_t i = 0; i < vocab; ++i) {
    float& s = scores[i];
    s = std::isnan(s) ? 0.f : s == INFINITY ? FLT_MAX : s == kNegInf ? -FLT_MAX : s;
  }
}

// After `start` new tokens, EOS grows by |score| * (factor^k - 1) at the k-th token past it.
void decay_toward_eos(std::pair<int64_t, double> penalty, const TokenHistory& h, const Tokens& eos, float* scores) {
  const int64_t start = h.prompt_len() + penalty.first;
  const int64_t len = int64_t(h.tokens().size());
  if (len <= start) return;
  const float grow = float(std::pow(penalty.second, double(len - start)) - 1.0);
  for (size_t i = 0; i < eos.size(); ++i) {
    if (std::find(eos.begin(), eos.begin() + i, eos[i]) != eos.begin() + i) continue;  // once per id
    float& s = scores[eos[i]];
    if (std::isfinite(s)) s += std::fabs(s) * grow;
  }
}

}  // namespace

TokenHistory::TokenHistory(const std::vector<int32_t>& prompt, int64_t vocab_size)
    : tokens_(prompt), prompt_len_(int64_t(prompt.size())), seen_(size_t(vocab_size), 0) {
  for (int32_t t : prompt)
    if (!seen_[size_t(t)]) { seen_[size_t(t)] = 1; seen_list_.push_back(t); }
  prompt_list_ = seen_list_;
}

void TokenHistory::push(int32_t token) {
  tokens_.push_back(token);
  if (!seen_[size_t(token)]) { seen_[size_t(token)] = 1; seen_list_.push_back(token); }
  ++generated_[token];
}

// The chain, in the order of transformers' _get_logits_processor. `len` counts the prompt,
// as transformers' cur_len does.
void apply_processors(const DecodeOptions& o, const TokenHistory& h, float* scores, int64_t vocab) {
  const Tokens& seq = h.tokens();
  const int64_t len = int64_t(seq.size());
  const int64_t max_length = h.prompt_len() + o.max_new_tokens;
  // transformers moves the begin index past a forced BOS after a one-token prompt.
  const int64_t begin = h.prompt_len() + (h.prompt_len() == 1 && o.forced_bos_token_id >= 0 ? 1 : 0);

  if (!o.sequence_bias.empty()) add_sequence_bias(o.sequence_bias, seq, scores);
  if (!o.logit_bias.empty()) add_logit_bias(o.logit_bias, scores);
  if (o.encoder_repetition_penalty != 1.0f)
    penalize(float(1.0 / o.encoder_repetition_penalty), h.prompt_distinct(), scores);
  if (o.repetition_penalty != 1.0f) penalize(o.repetition_penalty, h.seen(), scores);
  if (o.presence_penalty != 0.0f || o.frequency_penalty != 0.0f)
    penalize_presence_frequency(o.presence_penalty, o.frequency_penalty, h.generated(), scores);
  if (o.no_repeat_ngram_size > 0) ban_ngram_completions(o.no_repeat_ngram_size, seq.data(), len, seq, scores);
  if (o.encoder_no_repeat_ngram_size > 0)
    ban_ngram_completions(o.encoder_no_repeat_ngram_size, seq.data(), h.prompt_len(), seq, scores);
  if (!o.bad_words_ids.empty()) ban_bad_words(o.bad_words_ids, o.eos_token_ids, seq, scores);
  if (len < o.min_length || h.n_generated() < o.min_new_tokens) ban(o.eos_token_ids, scores);
  if (o.forced_bos_token_id >= 0 && len == 1) force({o.forced_bos_token_id}, scores, vocab);
  if (!o.forced_eos_token_ids.empty() && len == max_length - 1) force(o.forced_eos_token_ids, scores, vocab);
  if (o.remove_invalid_values) replace_invalid_values(scores, vocab);
  if (o.exponential_decay_length_penalty.second != 1.0)
    decay_toward_eos(o.exponential_decay_length_penalty, h, o.eos_token_ids, scores);
  if (!o.suppress_tokens.empty()) ban(o.suppress_tokens, scores);
  if (!o.begin_suppress_tokens.empty() && len == begin) ban(o.begin_suppress_tokens, scores);
}

float log_sum_exp(const float* scores, int64_t vocab) {
  float m = kNegInf;
  for (int64_t i = 0; i < vocab; ++i) m = std::max(m, scores[i]);
  if (m == kNegInf) return kNegInf;
  double s = 0;
  for (int64_t i = 0; i < vocab; ++i)
    if (scores[i] != kNegInf) s += std::exp(double(scores[i] - m));
  return m + float(std::log(s));
}

}  // namespace llmos
