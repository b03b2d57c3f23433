#include "serving/engine.h"

#include <algorithm>
#include <atomic>
#include <future>
#include <list>

#include "model/kv_cache.h"
#include "sampling/processors.h"
#include "sampling/sampler.h"

namespace llmos {

namespace {

bool is_eos(const DecodeOptions& o, int32_t t) {
  return std::find(o.eos_token_ids.begin(), o.eos_token_ids.end(), t) != o.eos_token_ids.end();
}

void require(bool ok, const std::string& field, const std::string& what) {
  if (!ok) throw Error(Error::Kind::InvalidInput, "", field, what);
}

}  // namespace

void EngineOptions::validate() const {
  require(max_batch_tokens >= 1, "max_batch_tokens", "must be >= 1, got " + std::to_string(max_batch_tokens));
  require(prefill_chunk >= 1 && prefill_chunk <= max_batch_tokens, "prefill_chunk",
          "must be from 1 to max_batch_tokens (" + std::to_string(max_batch_tokens) + "), got " +
              std::to_string(prefill_chunk));
  require(block_tokens >= 1 && block_tokens <= 4096, "block_tokens",
          "must be from 1 to 4096, got " + std::to_string(block_tokens));
  require(kv_budget_bytes >= 1, "kv_memory", "must be positive, got " + std::to_string(kv_budget_bytes));
  require(max_running >= 1, "max_running", "must be >= 1, got " + std::to_string(max_running));
  require(max_waiting >= 0, "max_waiting", "must be >= 0, got " + std::to_string(max_waiting));
}

// ---- state ------------------------------------------------------------------------------

struct Engine::Seq {
  enum class State { Idle, Waiting, Running, Done };  // Idle: a sibling not yet forked
  Seq(Request* r, int64_t i, const std::vector<int32_t>& prompt, int64_t vocab, const DecodeOptions& o, uint64_t seed)
      : req(r), index(i), hist(prompt, vocab), sampler(o, seed) {}
  Request* req;
  int64_t index;
  TokenHistory hist;  // prompt + generated: what the cache must hold before the next sample
  Sampler sampler;
  std::unique_ptr<Session> session;
  std::shared_ptr<TokenConstraint> constraint;
  std::vector<uint32_t> mask;
  std::exception_ptr mask_error;
  State state = State::Idle;
  uint64_t order = 0;      // admission order: larger is younger
  bool scheduled = false;  // has a chunk in this step
  int64_t blocks = 0;      // blocks held (the stand-in pool's accounting)

