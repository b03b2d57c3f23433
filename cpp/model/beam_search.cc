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

// Orders indices into v by value, largest first; ties put the lower index first.
struct Better {
  const float* v;
  bool operator()(int64_t a, int64_t b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

// Indices of the k largest of v[0, n), in Better's order.
std::vector<int64_t> topk_indices(const float* v, int64_t n, int64_t k) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  k = std::min(k, n);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), Better{v});
  idx.resize(size_t(k));
  return idx;
}

std::vector<int64_t> topk_indices(const std::vector<float>& v, int64_t k) { return topk_indices(v.data(), int64_t(v.size()), k); }

// topk_indices of v [rows, cols], found row by row with a cancellation check between rows:
// each of the k best is among the k best of its row, so the result is the same.
std::vector<int64_t> topk_rows(const std::vector<float>& v, int64_t rows, int64_t cols, int64_t k, CancelCheck& check) {
  std::vector<int64_t> cand;
  for (int64_t r = 0; r < rows; ++r) {
    check();
    for (int64_t i : topk_indices(v.data() + r * cols, cols, k)) cand.push_back(r * cols + i);
  }
  k = std::min(k, int64_t(cand.size()));
  std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), Better{v.data()});
  cand.resize(size_t(k));
  return cand;
}

// The continuations kept at one step, best first: the top `keep` (beam, token) pairs.
struct Step {
  std::vector<Candidate> cand;
  std::vector<uint8_t> hits;     // [cand] ends here: an EOS token, or the length limit
  bool all_hit = true;
  std::vector<float> run_scores;  // [cand] score as a running beam (-kLarge when it ended)
  std::vector<int64_t> next;      // [B] the candidates that become the running beams
};

// One beam search over one prompt. B running beams, each with its own session (KV cache),
// token history and generated tokens, and a finished set of B sequences with their
// length-penalized scores.
class BeamSearch {
 public:
  BeamSearch(Model& model, const std::vector<int32_t>& prompt, const DecodeOptions& o, CancelCheck& check)
      : model_(model), o_(o), check_(check), V_(model.spec().vocab_size), B_(o.num_beams), p0_(int64_t(prompt.size())),
        max_length_(p0_ + o.max_new_tokens),
        keep_(std::max<int64_t>(2, 1 + int64_t(o.eos_token_ids.size())) * B_),
        rng_(o.seed) {
    init_beams(prompt);
  }

  std::vector<SequenceResult> run() {
    for (int64_t cur_len = p0_;; ++cur_len) {
      score_candidates();
      Step step = select_candidates(cur_len);
      update_finished(step, cur_len);
      reorder_beams(step);
      if (should_stop(step, cur_len)) break;
      forward_beams();
    }
    return finalize();
  }

 private:
  // Prefill once and give every beam a copy of the cache; all beams start as the prompt,
  // only the first one counts.
  void init_beams(const std::vector<int32_t>& prompt) {
    for (int64_t b = 0; b < B_; ++b) {
      sessions_.push_back(std::make_unique<Session>(model_));
      spare_.push_back(std::make_unique<Session>(model_));
    }
    hist_.assign(size_t(B_), TokenHistory(prompt, V_));
    running_.assign(size_t(B_), {});
    running_score_.assign(size_t(B_), -kLarge);
    running_score_[0] = 0.f;
    fin_seq_.assign(size_t(B_), {});
    fin_score_.assign(size_t(B_), -kLarge);
    fin_done_.assign(size_t(B_), 0);
    logits_.resize(size_t(B_ * V_));
    acc_.resize(size_t(B_ * V_));
    model_.forward(*sessions_[0], prompt.data(), p0_, logits_.data(), false, &check_);
    for (int64_t b = 1; b < B_; ++b) {
      check_();
      sessions_[size_t(b)]->copy_from(*sessions_[0]);
      std::copy(logits_.begin(), logits_.begin() + V_, logits_.begin() + b * V_);
    }
  }

