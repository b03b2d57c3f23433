// Beam search with the semantics of transformers' _beam_search (v5): keep the best
// max(2, 1 + n_eos) * num_beams continuations per step, move those of the top num_beams
// that end (EOS or max length) into the finished set, scored as
// sum(logprobs) / generated_length ** length_penalty, and stop by the same early-stopping
// rules. Processors work on log_softmax(logits), as in transformers.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>

#include "core/errors.h"
#include "model/generate.h"
#include "sampling/processors.h"
#include "sampling/sampler.h"

namespace llmos {

namespace {

constexpr float kLarge = 1.0e9f;

struct Candidate {
  float score;   // accumulated log-prob
  int64_t beam;  // parent beam
  int32_t token;
};

// Indices of the k largest values, largest first; ties keep the lower index first.
std::vector<int64_t> topk_indices(const std::vector<float>& v, int64_t k) {
  std::vector<int64_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [&](int64_t a, int64_t b) { return v[size_t(a)] > v[size_t(b)] || (v[size_t(a)] == v[size_t(b)] && a < b); };
  k = std::min<int64_t>(k, int64_t(v.size()));
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), better);
  idx.resize(size_t(k));
  return idx;
}

}  // namespace

std::vector<SequenceResult> beam_search(Model& model, const std::vector<int32_t>& prompt, const DecodeOptions& o) {
  const int64_t V = model.spec().vocab_size, B = o.num_beams;
  const int64_t p0 = int64_t(prompt.size());
  const int64_t max_length = p0 + o.max_new_tokens;
  const int64_t n_eos = int64_t(o.eos_token_ids.size());
  const int64_t keep = std::max<int64_t>(2, 1 + n_eos) * B;
  const double lp_exp = o.length_penalty;
  if (o.max_new_tokens == 0) return std::vector<SequenceResult>(size_t(o.num_return_sequences));

  std::vector<std::unique_ptr<Session>> sessions, spare;
  for (int64_t b = 0; b < B; ++b) {
    sessions.push_back(std::make_unique<Session>(model));
    spare.push_back(std::make_unique<Session>(model));
  }
  std::vector<TokenHistory> hist(size_t(B), TokenHistory(prompt, V));
  std::vector<std::vector<int32_t>> running(static_cast<size_t>(B));  // generated tokens of each running beam
  std::vector<float> running_score(size_t(B), -kLarge);
  running_score[0] = 0.f;  // all beams start as the prompt; only the first one counts

  std::vector<std::vector<int32_t>> fin_seq(static_cast<size_t>(B));
  std::vector<float> fin_score(size_t(B), -kLarge);
  std::vector<uint8_t> fin_done(size_t(B), 0);
  bool heuristic_unsatisfied = true;
  std::mt19937_64 rng(o.seed);

  // Prefill once and give every beam a copy of the cache.
  std::vector<float> logits(size_t(B * V));
  model.forward(*sessions[0], prompt.data(), p0, logits.data(), false);
  for (int64_t b = 1; b < B; ++b) {
    sessions[size_t(b)]->copy_from(*sessions[0]);
    std::copy(logits.begin(), logits.begin() + V, logits.begin() + b * V);
  }

  std::vector<float> acc(size_t(B * V));
  for (int64_t cur_len = p0;; ++cur_len) {
    // Scores of every (beam, token) continuation.
    for (int64_t b = 0; b < B; ++b) {
      float* row = logits.data() + b * V;
      const float lse = log_sum_exp(row, V);
      for (int64_t v = 0; v < V; ++v) row[v] -= lse;
      process_scores(o, hist[size_t(b)], row, V, n_eos + 1);
      for (int64_t v = 0; v < V; ++v) acc[size_t(b * V + v)] = row[v] + running_score[size_t(b)];
    }
    std::vector<int64_t> top;
    if (o.do_sample) {
      // Sampling without replacement in proportion to softmax(acc): the Gumbel-top-k trick;
      // then ordered by accumulated score, as transformers sorts its multinomial draws.
      std::vector<float> keyed(acc);
      std::uniform_real_distribution<double> U(1e-12, 1.0);
      for (float& k : keyed)
        if (k != -INFINITY) k += float(-std::log(-std::log(U(rng))));
      top = topk_indices(keyed, keep);
      std::stable_sort(top.begin(), top.end(), [&](int64_t a, int64_t b) { return acc[size_t(a)] > acc[size_t(b)]; });
    } else {
      top = topk_indices(acc, keep);
    }
    std::vector<Candidate> cand;
    std::vector<uint8_t> hits(top.size());
    bool all_hit = true;
    for (size_t c = 0; c < top.size(); ++c) {
      const Candidate k{acc[size_t(top[c])], top[c] / V, int32_t(top[c] % V)};
      cand.push_back(k);
      hits[c] = std::find(o.eos_token_ids.begin(), o.eos_token_ids.end(), k.token) != o.eos_token_ids.end() ||
                cur_len + 1 >= max_length;
      all_hit = all_hit && hits[c];
    }

    // Next running beams: the best continuations that did not end.
    std::vector<float> run_scores(cand.size());
    for (size_t c = 0; c < cand.size(); ++c) run_scores[c] = cand[c].score + (hits[c] ? -kLarge : 0.f);
    const std::vector<int64_t> next = topk_indices(run_scores, B);

    // Finished set: merge the ones that just ended (among the top B) with those kept so far.
    const float denom = float(std::pow(double(cur_len + 1 - p0), lp_exp));
    const bool all_done = std::all_of(fin_done.begin(), fin_done.end(), [](uint8_t d) { return d != 0; });
    std::vector<float> merged(fin_score);
    std::vector<uint8_t> just(cand.size());
    for (size_t c = 0; c < cand.size(); ++c) {
      just[c] = hits[c] && int64_t(c) < B;
      float s = cand[c].score / denom;
      if (all_done && o.early_stopping == 1) s += -kLarge;
      if (!heuristic_unsatisfied) s += -kLarge;
      if (!just[c]) s += -kLarge;
      merged.push_back(s);
    }
    const std::vector<int64_t> best = topk_indices(merged, B);
    std::vector<std::vector<int32_t>> new_seq;
    std::vector<float> new_score;
    std::vector<uint8_t> new_done;
    for (int64_t m : best) {
      if (m < B) {
        new_seq.push_back(fin_seq[size_t(m)]);
        new_done.push_back(fin_done[size_t(m)]);
      } else {
        const Candidate& k = cand[size_t(m - B)];
        std::vector<int32_t> s = running[size_t(k.beam)];
        s.push_back(k.token);
        new_seq.push_back(std::move(s));
        new_done.push_back(just[size_t(m - B)]);
      }
      new_score.push_back(merged[size_t(m)]);
    }
    fin_seq.swap(new_seq);
    fin_score.swap(new_score);
    fin_done.swap(new_done);

    // Reorder the running beams (sequences, histories, caches) to the chosen continuations.
    std::vector<std::vector<int32_t>> new_running;
    std::vector<TokenHistory> new_hist;
    std::vector<float> new_running_score;
    for (int64_t b = 0; b < B; ++b) {
      const Candidate& k = cand[size_t(next[size_t(b)])];
      std::vector<int32_t> s = running[size_t(k.beam)];
      s.push_back(k.token);
      new_running.push_back(std::move(s));
      new_hist.push_back(hist[size_t(k.beam)]);
      new_hist.back().push(k.token);
      new_running_score.push_back(run_scores[size_t(next[size_t(b)])]);
      spare[size_t(b)]->copy_from(*sessions[size_t(k.beam)]);
    }
    sessions.swap(spare);
    running.swap(new_running);
    hist.swap(new_hist);
    running_score.swap(new_running_score);

    // Stop when no running beam can beat the worst finished one, or by early_stopping.
    const int64_t gen_len = cur_len + 1;
    const double best_len = (o.early_stopping == 2 && lp_exp > 0.0) ? double(max_length - p0) : double(gen_len - p0);
    const float best_possible = running_score[0] / float(std::pow(best_len, lp_exp));
    const float worst_fin = *std::min_element(fin_score.begin(), fin_score.end());
    bool improvable = false;
    for (int64_t b = 0; b < B; ++b) improvable = improvable || best_possible > (fin_done[size_t(b)] ? worst_fin : -kLarge);
    heuristic_unsatisfied = heuristic_unsatisfied && improvable;
    const bool all_fin = std::all_of(fin_done.begin(), fin_done.end(), [](uint8_t d) { return d != 0; });
    const bool open_beam = !(all_fin && o.early_stopping == 1);
    if (!(heuristic_unsatisfied && open_beam && !all_hit)) break;

    std::vector<SeqChunk> chunks;
    for (int64_t b = 0; b < B; ++b) chunks.push_back({sessions[size_t(b)].get(), &running[size_t(b)].back(), 1});
    model.forward(chunks, logits.data(), false);
  }

  std::vector<SequenceResult> out;
  for (int64_t r = 0; r < o.num_return_sequences; ++r) {
    SequenceResult s;
    s.tokens = fin_seq[size_t(r)];
    s.score = fin_score[size_t(r)];
    const bool eos = !s.tokens.empty() &&
                     std::find(o.eos_token_ids.begin(), o.eos_token_ids.end(), s.tokens.back()) != o.eos_token_ids.end();
    s.finish = eos ? FinishReason::Eos : FinishReason::Length;
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace llmos