  int64_t n_past() const { return session ? session->n_past() : 0; }
  int64_t total() const { return int64_t(hist.tokens().size()); }
};

struct Engine::Request {
  int64_t id = 0;
  EngineRequest r;
  std::shared_ptr<CancelToken> token;  // the caller's as parent; cancel() sets this one
  std::vector<std::unique_ptr<Seq>> seqs;
  int64_t ended = 0;
  bool over = false, admitted = false, forked = false;
  int64_t n() const { return int64_t(seqs.size()); }
};

// The KV cache of the engine's sequences: blocks of one budget. Paged (model/kv_cache.h): a
// KvPool whose blocks sequences share (fork, prefix cache). A longrope model cannot share
// blocks (its keys are recomputed past the switch length), and a model on the GPU has no paged
// cache there yet, so then each sequence keeps a contiguous cache and the pool's budget is
// only counted: same admission and preemption.
class Engine::Kv {
 public:
  Kv(Model& m, const EngineOptions& o) : model_(m), bt_(o.block_tokens) {
    const KvDtype dtype = kv_dtype_from_name(o.kv_dtype);
    const Architecture& a = m.spec();
    const int64_t block = KvPool::block_bytes(a, dtype, bt_);
    if (a.rope.inv_freq_long.empty() && !m.cuda()) {
      pool_ = std::make_unique<KvPool>(a, dtype, bt_, o.kv_budget_bytes);
      total_ = pool_->num_blocks();
      return;
    }
    require(dtype == KvDtype::F32, "kv_dtype",
            std::string(m.cuda() ? "a model on the GPU" : "a longrope model") +
                " keeps a float32 contiguous cache per sequence, got " + o.kv_dtype);
    total_ = o.kv_budget_bytes / block;
    require(total_ >= 1, "kv_memory",
            std::to_string(o.kv_budget_bytes) + " bytes hold no block of " + std::to_string(bt_) + " tokens (" +
                std::to_string(block) + " bytes)");
  }
  bool paged() const { return pool_ != nullptr; }
  int64_t block_tokens() const { return bt_; }
  int64_t blocks_total() const { return total_; }
  std::unique_ptr<Session> session() { return std::make_unique<Session>(model_, pool_.get()); }
  bool grow(Seq& s, int64_t n) {
    if (pool_) return s.session->reserve_append(n);
    const int64_t need = (s.n_past() + n + bt_ - 1) / bt_ - s.blocks;
    if (need <= 0) return true;
    if (used_ + need > total_) return false;
    used_ += need;
    s.blocks += need;
    return true;
  }
  int64_t adopt(Seq& s, const int32_t* tokens, int64_t n) { return pool_ ? s.session->adopt_prefix(tokens, n) : 0; }
  void publish(Seq& s) {
    if (pool_) s.session->publish();
  }
  void fork(Seq& dst, const Seq& src) {
    if (pool_) {
      dst.session->fork_from(*src.session);
      return;
    }
    dst.session->copy_from(*src.session);
    used_ += src.blocks;
    dst.blocks = src.blocks;
  }
  void release(Seq& s) {
    if (!s.session) return;
    if (pool_) {
      s.session->release();
      return;
    }
    used_ -= s.blocks;
    s.blocks = 0;
    s.session = session();
  }
  void stats(EngineStats& st) const {
    st.kv_blocks_total = total_;
    if (!pool_) {
      st.kv_blocks_used = used_;
      return;
    }
    const KvPool::Stats p = pool_->stats();
    st.kv_blocks_used = p.blocks_used;
    st.kv_blocks_cached = p.blocks_cached;
    st.prefix_queries = p.prefix_queries;
    st.prefix_hits = p.prefix_hits;
  }
  void forward(const std::vector<SeqChunk>& chunks, float* logits, CancelCheck* check) {
    // forward() for the contiguous fallback: it re-prefills a longrope sequence at the switch.
    if (pool_) model_.forward_step(chunks, logits, check);
    else model_.forward(chunks, logits, false, check);
  }

 private:
  Model& model_;
  int64_t bt_, total_ = 0, used_ = 0;
  std::unique_ptr<KvPool> pool_;
};

// ---- the public side --------------------------------------------------------------------

Engine::Engine(Model& model, const EngineOptions& options) : model_(model), opt_(options) {
  opt_.validate();
  kv_ = std::make_unique<Kv>(model, opt_);
  publish_stats();
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() { shutdown(); }

int64_t Engine::submit(EngineRequest in) {
  const Architecture& spec = model_.spec();
  const DecodeOptions& o = in.options;
  o.validate(spec.vocab_size);
  require(!in.prompt.empty(), "prompt", "needs at least one token");
  for (int32_t t : in.prompt)
    require(t >= 0 && t < spec.vocab_size, "prompt",
            "token id " + std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(spec.vocab_size) + ")");
  if (int64_t(in.prompt.size()) + o.max_new_tokens > spec.max_position_embeddings)
    throw Error(Error::Kind::Context, "", "max_new_tokens",
                "prompt of " + std::to_string(in.prompt.size()) + " tokens plus " + std::to_string(o.max_new_tokens) +
                    " new tokens exceeds the context of " + std::to_string(spec.max_position_embeddings));
  const int64_t n = o.num_return_sequences;
  require(in.constraints.empty() || int64_t(in.constraints.size()) == n, "constraint",
          "expected one constraint per sequence (" + std::to_string(n) + "), got " + std::to_string(in.constraints.size()));
  require(in.constraints.empty() || o.num_beams == 1, "constraint", "constraints are not supported with beam search");
  for (const auto& c : in.constraints) require(c != nullptr, "constraint", "is None");

  auto r = std::make_unique<Request>();
  r->token = std::make_shared<CancelToken>(in.cancel);
  r->r = std::move(in);
  if (r->r.options.num_beams == 1)
    for (int64_t i = 0; i < n; ++i) {
      auto s = std::make_unique<Seq>(r.get(), i, r->r.prompt, spec.vocab_size, r->r.options,
                                     r->r.options.seed + uint64_t(i));
      if (!r->r.constraints.empty()) {
        s->constraint = r->r.constraints[size_t(i)];
        s->mask.resize(size_t(mask_words(spec.vocab_size)));
      }
      r->seqs.push_back(std::move(s));
    }
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) throw Error(Error::Kind::Cancelled, "", "engine", "the engine is shut down");
  // Requests wait until the step thread admits them: free batch slots count as room too.
  if (waiting_requests_ >= opt_.max_waiting + std::max<int64_t>(0, opt_.max_running - stats_.running)) return -1;
  r->id = next_id_++;
  live_[r->id] = r->token;
  ++waiting_requests_;
  const int64_t id = r->id;
  incoming_.push_back(std::move(r));
  work_cv_.notify_one();
  return id;
}

void Engine::cancel(int64_t request) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(request);
  if (it == live_.end()) return;
  it->second->cancel();
  work_cv_.notify_one();
}