  // acc [B, V]: the accumulated score of every (beam, token) continuation.
  void score_candidates() {
    const int64_t n_eos = int64_t(o_.eos_token_ids.size());
    for (int64_t b = 0; b < B_; ++b) {
      check_();
      float* row = logits_.data() + b * V_;
      const float lse = log_sum_exp(row, V_);
      for (int64_t v = 0; v < V_; ++v) row[v] -= lse;
      process_scores(o_, hist_[size_t(b)], row, V_, n_eos + 1);
      for (int64_t v = 0; v < V_; ++v) acc_[size_t(b * V_ + v)] = row[v] + running_score_[size_t(b)];
    }
  }

  // The best `keep` continuations (or, sampling, `keep` drawn ones), which of them end, and
  // the B that go on running.
  Step select_candidates(int64_t cur_len) {
    std::vector<int64_t> top;
    if (o_.do_sample) {
      // Sampling without replacement in proportion to softmax(acc): the Gumbel-top-k trick;
      // then ordered by accumulated score, as transformers sorts its multinomial draws.
      std::vector<float> keyed(acc_);
      std::uniform_real_distribution<double> U(1e-12, 1.0);
      for (int64_t b = 0; b < B_; ++b) {
        check_();
        for (int64_t v = b * V_; v < (b + 1) * V_; ++v)
          if (keyed[size_t(v)] != -INFINITY) keyed[size_t(v)] += float(-std::log(-std::log(U(rng_))));
      }
      top = topk_rows(keyed, B_, V_, keep_, check_);
      std::stable_sort(top.begin(), top.end(), [&](int64_t a, int64_t b) { return acc_[size_t(a)] > acc_[size_t(b)]; });
    } else {
      top = topk_rows(acc_, B_, V_, keep_, check_);
    }
    Step step;
    step.hits.resize(top.size());
    for (size_t c = 0; c < top.size(); ++c) {
      const Candidate k{acc_[size_t(top[c])], top[c] / V_, int32_t(top[c] % V_)};
      step.cand.push_back(k);
      step.hits[c] = std::find(o_.eos_token_ids.begin(), o_.eos_token_ids.end(), k.token) != o_.eos_token_ids.end() ||
                     cur_len + 1 >= max_length_;
      step.all_hit = step.all_hit && step.hits[c];
    }
    // Next running beams: the best continuations that did not end.
    step.run_scores.resize(step.cand.size());
    for (size_t c = 0; c < step.cand.size(); ++c)
      step.run_scores[c] = step.cand[c].score + (step.hits[c] ? -kLarge : 0.f);
    step.next = topk_indices(step.run_scores, B_);
    return step;
  }

  // Finished set: merge the ones that just ended (among the top B) with those kept so far.
  void update_finished(const Step& step, int64_t cur_len) {
    const std::vector<Candidate>& cand = step.cand;
    const float denom = float(std::pow(double(cur_len + 1 - p0_), o_.length_penalty));
    const bool all_done = std::all_of(fin_done_.begin(), fin_done_.end(), [](uint8_t d) { return d != 0; });
    std::vector<float> merged(fin_score_);
    std::vector<uint8_t> just(cand.size());
    for (size_t c = 0; c < cand.size(); ++c) {
      just[c] = step.hits[c] && int64_t(c) < B_;
      float s = cand[c].score / denom;
      if (all_done && o_.early_stopping == 1) s += -kLarge;
      if (!heuristic_unsatisfied_) s += -kLarge;
      if (!just[c]) s += -kLarge;
      merged.push_back(s);
    }
    const std::vector<int64_t> best = topk_indices(merged, B_);
    std::vector<std::vector<int32_t>> new_seq;
    std::vector<float> new_score;
    std::vector<uint8_t> new_done;
    for (int64_t m : best) {
      if (m < B_) {
        new_seq.push_back(fin_seq_[size_t(m)]);
        new_done.push_back(fin_done_[size_t(m)]);
      } else {
        const Candidate& k = cand[size_t(m - B_)];
        std::vector<int32_t> s = running_[size_t(k.beam)];
        s.push_back(k.token);
        new_seq.push_back(std::move(s));
        new_done.push_back(just[size_t(m - B_)]);
      }
      new_score.push_back(merged[size_t(m)]);
    }
    fin_seq_.swap(new_seq);
    fin_score_.swap(new_score);
    fin_done_.swap(new_done);
  }

