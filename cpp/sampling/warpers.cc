#include "sampling/warpers.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "sampling/processors.h"

namespace llmos {

namespace {
constexpr float kNegInf = -INFINITY;

// Per-thread scratch, reused across calls: a warper runs once per token of every sequence.
thread_local std::vector<int32_t> ids;
thread_local std::vector<float> probs;

// probs = softmax(scores); -inf entries get 0.
void softmax_into(const float* scores, int64_t n, std::vector<float>& out) {
  out.resize(size_t(n));
  float m = kNegInf;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, scores[i]);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float e = scores[i] == kNegInf ? 0.f : std::exp(scores[i] - m);
    out[size_t(i)] = e;
    s += e;
  }
  const float inv = float(1.0 / s);
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] *= inv;
}

// Ids sorted by descending score, computed lazily: only the best `want` are ordered.
// Ties put the lower id first, or the higher one with high_first (the order in which a
// stable ascending sort, read from its end, lists them: top-p's view).
void top_ids(const float* scores, int64_t vocab, int64_t want, std::vector<int32_t>& out, bool high_first = false) {
  out.resize(size_t(vocab));
  std::iota(out.begin(), out.end(), 0);
  auto better = [&](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && (high_first ? a > b : a < b));
  };
  want = std::min(want, vocab);
  if (want < vocab) std::nth_element(out.begin(), out.begin() + want, out.end(), better);
  std::sort(out.begin(), out.begin() + want, better);
}

// The min_keep-th best score: a token scoring at least this survives the probability cuts
// (epsilon, eta), as in transformers.
float kth_best(const float* scores, int64_t vocab, int64_t min_keep) {
  const int64_t k = std::min(min_keep, vocab);
  top_ids(scores, vocab, k, ids);
  return scores[ids[size_t(k - 1)]];
}

// Entropy (nats) of softmax(scores).
double entropy(const float* scores, int64_t vocab) {
  float m = kNegInf;
  for (int64_t i = 0; i < vocab; ++i) m = std::max(m, scores[i]);
  double z = 0, zx = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (scores[i] == kNegInf) continue;
    const double x = double(scores[i] - m), e = std::exp(x);
    z += e;
    zx += e * x;
  }
  return std::log(z) - zx / z;
}

void temperature(float t, float* scores, int64_t vocab) {
  for (int64_t i = 0; i < vocab; ++i) scores[i] /= t;
}

// Top-h: among the 100 best tokens (renormalized), keep the most probable ones while their
// cumulative entropy terms -p log p stay <= top_h * the entropy of those 100.
void top_h(float h, float* scores, int64_t vocab) {
  const int64_t n = std::min<int64_t>(100, vocab);
  top_ids(scores, vocab, n, ids);
  const float m = scores[ids[0]];
  if (m == kNegInf) return;
  double z = 0;
  for (int64_t r = 0; r < n; ++r) {
    const float s = scores[ids[size_t(r)]];
    z += s == kNegInf ? 0.0 : std::exp(double(s - m));
  }
  // In float, as torch holds them: a probability that underflows to 0 makes its -p log p
  // NaN in transformers, which drops it and every token after it.
  probs.resize(size_t(n));
  double ent = 0;
  for (int64_t r = 0; r < n; ++r) {
    const float s = scores[ids[size_t(r)]], p = s == kNegInf ? 0.f : float(std::exp(double(s - m)) / z);
    probs[size_t(r)] = p;
    if (p > 0.f) ent -= double(p) * std::log(double(p));
  }
  const double tau = ent * double(h);
  int64_t kept = 0;
  // The cumulative entropy only grows: keep the best tokens up to the first that passes tau.
  for (double cum = 0; kept < n && probs[size_t(kept)] > 0.f; ++kept) {
    cum -= double(probs[size_t(kept)]) * std::log(double(probs[size_t(kept)]));
    if (kept > 0 && cum > tau) break;
  }
  std::vector<uint8_t> keep(size_t(vocab), 0);
  for (int64_t r = 0; r < kept; ++r) keep[size_t(ids[size_t(r)])] = 1;
  for (int64_t i = 0; i < vocab; ++i)
    if (!keep[size_t(i)]) scores[i] = kNegInf;
}

void top_k(int64_t k, float* scores, int64_t vocab, int64_t min_keep) {
  k = std::min(std::max(k, min_keep), vocab);
  if (k >= vocab) return;
  top_ids(scores, vocab, k, ids);
  const float kth = scores[ids[size_t(k - 1)]];
  for (int64_t i = 0; i < vocab; ++i)
    if (scores[i] < kth) scores[i] = kNegInf;  // ties with the k-th stay, as in transformers
}