void Engine::finish(int64_t request, int64_t seq) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!live_.count(request)) return;
  finishes_.emplace_back(request, seq);
  work_cv_.notify_one();
}

std::vector<EngineEvent> Engine::poll(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  event_cv_.wait_for(lock, timeout, [&] { return !events_.empty() || stop_; });
  std::vector<EngineEvent> out;
  out.swap(events_);
  return out;
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Engine::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
    for (auto& kv : live_) kv.second->cancel();
    shutdown_token_->cancel();
    work_cv_.notify_all();
    event_cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  std::vector<std::thread> beams;
  {
    std::lock_guard<std::mutex> lock(mu_);
    beams.swap(beam_threads_);
  }
  for (std::thread& t : beams) t.join();
}

// ---- the step thread --------------------------------------------------------------------

void Engine::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] {
        return stop_ || !incoming_.empty() || !finishes_.empty() || !running_.empty() || !waiting_.empty() ||
               std::any_of(live_.begin(), live_.end(), [](const auto& kv) { return kv.second->cancelled(); });
      });
      if (stop_) break;
    }
    ingest();
    step();
    publish_stats();
  }
  // Shut down: whatever is left ends as cancelled.
  ingest();
  const Error gone(Error::Kind::Cancelled, "", "engine", "the engine was shut down");
  for (auto& kv : requests_) fail(kv.second.get(), gone);
  drop_finished();
  publish_stats();
}

void Engine::ingest() {
  std::deque<std::unique_ptr<Request>> fresh;
  std::vector<std::pair<int64_t, int64_t>> finishes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fresh.swap(incoming_);
    finishes.swap(finishes_);
  }
  for (auto& up : fresh) {
    Request* r = up.get();
    if (r->r.options.num_beams > 1) {
      start_beam(up.release());
      continue;
    }
    requests_[r->id] = std::move(up);
    if (r->r.options.max_new_tokens == 0) {
      for (auto& s : r->seqs) end_seq(s.get(), FinishReason::Length);
      continue;
    }
    r->seqs[0]->state = Seq::State::Waiting;
    waiting_.push_back(r->seqs[0].get());
  }
  for (auto [id, seq] : finishes) {
    auto it = requests_.find(id);
    if (it == requests_.end() || it->second->over || seq < 0 || seq >= it->second->n()) continue;
    Seq* s = it->second->seqs[size_t(seq)].get();
    if (s->state != Seq::State::Done) end_seq(s, FinishReason::Stop);
  }
  for (auto& kv : requests_)
    if (!kv.second->over && kv.second->token->cancelled())
      fail(kv.second.get(), Error(Error::Kind::Cancelled, "", "cancel", "the request was cancelled"));
  drop_finished();
}

int64_t Engine::next_chunk(const Seq* s) const {
  const int64_t past = s->n_past(), total = s->total();
  if (total - past <= 1) return total - past;
  const int64_t boundary = (past / opt_.prefill_chunk + 1) * opt_.prefill_chunk;
  return std::min(total, boundary) - past;
}

