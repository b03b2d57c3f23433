// The model (model/decoder.h, model/generate.h): loading weights, logits, and the decode
// loops; and CancelToken (core/cancel.h), which stops them.
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <optional>

#include "bindings/bindings.h"
#include "core/cancel.h"
#include "core/cpu_features.h"
#include "core/errors.h"
#include "model/decoder.h"
#include "model/generate.h"
#include "model/kv_cache.h"

using namespace llmos;
using namespace llmos::binding;

namespace llmos::binding {

const char* finish_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length: return "length";
    case FinishReason::Eos: return "eos";
    case FinishReason::Stop: return "stop";
  }
  return "length";
}

}  // namespace llmos::binding

namespace {

// A numpy array as a HostTensor. Arrays that are not C-contiguous are copied into `keep`,
// which also holds a reference to every array until the load is over.
HostTensor host_tensor(py::handle obj, const std::string& name, std::vector<py::array>& keep) {
  require(py::isinstance<py::array>(obj), "sources", name + ": expected a numpy array");
  py::array a = py::array::ensure(obj, py::array::c_style);
  const py::dtype dt = a.dtype();
  HostTensor h;
  if (dt.equal(py::dtype::of<float>())) h.dtype = DType::F32;
  else if (dt.equal(py::dtype("float16"))) h.dtype = DType::F16;
  else if (dt.equal(py::dtype::of<uint16_t>())) h.dtype = DType::BF16;  // bfloat16 bits, as safetensors_read_tensor gives them
  else if (dt.equal(py::dtype::of<double>())) h.dtype = DType::F64;
  else if (dt.equal(py::dtype::of<uint8_t>())) h.dtype = DType::U8;
  else
    throw Error(Error::Kind::InvalidInput, "", "sources",
                name + ": dtype " + py::str(dt).cast<std::string>() +
                    " is not float32, float16, uint16 (bfloat16 bits), float64 or uint8 (codes)");
  h.data = static_cast<const uint8_t*>(a.data());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) h.shape.push_back(a.shape(i));
  keep.push_back(std::move(a));
  return h;
}

// (file, tensor, transpose), or (name, array, transpose), or for a pre-quantized source
// (name, (codes, scale, min or None), False).
WeightPart part_arg(py::handle obj, std::vector<py::array>& keep) {
  require(py::isinstance<py::tuple>(obj) && py::len(obj) == 3, "sources",
          "each part is (file, tensor, transpose) or (name, array, transpose)");
  py::tuple t = py::reinterpret_borrow<py::tuple>(obj);
  WeightPart p;
  p.transpose = t[2].cast<bool>();
  if (py::isinstance<py::str>(t[1])) {
    p.path = t[0].cast<std::string>();
    p.tensor = t[1].cast<std::string>();
    return p;
  }
  p.tensor = t[0].cast<std::string>();
  if (py::isinstance<py::tuple>(t[1])) {
    py::tuple blocks = t[1].cast<py::tuple>();
    const char* names[] = {".codes", ".scale", ".min"};
    require(blocks.size() >= 2 && blocks.size() <= 3, "sources", p.tensor + ": expected (codes, scale, min or None)");
    for (size_t i = 0; i < blocks.size(); ++i)
      if (!blocks[i].is_none()) p.arrays.push_back(host_tensor(blocks[i], p.tensor + names[i], keep));
  } else {
    p.arrays.push_back(host_tensor(t[1], p.tensor, keep));
  }
  return p;
}

// (role, layer, [part, ...], prequant QuantType or None, group)
WeightSource source_arg(py::handle obj, std::vector<py::array>& keep) {
  require(py::isinstance<py::tuple>(obj) && py::len(obj) == 5, "sources",
          "each source is (role, layer, parts, prequant QuantType or None, group)");
  py::tuple t = py::reinterpret_borrow<py::tuple>(obj);
  WeightSource w;
  w.role = t[0].cast<std::string>();
  w.layer = t[1].cast<int64_t>();
  for (py::handle part : t[2].cast<py::list>()) w.parts.push_back(part_arg(part, keep));
  w.prequant = t[3].cast<std::optional<QuantType>>().value_or(QuantType::None);
  w.group = t[4].cast<int64_t>();
  return w;
}

