// The serving engine (serving/engine.h): submit, poll for the events of every request,
// finish / cancel, stats. poll() waits without the GIL, so one Python dispatcher thread per
// engine moves events into per-request queues while the step thread runs.
#include <pybind11/stl.h>

#include <chrono>
#include <memory>

#include "bindings/bindings.h"
#include "core/cancel.h"
#include "core/errors.h"
#include "serving/engine.h"

using namespace llmos;
using namespace llmos::binding;

namespace {

// Destroying an engine joins its threads; a constraint's side thread may be waiting for the
// GIL then, so the GIL is let go first.
struct NoGilDelete {
  void operator()(Engine* e) const {
    py::gil_scoped_release nogil;
    delete e;
  }
};

}  // namespace

void bind_engine(py::module_& m) {
  py::class_<Engine, std::unique_ptr<Engine, NoGilDelete>>(
      m, "Engine", "Continuous batching over one Model (cpp/serving/engine.h); llmos.Engine wraps it")
      .def(py::init([](Model& model, int64_t max_batch_tokens, int64_t prefill_chunk, int64_t kv_memory,
                       const std::string& kv_dtype, int64_t block_tokens, bool prefix_cache, int64_t max_running,
                       int64_t max_waiting) {
             EngineOptions o;
             o.max_batch_tokens = max_batch_tokens;
             o.prefill_chunk = prefill_chunk;
             o.kv_budget_bytes = kv_memory;
             o.kv_dtype = kv_dtype;
             o.block_tokens = block_tokens;
             o.prefix_cache = prefix_cache;
             o.max_running = max_running;
             o.max_waiting = max_waiting;
             py::gil_scoped_release nogil;
             return std::unique_ptr<Engine, NoGilDelete>(new Engine(model, o));
           }),
           py::arg("model"), py::arg("max_batch_tokens"), py::arg("prefill_chunk"), py::arg("kv_memory"),
           py::arg("kv_dtype"), py::arg("block_tokens"), py::arg("prefix_cache"), py::arg("max_running"),
           py::arg("max_waiting"), py::keep_alive<1, 2>())
      .def(
          "submit",
          [](Engine& e, std::vector<int32_t> prompt, const DecodeOptions& o, py::object constraints,
             std::shared_ptr<CancelToken> cancel) -> py::object {
            EngineRequest r;
            r.prompt = std::move(prompt);
            r.options = o;
            r.cancel = std::move(cancel);
            if (!constraints.is_none())
              for (py::handle c : constraints) {
                require(py::isinstance<TokenConstraint>(c), "constraint",
                        "expected an llmos._core.TokenConstraint, got " +
                            py::str(py::type::of(c).attr("__name__")).cast<std::string>());
                r.constraints.push_back(c.cast<std::shared_ptr<TokenConstraint>>());
              }
            int64_t id;
            {
              py::gil_scoped_release nogil;
              id = e.submit(std::move(r));
            }
            return id < 0 ? py::object(py::none()) : py::object(py::int_(id));
          },
          py::arg("prompt"), py::arg("options"), py::arg("constraints") = py::none(), py::arg("cancel") = py::none(),
          "Queues a request; its id, or None when the engine's queue is full")
      .def(
          "poll",
          [](Engine& e, double timeout) {
            std::vector<EngineEvent> evs;
            {
              py::gil_scoped_release nogil;
              evs = e.poll(std::chrono::milliseconds(int64_t(std::max(0.0, timeout) * 1000)));
            }
            // (request, seq, tokens, logprobs, top_logprobs, finish or None, score, error or None)
            py::list out;
            for (const EngineEvent& ev : evs) {
              py::object err = py::none();
              if (ev.failed) err = py::make_tuple(error_class(ev.error_kind), ev.error_field, ev.error_message);
              if (ev.exception) try {
                  std::rethrow_exception(ev.exception);
                } catch (py::error_already_set& e) {
                  err = e.value();  // what a Python constraint raised, as it raised it
                } catch (...) {
                }
              py::object fin = ev.finished && !ev.failed ? py::object(py::str(finish_name(ev.finish))) : py::none();
              out.append(py::make_tuple(ev.request, ev.seq, ev.tokens, ev.logprobs, ev.top_logprobs, fin, ev.score,
                                        err));
            }
            return out;
          },
          py::arg("timeout"),
          "Events of every request since the last call: (request, seq, tokens, logprobs, top_logprobs, "
          "finish_reason or None, score, (error class, field, message) or an exception or None)")
      .def("cancel", &Engine::cancel, py::arg("request"), py::call_guard<py::gil_scoped_release>())
      .def("finish", &Engine::finish, py::arg("request"), py::arg("seq"), py::call_guard<py::gil_scoped_release>())
      .def("shutdown", &Engine::shutdown, py::call_guard<py::gil_scoped_release>())
      .def("stats", [](const Engine& e) {
        const EngineStats s = e.stats();
        py::dict d;
        d["running"] = s.running;
        d["waiting"] = s.waiting;
        d["kv_blocks_total"] = s.kv_blocks_total;
        d["kv_blocks_used"] = s.kv_blocks_used;
        d["kv_blocks_cached"] = s.kv_blocks_cached;
        d["prefix_queries"] = s.prefix_queries;
        d["prefix_hits"] = s.prefix_hits;
        d["preemptions"] = s.preemptions;
        d["steps"] = s.steps;
        return d;
      });
}