bool Engine::grow(Seq* s, int64_t n, const std::vector<Seq*>&) {
  while (!kv_->grow(*s, n)) {
    Seq* victim = nullptr;
    for (auto it = running_.rbegin(); it != running_.rend(); ++it)
      if ((*it)->state == Seq::State::Running && !(*it)->scheduled) {
        victim = *it;
        break;
      }
    if (!victim) return false;
    preempt(victim);
    if (victim == s) return false;
  }
  return true;
}

void Engine::preempt(Seq* s) {
  kv_->release(*s);
  s->state = Seq::State::Waiting;
  waiting_.push_front(s);
  ++preemptions_;
}

void Engine::schedule(std::vector<Seq*>& batch, std::vector<int64_t>& sizes) {
  int64_t budget = opt_.max_batch_tokens;
  for (Seq* s : running_) s->scheduled = false;
  const std::vector<Seq*> order = running_;
  // Decode tokens first (they are what callers wait on), then prefill chunks; oldest first.
  for (int pass = 0; pass < 2; ++pass)
    for (Seq* s : order) {
      if (s->state != Seq::State::Running || s->scheduled) continue;
      const int64_t n = next_chunk(s);
      if ((n == 1) != (pass == 0) || n > budget) continue;
      if (!grow(s, n, batch)) continue;
      s->scheduled = true;
      batch.push_back(s);
      sizes.push_back(n);
      budget -= n;
    }
  int64_t running = 0;
  for (Seq* s : running_) running += s->state == Seq::State::Running;
  while (!waiting_.empty() && budget > 0 && running < opt_.max_running) {
    Seq* s = waiting_.front();
    if (s->state != Seq::State::Waiting) {
      waiting_.pop_front();
      continue;
    }
    if (!s->session) s->session = kv_->session();
    if (opt_.prefix_cache && s->n_past() == 0) kv_->adopt(*s, s->hist.tokens().data(), s->total());
    const int64_t n = next_chunk(s);
    if (n > budget) {
      kv_->release(*s);
      break;
    }
    if (!kv_->grow(*s, n)) {
      kv_->release(*s);
      if (running == 0 && batch.empty()) {
        // Nothing else holds blocks: this sequence can never fit.
        waiting_.pop_front();
        fail(s->req, Error(Error::Kind::InvalidInput, "", "kv_memory",
                           "the KV cache holds " + std::to_string(kv_->blocks_total()) + " blocks of " +
                               std::to_string(kv_->block_tokens()) + " tokens, too few for a sequence of " +
                               std::to_string(s->total()) + " tokens; give the engine more kv_memory"));
        continue;
      }
      break;
    }
    waiting_.pop_front();
    s->state = Seq::State::Running;
    s->order = next_order_++;
    s->scheduled = true;
    running_.push_back(s);
    ++running;
    if (!s->req->admitted) {
      s->req->admitted = true;
      std::lock_guard<std::mutex> lock(mu_);
      --waiting_requests_;
    }
    batch.push_back(s);
    sizes.push_back(n);
    budget -= n;
  }
}

void Engine::step() {
  std::vector<Seq*> batch;
  std::vector<int64_t> sizes;
  schedule(batch, sizes);
  if (batch.empty()) {
    drop_finished();
    return;
  }
  const int64_t V = model_.spec().vocab_size;
  // The masks of the sequences that sample after this forward, computed while it runs.
  std::vector<Seq*> masked;
  for (size_t i = 0; i < batch.size(); ++i)
    if (batch[i]->constraint && batch[i]->n_past() + sizes[i] == batch[i]->total()) masked.push_back(batch[i]);
  std::future<void> masks;
  if (!masked.empty())
    masks = std::async(std::launch::async, [&masked, V] {
      for (Seq* s : masked) {
        s->mask_error = nullptr;
        try {
          std::fill(s->mask.begin(), s->mask.end(), 0u);
          s->constraint->fill_mask(s->mask.data(), V);
        } catch (...) {
          s->mask_error = std::current_exception();
        }
      }
    });

  std::vector<SeqChunk> chunks;
  for (size_t i = 0; i < batch.size(); ++i)
    chunks.push_back({batch[i]->session.get(), batch[i]->hist.tokens().data() + batch[i]->n_past(), sizes[i]});
  logits_.resize(batch.size() * size_t(V));
  CancelCheck check(shutdown_token_, nullptr, std::chrono::milliseconds(0));
  try {
    kv_->forward(chunks, logits_.data(), &check);
  } catch (...) {
    if (masks.valid()) masks.wait();
    const std::exception_ptr err = std::current_exception();
    for (Seq* s : batch) fail(s->req, err);
    drop_finished();
    return;
  }
  if (masks.valid()) masks.wait();
  ++steps_;

  for (size_t i = 0; i < batch.size(); ++i) {
    Seq* s = batch[i];
    Request* r = s->req;
    if (r->over || s->state != Seq::State::Running) continue;
    if (sizes[i] > 1 && opt_.prefix_cache) kv_->publish(*s);
    if (s->n_past() < s->total()) continue;  // more of the prompt to compute
    float* row = logits_.data() + i * size_t(V);
    try {
      if (s->index == 0 && r->n() > 1 && !r->forked) fork_siblings(r, row);
      if (s->mask_error) std::rethrow_exception(s->mask_error);
      sample(s, row, s->constraint ? s->mask.data() : nullptr);
    } catch (...) {
      fail(r, std::current_exception());
    }
  }
  drop_finished();
}