// transformers drops a token when the probability mass strictly above it (in descending
// order) is >= top_p. The kept set is found without sorting the vocabulary: one pass sums
// the mass per bucket of float bit patterns (monotone for p >= 0), the bucket where the
// running mass reaches top_p is the only one that needs ordering.
void top_p(float top, float* scores, int64_t vocab, int64_t min_keep) {
  softmax_into(scores, vocab, probs);
  constexpr int kShift = 19;  // 2^13 buckets: sign, exponent and 4 mantissa bits
  thread_local std::vector<double> bucket_mass;
  bucket_mass.assign(size_t(1) << (32 - kShift), 0.0);
  auto bucket_of = [](float p) { uint32_t u; std::memcpy(&u, &p, 4); return u >> kShift; };
  for (int64_t i = 0; i < vocab; ++i) bucket_mass[bucket_of(probs[size_t(i)])] += probs[size_t(i)];
  const double target = double(top);
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

void min_p(float p, float* scores, int64_t vocab, int64_t min_keep) {
  softmax_into(scores, vocab, probs);
  const float cut = p * *std::max_element(probs.begin(), probs.end());
  top_ids(probs.data(), vocab, min_keep, ids);
  std::vector<uint8_t> protect(size_t(vocab), 0);
  for (int64_t r = 0; r < std::min(min_keep, vocab); ++r) protect[size_t(ids[size_t(r)])] = 1;
  for (int64_t i = 0; i < vocab; ++i)
    if (probs[size_t(i)] < cut && !protect[size_t(i)]) scores[i] = kNegInf;
}

// Keeps the tokens whose surprisal is closest to the entropy, up to typical_p mass.
void typical(float mass, float* scores, int64_t vocab, int64_t min_keep) {
  const float lse = log_sum_exp(scores, vocab);
  double ent = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const float lp = scores[i] - lse;
    if (scores[i] != kNegInf) ent -= double(lp) * std::exp(double(lp));
  }
  std::vector<float> shifted(static_cast<size_t>(vocab));
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
    if (cum < double(mass)) last = r + 1;
    else break;
  }
  last = std::min(last, vocab - 1);
  const float limit = shifted[size_t(ids[size_t(last)])];
  for (int64_t r = std::max<int64_t>(min_keep, 0); r < vocab; ++r)
    if (shifted[size_t(ids[size_t(r)])] > limit) scores[ids[size_t(r)]] = kNegInf;
}

// Removes the tokens with probability < cut, except those scoring at least the min_keep-th best.
void cut_below(float cut, float* scores, int64_t vocab, int64_t min_keep) {
  softmax_into(scores, vocab, probs);
  const float kth = kth_best(scores, vocab, min_keep);
  for (int64_t i = 0; i < vocab; ++i)
    if (probs[size_t(i)] < cut && scores[i] < kth) scores[i] = kNegInf;
}

void epsilon(float eps, float* scores, int64_t vocab, int64_t min_keep) { cut_below(eps, scores, vocab, min_keep); }

// Eta: the epsilon cut lowered to sqrt(eta) * exp(-entropy) when that is smaller.
void eta(float e, float* scores, int64_t vocab, int64_t min_keep) {
  const float by_entropy = std::sqrt(e) * std::exp(-float(entropy(scores, vocab)));
  cut_below(std::min(e, by_entropy), scores, vocab, min_keep);
}

}  // namespace

// The chain, in the order of transformers' _get_logits_processor.
void apply_warpers(const DecodeOptions& o, float* scores, int64_t vocab, int64_t min_keep) {
  if (o.temperature != 1.0f) temperature(o.temperature, scores, vocab);
  if (o.top_h > 0.0f) top_h(o.top_h, scores, vocab);
  if (o.top_k > 0) top_k(o.top_k, scores, vocab, min_keep);
  if (o.top_p < 1.0f) top_p(o.top_p, scores, vocab, min_keep);
  if (o.min_p > 0.0f) min_p(o.min_p, scores, vocab, min_keep);
  if (o.typical_p < 1.0f) typical(o.typical_p, scores, vocab, min_keep);
  if (o.epsilon_cutoff > 0.0f) epsilon(o.epsilon_cutoff, scores, vocab, min_keep);
  if (o.eta_cutoff > 0.0f) eta(o.eta_cutoff, scores, vocab, min_keep);
}

}  // namespace llmos
