// The serving engine: continuous batching of many requests over one Model.
//
// One step thread owns every running sequence. Each step is one forward over the next
// decode token of every running sequence plus prefill chunks of admitted prompts, then one
// sampling per sequence whose input is complete. Requests arrive (submit) and leave (finish,
// cancel, or the end of their tokens) between steps; what happened comes out as events that
// one consumer collects with poll().
//
// What decides a sequence's tokens is its own: a Sampler seeded with seed + i for sequence i
// (as generate() seeds it), its TokenHistory, its optional TokenConstraint. So a request gives
// the tokens it would give alone, whatever else runs with it.
//
// Scheduling, per step (engine.cc has the details):
//  - decode tokens first, oldest sequence first; a sequence whose cache cannot grow preempts
//    the youngest running sequence (its blocks are released; it is recomputed later from its
//    prompt and generated tokens, keeping its sampler state);
//  - then prefill chunks: a prompt's chunk boundaries sit at absolute multiples of
//    prefill_chunk positions, and a chunk never splits to fit in max_batch_tokens: it waits;
//  - then admission, first come first served, while the pool has blocks and fewer than
//    max_running sequences run. A new sequence first adopts the cached blocks of its longest
//    cached prefix; a prefill chunk's full blocks are published to the prefix cache.
//  - n > 1 sequences of one prompt: one prefill, then the others fork the first's blocks.
//  - num_beams > 1: beam_search on a worker thread of its own; its forwards interleave with
//    the steps on the model's mutex.
//
// Errors: what fails for one request (a NumericalError while sampling it, a constraint that
// throws, a cancelled token) ends that request with the error; the engine goes on.
//
// Thread-safety: every public method may be called from any thread. poll() is meant for one
// consumer (a dispatcher that routes events to requests). No method calls Python; a
// TokenConstraint written in Python takes the GIL itself, on the engine's side thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/cancel.h"
#include "core/errors.h"
#include "model/decoder.h"
#include "model/generate.h"
#include "sampling/constraint.h"
#include "sampling/options.h"

namespace llmos {

struct EngineOptions {
  int64_t max_batch_tokens = 512;  // tokens stacked in one step's forward
  int64_t prefill_chunk = 256;     // a prompt is computed in chunks ending at multiples of this
  int64_t kv_budget_bytes = int64_t(1) << 30;
  std::string kv_dtype = "float32";
  int64_t block_tokens = 16;
  bool prefix_cache = true;
  int64_t max_running = 64;        // sequences in the batch at once
  int64_t max_waiting = 256;       // requests submitted and not yet admitted

  void validate() const;  // throws InvalidInput naming the option
};

struct EngineRequest {
  std::vector<int32_t> prompt;
  DecodeOptions options;           // num_return_sequences sequences (or beams)
  std::vector<std::shared_ptr<TokenConstraint>> constraints;  // none, or one per sequence
  std::shared_ptr<const CancelToken> cancel;                  // may be null
};

// What one sequence produced since the last poll; seq -1 with `failed` ends the whole request.
struct EngineEvent {
  int64_t request = 0;
  int64_t seq = 0;
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;                                      // per token, when asked
  std::vector<std::vector<std::pair<int32_t, float>>> top_logprobs; // per token, when asked
  bool finished = false;           // the sequence's last event
  FinishReason finish = FinishReason::Length;
  float score = 0.f;               // beam search's sequence score
  bool failed = false;             // the request ended with this error (finished for every sequence)
  Error::Kind error_kind = Error::Kind::InvalidInput;
  std::string error_field, error_message;
};

struct EngineStats {
  int64_t running = 0;             // sequences in the batch (and beam groups)
  int64_t waiting = 0;             // requests not yet admitted, and preempted sequences
  int64_t kv_blocks_total = 0, kv_blocks_used = 0, kv_blocks_cached = 0;
  int64_t prefix_queries = 0, prefix_hits = 0;  // tokens looked up in / found in the prefix cache
  int64_t preemptions = 0, steps = 0;
};

class Engine {
 public:
  Engine(Model& model, const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; returns its id, or -1 when max_waiting requests wait already.
  // Throws InvalidInput / Context for what generate() would refuse, and once shut down.
  int64_t submit(EngineRequest r);
  // Ends the request within one step (a Cancelled error event); its blocks are freed.
  void cancel(int64_t request);
  // Ends one sequence as a stop string does (FinishReason::Stop), before the next step.
  void finish(int64_t request, int64_t seq);
  // Every event since the last poll, waiting up to `timeout` for the first.
  std::vector<EngineEvent> poll(std::chrono::milliseconds timeout);
  EngineStats stats() const;
  // Stops accepting requests, cancels every one left, and joins the threads.
  void shutdown();

  struct Seq;
  struct Request;
  class Kv;

 private:
  void loop();
  void ingest();
  void step();
  void schedule(std::vector<Seq*>& batch, std::vector<int64_t>& sizes);
  bool grow(Seq* s, int64_t n, const std::vector<Seq*>& batch);
  void preempt(Seq* s);
  void sample(Seq* s, float* row, const uint32_t* mask);
  void fork_siblings(Request* r, const float* row);
  // own_event: emit the sequence's finish (false when the caller's token event carries it).
  void end_seq(Seq* s, FinishReason why, bool own_event = true);
  void fail(Request* r, const Error& e);
  void drop_finished();
  void start_beam(Request* r);
  void emit(EngineEvent e);
  int64_t next_chunk(const Seq* s) const;
  void publish_stats();

  Model& model_;
  const EngineOptions opt_;
  std::unique_ptr<Kv> kv_;

  // Shared with the callers, under mu_.
  mutable std::mutex mu_;
  std::condition_variable work_cv_, event_cv_;
  bool stop_ = false;
  int64_t next_id_ = 1;
  std::deque<std::unique_ptr<Request>> incoming_;
  std::map<int64_t, std::shared_ptr<CancelToken>> live_;  // every request not yet ended: its own token
  std::vector<std::pair<int64_t, int64_t>> finishes_;
  std::vector<EngineEvent> events_;
  EngineStats stats_;
  int64_t waiting_requests_ = 0;  // incoming_ plus those in waiting_ not yet admitted once
  std::vector<std::thread> beam_threads_;
  int64_t beams_running_ = 0;

  // The step thread's own.
  std::map<int64_t, std::unique_ptr<Request>> requests_;
  std::vector<Seq*> running_;   // oldest admission first
  std::deque<Seq*> waiting_;    // preempted sequences first, then new requests in order
  uint64_t next_order_ = 0;
  int64_t preemptions_ = 0, steps_ = 0;
  std::vector<float> logits_;
  std::shared_ptr<CancelToken> shutdown_token_ = std::make_shared<CancelToken>();
  std::thread thread_;
};

}  // namespace llmos