void Engine::fork_siblings(Request* r, const float* row) {
  // Every sibling samples its first token from the prompt's logits, then shares its blocks.
  r->forked = true;
  Seq* lead = r->seqs[0].get();
  const int64_t V = model_.spec().vocab_size;
  std::vector<float> copy(static_cast<size_t>(V));
  for (int64_t j = 1; j < r->n(); ++j) {
    Seq* s = r->seqs[size_t(j)].get();
    s->session = kv_->session();
    kv_->fork(*s, *lead);
    s->state = Seq::State::Running;
    s->order = next_order_++;
    running_.push_back(s);
    std::copy(row, row + V, copy.begin());
    if (s->constraint) {
      std::fill(s->mask.begin(), s->mask.end(), 0u);
      s->constraint->fill_mask(s->mask.data(), V);
    }
    sample(s, copy.data(), s->constraint ? s->mask.data() : nullptr);
    if (r->over) return;
  }
}

void Engine::sample(Seq* s, float* row, const uint32_t* mask) {
  // generate()'s rules, constraint included (cpp/model/generate.cc).
  const DecodeOptions& o = s->req->r.options;
  const int64_t V = model_.spec().vocab_size;
  TokenLogprobs lp;
  const int32_t tok = s->sampler.next(row, V, s->hist, o.logprobs ? &lp : nullptr, mask);
  if (mask && !mask_allows(mask, tok))  // every allowed token was banned by another option
    throw Error(Error::Kind::InvalidInput, "", "constraint",
                "no token the output constraint allows survives the other options (min_new_tokens, "
                "bad_words_ids, suppress_tokens, ...) after " + std::to_string(s->hist.n_generated()) + " tokens");
  const bool eos = is_eos(o, tok);
  if (s->constraint && !eos) s->constraint->accept(tok);
  s->hist.push(tok);
  EngineEvent e;
  e.request = s->req->id;
  e.seq = s->index;
  e.tokens.push_back(tok);
  if (o.logprobs) {
    e.logprobs.push_back(lp.logprob);
    e.top_logprobs.push_back(std::move(lp.top));
  }
  if (eos) e.finish = FinishReason::Eos;
  else if (s->hist.n_generated() >= o.max_new_tokens) e.finish = FinishReason::Length;
  else if (s->constraint && o.eos_token_ids.empty() && s->constraint->done()) e.finish = FinishReason::Stop;
  else {
    emit(std::move(e));
    return;
  }
  // This token's event is the sequence's last: end_seq adds none.
  e.finished = true;
  end_seq(s, e.finish, false);
  emit(std::move(e));
}

void Engine::end_seq(Seq* s, FinishReason why, bool own_event) {
  kv_->release(*s);
  s->state = Seq::State::Done;
  Request* r = s->req;
  if (own_event) {
    EngineEvent e;
    e.request = r->id;
    e.seq = s->index;
    e.finished = true;
    e.finish = why;
    emit(std::move(e));
  }
  if (++r->ended == r->n()) r->over = true;
}