  // Reorder the running beams (sequences, histories, caches) to the chosen continuations.
  void reorder_beams(const Step& step) {
    std::vector<std::vector<int32_t>> new_running;
    std::vector<TokenHistory> new_hist;
    std::vector<float> new_running_score;
    for (int64_t b = 0; b < B_; ++b) {
      check_();  // each copies a whole cache
      const Candidate& k = step.cand[size_t(step.next[size_t(b)])];
      std::vector<int32_t> s = running_[size_t(k.beam)];
      s.push_back(k.token);
      new_running.push_back(std::move(s));
      new_hist.push_back(hist_[size_t(k.beam)]);
      new_hist.back().push(k.token);
      new_running_score.push_back(step.run_scores[size_t(step.next[size_t(b)])]);
      spare_[size_t(b)]->copy_from(*sessions_[size_t(k.beam)]);
    }
    sessions_.swap(spare_);
    running_.swap(new_running);
    hist_.swap(new_hist);
    running_score_.swap(new_running_score);
  }

  // Stop when no running beam can beat the worst finished one, or by early_stopping.
  bool should_stop(const Step& step, int64_t cur_len) {
    const double lp_exp = o_.length_penalty;
    const int64_t gen_len = cur_len + 1;
    const double best_len = (o_.early_stopping == 2 && lp_exp > 0.0) ? double(max_length_ - p0_) : double(gen_len - p0_);
    const float best_possible = running_score_[0] / float(std::pow(best_len, lp_exp));
    const float worst_fin = *std::min_element(fin_score_.begin(), fin_score_.end());
    bool improvable = false;
    for (int64_t b = 0; b < B_; ++b) improvable = improvable || best_possible > (fin_done_[size_t(b)] ? worst_fin : -kLarge);
    heuristic_unsatisfied_ = heuristic_unsatisfied_ && improvable;
    const bool all_fin = std::all_of(fin_done_.begin(), fin_done_.end(), [](uint8_t d) { return d != 0; });
    const bool open_beam = !(all_fin && o_.early_stopping == 1);
    return !(heuristic_unsatisfied_ && open_beam && !step.all_hit);
  }

  // logits [B, V]: one forward of every running beam's last token.
  void forward_beams() {
    std::vector<SeqChunk> chunks;
    for (int64_t b = 0; b < B_; ++b) chunks.push_back({sessions_[size_t(b)].get(), &running_[size_t(b)].back(), 1});
    model_.forward(chunks, logits_.data(), false, &check_);
  }

  std::vector<SequenceResult> finalize() const {
    std::vector<SequenceResult> out;
    for (int64_t r = 0; r < o_.num_return_sequences; ++r) {
      SequenceResult s;
      s.tokens = fin_seq_[size_t(r)];
      s.score = fin_score_[size_t(r)];
      const bool eos = !s.tokens.empty() &&
                       std::find(o_.eos_token_ids.begin(), o_.eos_token_ids.end(), s.tokens.back()) != o_.eos_token_ids.end();
      s.finish = eos ? FinishReason::Eos : FinishReason::Length;
      out.push_back(std::move(s));
    }
    return out;
  }

  Model& model_;
  const DecodeOptions& o_;
  CancelCheck& check_;
  const int64_t V_, B_, p0_, max_length_, keep_;
  std::mt19937_64 rng_;
  // Running beams: [B] each.
  std::vector<std::unique_ptr<Session>> sessions_, spare_;  // spare_: the caches being reordered into
  std::vector<TokenHistory> hist_;
  std::vector<std::vector<int32_t>> running_;  // generated tokens
  std::vector<float> running_score_;           // accumulated log-prob
  // Finished set: [B] each.
  std::vector<std::vector<int32_t>> fin_seq_;
  std::vector<float> fin_score_;  // length-penalized
  std::vector<uint8_t> fin_done_;
  bool heuristic_unsatisfied_ = true;
  std::vector<float> logits_, acc_;  // [B, V]
};

}  // namespace

std::vector<SequenceResult> beam_search(Model& model, const std::vector<int32_t>& prompt, const DecodeOptions& o,
                                        CancelCheck* cancel) {
  if (o.max_new_tokens == 0) return std::vector<SequenceResult>(size_t(o.num_return_sequences));
  CancelCheck never;
  return BeamSearch(model, prompt, o, cancel ? *cancel : never).run();
}

}  // namespace llmos
