#include "sampling/processors.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

namespace llmos {

namespace {
constexpr float kNegInf = -INFINITY;

// probs[i] = softmax(scores)[i]; returns the sum before normalizing (for callers that
// only need relative values it does not matter).
void softmax_into(const float* scores, int64_t n, std::vector<float>& probs) {
  probs.resize(size_t(n));
  float m = kNegInf;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, scores[i]);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float e = scores[i] == kNegInf ? 0.f : std::exp(scores[i] - m);
    probs[size_t(i)] = e;
    s += e;
  }
  const float inv = float(1.0 / s);
  for (int64_t i = 0; i < n; ++i) probs[size_t(i)] *= inv;
}

// Ids sorted by descending score, computed lazily: only the best `want` are ordered.
// Ties put the lower id first, or the higher one with high_first (the order in which a
// stable ascending sort, read from its end, lists them: top-p's view).
void top_ids(const float* scores, int64_t vocab, int64_t want, std::vector<int32_t>& ids, bool high_first = false) {
  ids.resize(size_t(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  auto better = [&](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && (high_first ? a > b : a < b));
  };
  want = std::min(want, vocab);
  if (want < vocab) std::nth_element(ids.begin(), ids.begin() + want, ids.end(), better);
  std::sort(ids.begin(), ids.begin() + want, better);
}
}  // namespace

TokenHistory::TokenHistory(const std::vector<int32_t>& prompt, int64_t vocab_size)
    : tokens_(prompt), prompt_len_(int64_t(prompt.size())), seen_(size_t(vocab_size), 0) {
  for (int32_t t : prompt)
    if (!seen_[size_t(t)]) { seen_[size_t(t)] = 1; seen_list_.push_back(t); }
}

void TokenHistory::push(int32_t token) {
  tokens_.push_back(token);
  if (!seen_[size_t(token)]) { seen_[size_t(token)] = 1; seen_list_.push_back(token); }
  ++generated_[token];
}

void apply_processors(const DecodeOptions& o, const TokenHistory& h, float* scores, int64_t vocab) {
  for (const auto& [t, b] : o.logit_bias) scores[t] += b;

  if (o.repetition_penalty != 1.0f) {
    const float p = o.repetition_penalty;
    for (int32_t t : h.seen_list_) scores[t] = scores[t] < 0 ? scores[t] * p : scores[t] / p;
  }
  if (o.presence_penalty != 0.0f || o.frequency_penalty != 0.0f)
    for (const auto& [t, c] : h.generated_) scores[t] -= o.presence_penalty + o.frequency_penalty * float(c);

  const std::vector<int32_t>& seq = h.tokens();
  const int64_t L = int64_t(seq.size());
  const int64_t n = o.no_repeat_ngram_size;
  if (n > 0 && L >= n) {
    // Ban every token that would complete an n-gram already in the sequence: find the
    // earlier occurrences of the last n-1 tokens.
    const int32_t* tail = seq.data() + (L - n + 1);
    for (int64_t i = 0; i + n <= L; ++i)
      if (std::equal(tail, tail + (n - 1), seq.data() + i)) scores[seq[size_t(i + n - 1)]] = kNegInf;
  }

  for (const auto& word : o.bad_words_ids) {
    // transformers never bans a single-token "word" that is an EOS token.
    if (word.size() == 1 &&
        std::find(o.eos_token_ids.begin(), o.eos_token_ids.end(), word[0]) != o.eos_token_ids.end())
      continue;
    const int64_t prefix = int64_t(word.size()) - 1;
    if (prefix > L) continue;
    if (std::equal(word.begin(), word.end() - 1, seq.end() - prefix)) scores[word.back()] = kNegInf;
  }

  if (L < o.min_length || h.n_generated() < o.min_new_tokens)
    for (int32_t e : o.eos_token_ids) scores[e] = kNegInf;
  (void)vocab;
}