void Engine::fail(Request* r, const Error& err, std::exception_ptr original) {
  if (r->over) return;
  for (auto& s : r->seqs) {
    if (s->state == Seq::State::Done) continue;
    kv_->release(*s);
    s->state = Seq::State::Done;
  }
  r->over = true;
  EngineEvent e;
  e.request = r->id;
  e.seq = -1;
  e.finished = true;
  e.failed = true;
  e.error_kind = err.kind();
  e.error_field = err.field();
  e.error_message = err.what();
  e.exception = std::move(original);
  emit(std::move(e));
}

void Engine::fail(Request* r, std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const Error& err) {
    fail(r, err);
    return;
  } catch (const std::exception& ex) {
    fail(r, Error(Error::Kind::InvalidInput, "", "constraint", ex.what()), e);
  } catch (...) {
    fail(r, Error(Error::Kind::InvalidInput, "", "constraint", "an unknown exception"), e);
  }
}

void Engine::drop_finished() {
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [](Seq* s) { return s->state != Seq::State::Running; }),
                 running_.end());
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                [](Seq* s) { return s->state != Seq::State::Waiting; }),
                 waiting_.end());
  std::vector<int64_t> gone;
  for (auto& kv : requests_)
    if (kv.second->over) gone.push_back(kv.first);
  if (gone.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (int64_t id : gone) {
    if (!requests_[id]->admitted) --waiting_requests_;
    requests_.erase(id);
    live_.erase(id);
  }
}

void Engine::emit(EngineEvent e) {
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back(std::move(e));
}

void Engine::publish_stats() {
  EngineStats st;
  kv_->stats(st);
  for (Seq* s : running_) st.running += s->state == Seq::State::Running;
  st.preemptions = preemptions_;
  st.steps = steps_;
  std::lock_guard<std::mutex> lock(mu_);
  st.running += beams_running_;
  st.waiting = int64_t(incoming_.size());
  for (Seq* s : waiting_) st.waiting += s->state == Seq::State::Waiting;
  stats_ = st;
  if (!events_.empty()) event_cv_.notify_all();
}

void Engine::start_beam(Request* raw) {
  // Beam search keeps its own contiguous sessions and runs whole on a worker thread; each of
  // its forwards takes the model's mutex between the engine's steps.
  std::unique_ptr<Request> r(raw);
  {
    std::lock_guard<std::mutex> lock(mu_);
    --waiting_requests_;
    ++beams_running_;
  }
  std::thread t([this, r = std::move(r)]() mutable {
    std::vector<EngineEvent> out;
    try {
      CancelCheck check(r->token, nullptr, std::chrono::milliseconds(0));
      std::vector<SequenceResult> res = beam_search(model_, r->r.prompt, r->r.options, &check);
      for (size_t i = 0; i < res.size(); ++i) {
        EngineEvent e;
        e.request = r->id;
        e.seq = int64_t(i);
        e.tokens = std::move(res[i].tokens);
        e.logprobs = std::move(res[i].logprobs);
        e.top_logprobs = std::move(res[i].top_logprobs);
        e.finished = true;
        e.finish = res[i].finish;
        e.score = res[i].score;
        out.push_back(std::move(e));
      }
    } catch (...) {
      EngineEvent e;
      e.request = r->id;
      e.seq = -1;
      e.finished = e.failed = true;
      e.exception = std::current_exception();
      try {
        std::rethrow_exception(e.exception);
      } catch (const Error& err) {
        e.error_kind = err.kind();
        e.error_field = err.field();
        e.error_message = err.what();
        e.exception = nullptr;
      } catch (const std::exception& ex) {
        e.error_message = ex.what();
      } catch (...) {
        e.error_message = "an unknown exception";
      }
      out.push_back(std::move(e));
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (EngineEvent& e : out) events_.push_back(std::move(e));
    live_.erase(r->id);
    --beams_running_;
    beams_done_.push_back(std::this_thread::get_id());
    event_cv_.notify_all();
  });
  std::vector<std::thread> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    beam_threads_.push_back(std::move(t));
    // Threads that have ended their work: joined here, so they do not pile up.
    for (std::thread::id id : beams_done_)
      for (auto it = beam_threads_.begin(); it != beam_threads_.end(); ++it)
        if (it->get_id() == id) {
          finished.push_back(std::move(*it));
          beam_threads_.erase(it);
          break;
        }
    beams_done_.clear();
  }
  for (std::thread& f : finished) f.join();
}

}  // namespace llmos