// Sources are taken one at a time from any iterable, each loaded without the GIL and then
// let go: a caller that hands over a generator, or a list it empties as it is read, never
// holds its arrays and the core's copy of the whole model at once.
std::unique_ptr<Model> make_model(const Architecture& arch, const py::iterable& sources, const std::string& dtype,
                                  int64_t n_threads, std::optional<QuantType> quant, int64_t group,
                                  std::optional<QuantType> head_quant) {
  const DType dt = dtype_arg(dtype);
  require(n_threads >= 1 && n_threads <= ThreadPool::kMaxThreads, "n_threads",
          "must be from 1 to " + std::to_string(ThreadPool::kMaxThreads) + ", got " + std::to_string(n_threads));
  group_arg(group, "group");
  arch.validate();
  const QuantSpec qs{quant.value_or(QuantType::None), group, head_quant.value_or(QuantType::None), int(n_threads)};
  WeightLoader loader(arch, dt, qs);
  // Not a range-for: py::iterator keeps the previous item until the next one is made.
  py::iterator it = py::iter(sources);
  while (py::object item = py::reinterpret_steal<py::object>(PyIter_Next(it.ptr()))) {
    std::vector<py::array> keep;  // the source's arrays, released (with the GIL) after the add
    const WeightSource src = source_arg(item, keep);
    py::gil_scoped_release nogil;
    loader.add(src);
  }
  if (PyErr_Occurred()) throw py::error_already_set();
  py::gil_scoped_release nogil;
  return std::make_unique<Model>(arch, loader.finish(), int(n_threads));
}

// Python runs signal handlers only on the main thread, and only when that thread runs
// Python; a call that computes without the GIL would hear Ctrl-C only when it returns.
unsigned long main_thread_id = 0;
// Taking the GIL is ~1 us when no other thread holds it, but up to the switch interval (5 ms)
// when another thread runs Python: 20 ms between polls bounds that stall to a fifth, and
// leaves Ctrl-C well within 100 ms.
constexpr std::chrono::milliseconds kSignalPoll{20};

// The CancelCheck of a call made from Python: the caller's token (may be null), and on the
// main thread a hook that takes the GIL every kSignalPoll to run pending signal handlers,
// whose exception (KeyboardInterrupt) then ends the call. The hook runs inside forward(),
// with the model's mutex held: no thread may wait for that mutex while holding the GIL, so
// every binding releases the GIL before calling into the model, and a signal handler must
// not call the model whose call it interrupts.
CancelCheck cancel_check(std::shared_ptr<const CancelToken> token) {
  CancelCheck::Hook hook;
  if (PyThread_get_thread_ident() == main_thread_id)
    hook = [] {
      py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    };
  return CancelCheck(std::move(token), std::move(hook), kSignalPoll);
}

}  // namespace