void apply_warpers(const DecodeOptions& o, float* scores, int64_t vocab, int64_t min_keep) {
  thread_local std::vector<int32_t> ids;
  thread_local std::vector<float> probs;
  if (o.temperature != 1.0f)
    for (int64_t i = 0; i < vocab; ++i) scores[i] /= o.temperature;

  if (o.top_k > 0) {
    const int64_t k = std::min(std::max(o.top_k, min_keep), vocab);
    if (k < vocab) {
      top_ids(scores, vocab, k, ids);
      const float kth = scores[ids[size_t(k - 1)]];
      for (int64_t i = 0; i < vocab; ++i)
        if (scores[i] < kth) scores[i] = kNegInf;  // ties with the k-th stay, as in transformers
    }
  }

  if (o.top_p < 1.0f) {
    // transformers drops a token when the probability mass strictly above it (in
    // descending order) is >= top_p. The kept set is found without sorting the vocabulary:
    // one pass sums the mass per bucket of float bit patterns (monotone for p >= 0), the
    // bucket where the running mass reaches top_p is the only one that needs ordering.
    softmax_into(scores, vocab, probs);
    constexpr int kShift = 19;  // 2^13 buckets: sign, exponent and 4 mantissa bits
    thread_local std::vector<double> bucket_mass;
    bucket_mass.assign(size_t(1) << (32 - kShift), 0.0);
    auto bucket_of = [](float p) { uint32_t u; std::memcpy(&u, &p, 4); return u >> kShift; };
    for (int64_t i = 0; i < vocab; ++i) bucket_mass[bucket_of(probs[size_t(i)])] += probs[size_t(i)];
    const double target = double(o.top_p);
    double above = 0;
    uint32_t edge = 0;
    for (uint32_t b = uint32_t(bucket_mass.size()); b-- > 0;) {
      if (above + bucket_mass[b] >= target) { edge = b; break; }
      above += bucket_mass[b];
    }
    // Order the edge bucket as a stable ascending sort read from its end would: by
    // probability, ties highest id first; keep while the mass above stays < top_p.
    ids.clear();
    for (int64_t i = 0; i < vocab; ++i)
      if (bucket_of(probs[size_t(i)]) == edge) ids.push_back(int32_t(i));
    std::sort(ids.begin(), ids.end(), [&](int32_t x, int32_t y) {
      return probs[size_t(x)] > probs[size_t(y)] || (probs[size_t(x)] == probs[size_t(y)] && x > y);
    });
    std::vector<uint8_t> keep_edge(ids.size(), 0);
    int64_t kept = 0;
    for (int64_t i = 0; i < vocab; ++i) kept += bucket_of(probs[size_t(i)]) > edge;
    for (size_t r = 0; r < ids.size(); ++r) {
      if (above < target || kept < min_keep) { keep_edge[r] = 1; above += probs[size_t(ids[r])]; ++kept; }
    }
    for (size_t r = 0; r < ids.size(); ++r)
      if (!keep_edge[r]) scores[ids[r]] = kNegInf;
    for (int64_t i = 0; i < vocab; ++i)
      if (bucket_of(probs[size_t(i)]) < edge) scores[i] = kNegInf;
  }

  if (o.min_p > 0.0f) {
    softmax_into(scores, vocab, probs);
    const float top = *std::max_element(probs.begin(), probs.end());
    const float cut = o.min_p * top;
    top_ids(probs.data(), vocab, min_keep, ids);
    std::vector<uint8_t> protect(size_t(vocab), 0);
    for (int64_t r = 0; r < std::min(min_keep, vocab); ++r) protect[size_t(ids[size_t(r)])] = 1;
    for (int64_t i = 0; i < vocab; ++i)
      if (probs[size_t(i)] < cut && !protect[size_t(i)]) scores[i] = kNegInf;
  }

  if (o.typical_p < 1.0f) {
    // Keep the tokens whose surprisal is closest to the entropy, up to typical_p mass.
    const float lse = log_sum_exp(scores, vocab);
    double ent = 0;
    std::vector<float> shifted(static_cast<size_t>(vocab));
    for (int64_t i = 0; i < vocab; ++i) {
      const float lp = scores[i] - lse;
      if (scores[i] != kNegInf) ent -= double(lp) * std::exp(double(lp));
    }
    for (int64_t i = 0; i < vocab; ++i)
      shifted[size_t(i)] = scores[i] == kNegInf ? INFINITY : std::fabs(-(scores[i] - lse) - float(ent));
    ids.resize(size_t(vocab));
    std::iota(ids.begin(), ids.end(), 0);
    std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return shifted[size_t(a)] < shifted[size_t(b)]; });
    double cum = 0;
    int64_t last = 0;
    for (int64_t r = 0; r < vocab; ++r) {
      const float s = scores[ids[size_t(r)]];
      cum += s == kNegInf ? 0.0 : std::exp(double(s - lse));
      if (cum < double(o.typical_p)) last = r + 1;
      else break;
    }
    last = std::min(last, vocab - 1);
    const float limit = shifted[size_t(ids[size_t(last)])];
    for (int64_t r = std::max<int64_t>(min_keep, 0); r < vocab; ++r)
      if (shifted[size_t(ids[size_t(r)])] > limit) scores[ids[size_t(r)]] = kNegInf;
  }
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