void bind_model(py::module_& m) {
  main_thread_id = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();

  py::class_<CancelToken, std::shared_ptr<CancelToken>>(
      m, "CancelToken",
      "Stops a running call: cancel() from any thread ends the generate() it was passed to within\n"
      "milliseconds, with llmos.errors.CancelledError. A token cancelled once stays cancelled; one made\n"
      "with a parent is also cancelled when its parent is.")
      .def(py::init([](std::shared_ptr<CancelToken> parent) { return std::make_shared<CancelToken>(std::move(parent)); }),
           py::arg("parent") = py::none())
      .def("cancel", &CancelToken::cancel, "Asks every call using this token (or a child of it) to stop.")
      .def("cancelled", &CancelToken::cancelled, "Whether cancel() was called on this token or an ancestor.");

  py::class_<Model>(m, "Model")
      .def(py::init(&make_model), py::arg("arch"), py::arg("sources"), py::arg("dtype"), py::arg("n_threads"),
           py::arg("quant") = py::none(), py::arg("group") = 32, py::arg("head_quant") = py::none(),
           "Loads the weights named by `sources`, an iterable of (role, layer, parts, prequant, group) with parts\n"
           "[(file, tensor, transpose)] or [(name, numpy array, transpose)], and for a pre-quantized\n"
           "role (prequant a QuantType, else None) one part (file, base name, False) or\n"
           "(name, (codes, scale, min or None), False).")
      .def_property_readonly("n_threads", &Model::n_threads)
      .def("to_device", [](Model& m, int device) {
             py::gil_scoped_release nogil;
             m.to_device(device);
           }, py::arg("device"),
           "Runs every later forward on GPU `device` (weights copied there, KV caches made there);\n"
           "raises InvalidInputError (field device) saying why when it cannot.")
      .def_property_readonly("device", &Model::device, "\"cpu\" or \"cuda:N\"")
      .def_property_readonly("device_weight_bytes", [](const Model& m) { return m.cuda() ? m.cuda()->weight_bytes() : 0; },
                             "Bytes of weights on the GPU (0 on the CPU)")
      .def_static("cuda_unsupported", [](const Model& m) { return CudaDecoder::unsupported(m.spec()); },
                  py::arg("model"), "Why this model cannot run on the GPU (\"\" when it can)")
      .def(
          "quantized_matrices",
          [](const Model& m) {
            // [(role, layer, type, group, codes u8 [rows, row_bytes], scale u16 [rows, ng], min or None)]
            // The arrays are made with the GIL held, then filled without it.
            struct Copy { void* dst; const void* src; size_t bytes; };
            std::vector<Copy> copies;
            py::list out;
            for_each_matrix(m.spec(), m.weights(), [&](const std::string& role, int64_t layer, const Matrix& w) {
              if (!w.quantized()) return;
              const int64_t rb = quant_row_bytes(w.qtype, w.cols), ng = w.cols / w.group;
              py::array_t<uint8_t> codes({w.rows, rb});
              copies.push_back({codes.mutable_data(), w.data.data(), size_t(w.rows * rb)});
              py::array_t<uint16_t> scale({w.rows, ng});
              copies.push_back({scale.mutable_data(), w.scale.data(), size_t(w.rows * ng) * 2});
              py::object mn = py::none();
              if (w.qtype == QuantType::Q4Asym) {
                py::array_t<uint16_t> a({w.rows, ng});
                copies.push_back({a.mutable_data(), w.min.data(), size_t(w.rows * ng) * 2});
                mn = a;
              }
              out.append(py::make_tuple(role, layer, w.qtype, w.group, codes, scale, mn));
            });
            {
              py::gil_scoped_release nogil;
              for (const Copy& c : copies) std::memcpy(c.dst, c.src, c.bytes);
            }
            return out;
          },
          "The quantized matrices, for llmos.quantize to save")
      .def_property_readonly("isa", [](const Model& m) { return std::string(isa_name(m.kernels().isa)); })
      .def(
          "logits",
          [](Model& m, py::array_t<int64_t, py::array::c_style | py::array::forcecast> ids) {
            std::vector<int32_t> toks = token_ids_arg(ids, "token_ids");
            const int64_t n = int64_t(toks.size()), V = m.spec().vocab_size;
            py::array_t<float> out({n, V});
            float* op = out.mutable_data();
            CancelCheck check = cancel_check(nullptr);
            {
              py::gil_scoped_release nogil;
              Session s(m);
              m.forward(s, toks.data(), n, op, true, &check);
            }
            return out;
          },
          py::arg("token_ids"), "[n, vocab] float32 logits of every position, in a fresh context")
      .def(
          "generate",
          [](Model& m, std::vector<std::vector<int32_t>> prompts, const DecodeOptions& o, py::object on_token,
             std::shared_ptr<CancelToken> cancel, std::optional<std::vector<std::shared_ptr<TokenConstraint>>> constraints) {
            TokenCallback cb;
            if (!on_token.is_none())
              cb = [&on_token](int64_t seq, int32_t t) {
                py::gil_scoped_acquire gil;
                return on_token(seq, t).cast<bool>();
              };
            CancelCheck check = cancel_check(std::move(cancel));
            std::vector<SequenceResult> rs;
            {
              py::gil_scoped_release nogil;
              // The caller's list holds the Python constraints, so they outlive the call.
              rs = generate(m, prompts, o, cb, &check, constraints.value_or(Constraints{}));
            }
            py::list out;
            for (const SequenceResult& r : rs) {
              py::dict d;
              d["prompt_index"] = r.prompt_index;
              d["tokens"] = r.tokens;
              d["finish_reason"] = finish_name(r.finish);
              d["logprobs"] = r.logprobs;
              d["top_logprobs"] = r.top_logprobs;
              d["score"] = r.score;
              out.append(d);
            }
            return out;
          },
          py::arg("prompts"), py::arg("options"), py::arg("on_token") = py::none(), py::arg("cancel") = py::none(),
          py::arg("constraints") = py::none(),
          "Decodes every prompt together (one forward per step), or by beam search. "
          "constraints: None, or one TokenConstraint (or None) per sequence (prompt-major), whose masks are "
          "computed on a helper thread while the forward runs; what they raise ends the call. "
          "on_token(sequence, id) -> bool (stop that sequence) is called per token when given; "
          "a CancelToken `cancel` stops the call (CancelledError), as Ctrl-C does on the main thread.");

  // The paged KV cache's test surface: the pool, a session over the model (paged with a pool,
  // contiguous without), and forward_step over several sessions. The serving engine drives the
  // same C++ objects itself; these bindings exist so tests can check them against the
  // contiguous cache. A session keeps its model and pool alive.
  py::class_<KvPool>(m, "KvPool",
                     "A pool of KV blocks for one model (test surface): KvPool(model, dtype, block_tokens, budget_bytes)")
      .def(py::init([](const Model& model, const std::string& dtype, int64_t block_tokens, int64_t budget_bytes) {
             return std::make_unique<KvPool>(model.spec(), kv_dtype_from_name(dtype), block_tokens, budget_bytes);
           }),
           py::arg("model"), py::arg("dtype"), py::arg("block_tokens"), py::arg("budget_bytes"),
           py::keep_alive<1, 2>())
      .def_property_readonly("block_tokens", &KvPool::block_tokens)
      .def_property_readonly("num_blocks", &KvPool::num_blocks)
      .def_property_readonly("dtype", [](const KvPool& p) { return std::string(kv_dtype_name(p.dtype())); })
      .def_static(
          "block_bytes",
          [](const Model& model, const std::string& dtype, int64_t block_tokens) {
            return KvPool::block_bytes(model.spec(), kv_dtype_from_name(dtype), block_tokens);
          },
          py::arg("model"), py::arg("dtype"), py::arg("block_tokens"))
      .def("stats",
           [](const KvPool& p) {
             const KvPool::Stats s = p.stats();
             py::dict d;
             d["blocks_total"] = s.blocks_total;
             d["blocks_used"] = s.blocks_used;
             d["blocks_cached"] = s.blocks_cached;
             d["prefix_queries"] = s.prefix_queries;
             d["prefix_hits"] = s.prefix_hits;
             d["evictions"] = s.evictions;
             return d;
           })
      .def("set_hash_mask", &KvPool::set_hash_mask, py::arg("mask"),
           "Test hook: masks every block hash (0 makes all blocks collide)");

  py::class_<Session>(m, "Session", "One sequence's KV cache (test surface); paged when given a KvPool")
      .def(py::init([](const Model& model, KvPool* pool) { return std::make_unique<Session>(model, pool); }),
           py::arg("model"), py::arg("pool") = nullptr, py::keep_alive<1, 2>(), py::keep_alive<1, 3>())
      .def_property_readonly("n_past", &Session::n_past)
      .def_property_readonly("paged", &Session::paged)
      .def_property_readonly("blocks_held", &Session::blocks_held)
      .def_property_readonly("history", &Session::history)
      .def("reserve_append", &Session::reserve_append, py::arg("n"))
      .def(
          "adopt_prefix",
          [](Session& s, py::array_t<int64_t, py::array::c_style | py::array::forcecast> ids) {
            const std::vector<int32_t> t = token_ids_arg(ids, "token_ids");
            return s.adopt_prefix(t.data(), int64_t(t.size()));
          },
          py::arg("token_ids"))
      .def("publish", &Session::publish)
      .def("fork_from", &Session::fork_from, py::arg("other"))
      .def("copy_from", &Session::copy_from, py::arg("other"))
      .def("release", &Session::release)
      .def("truncate", &Session::truncate, py::arg("n"),
           "Forgets every position from n on (contiguous sessions; speculative decoding's rollback)")
      .def(
          "forward",
          [](Session& s, Model& m, py::array_t<int64_t, py::array::c_style | py::array::forcecast> ids, bool all_logits,
             std::shared_ptr<const CancelToken> cancel) {
            const std::vector<int32_t> t = token_ids_arg(ids, "token_ids");
            const int64_t n = int64_t(t.size()), V = m.spec().vocab_size;
            py::array_t<float> out({all_logits ? n : int64_t(1), V});
            float* op = out.mutable_data();
            CancelCheck check = cancel_check(std::move(cancel));
            py::gil_scoped_release nogil;
            m.forward(s, t.data(), n, op, all_logits, &check);
            return out;
          },
          py::arg("model"), py::arg("token_ids"), py::arg("all_logits") = true, py::arg("cancel") = nullptr,
          "Model.forward on this session: [n, vocab] logits (all_logits) or [1, vocab]");

  m.def(
      "forward_step",
      [](Model& m, const std::vector<std::pair<Session*, py::array_t<int64_t, py::array::c_style | py::array::forcecast>>>& chunks) {
        std::vector<std::vector<int32_t>> toks;
        std::vector<SeqChunk> cs;
        for (const auto& [s, ids] : chunks) toks.push_back(token_ids_arg(ids, "token_ids"));
        for (size_t i = 0; i < chunks.size(); ++i) cs.push_back(SeqChunk{chunks[i].first, toks[i].data(), int64_t(toks[i].size())});
        py::array_t<float> out({int64_t(cs.size()), m.spec().vocab_size});
        float* op = out.mutable_data();
        CancelCheck check = cancel_check(nullptr);
        py::gil_scoped_release nogil;
        m.forward_step(cs, op, &check);
        return out;
      },
      py::arg("model"), py::arg("chunks"),
      "Model.forward_step over [(session, token_ids)]: [chunks, vocab], each chunk's last token (test surface)");
}
