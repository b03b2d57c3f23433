// The Python boundary (llmos._core). Thin by design: convert arguments, release the GIL
// while the core computes, and map llmos::Error to the classes in llmos.errors. The
// public API lives in python/llmos/; nothing outside it should import _core directly.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/bandwidth.h"
#include "core/cpu_features.h"
#include "core/errors.h"
#include "kernels/kernels.h"
#include "kernels/quantized_matmul.h"
#include "model/decoder.h"
#include "quant/qformat.h"
#include <cstring>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include "model/generate.h"
#include "sampling/options.h"
#include "sampling/processors.h"
#include "sampling/sampler.h"

namespace py = pybind11;
using namespace llmos;

void bind_io(py::module_& m);

namespace {

const char* error_class(Error::Kind k) {
  switch (k) {
    case Error::Kind::Io: return "ModelFileError";
    case Error::Kind::Safetensors: return "SafetensorsError";
    case Error::Kind::Tensor: return "TensorError";
    case Error::Kind::InvalidInput: return "InvalidInputError";
    case Error::Kind::Context: return "ContextLengthError";
  }
  return "LlmosError";
}

void raise_python(const Error& e) {
  py::object errors = py::module_::import("llmos.errors");
  py::object cls = errors.attr(error_class(e.kind()));
  py::dict kw;
  kw["file"] = e.file().empty() ? py::object(py::none()) : py::object(py::str(e.file()));
  kw["field"] = e.field().empty() ? py::object(py::none()) : py::object(py::str(e.field()));
  // Messages quote file contents; never let a stray byte turn into a UnicodeDecodeError.
  const std::string what = e.what();
  py::object msg = py::reinterpret_steal<py::object>(
      PyUnicode_DecodeUTF8(what.data(), Py_ssize_t(what.size()), "backslashreplace"));
  py::object exc = cls(msg, **kw);
  PyErr_SetObject(cls.ptr(), exc.ptr());
}

DType dtype_arg(const std::string& s) {
  if (s == "float32") return DType::F32;
  if (s == "bfloat16") return DType::BF16;
  if (s == "float16") return DType::F16;
  throw Error(Error::Kind::InvalidInput, "", "dtype", "expected float32, bfloat16 or float16, got '" + s + "'");
}

const char* finish_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length: return "length";
    case FinishReason::Eos: return "eos";
    case FinishReason::Stop: return "stop";
  }
  return "length";
}

using PartTuple = std::tuple<std::string, std::string, bool>;
// (role, layer, parts) or (role, layer, parts, prequant type, group)
using SourceTuple = std::tuple<std::string, int64_t, std::vector<PartTuple>, int, int64_t>;

QuantType quant_arg(int t) {
  if (t < 0 || t > 4) throw Error(Error::Kind::InvalidInput, "", "quant", "unknown quantization type");
  return QuantType(t);
}

std::unique_ptr<Model> make_model(const ArchSpec& spec, const std::vector<SourceTuple>& sources,
                                  const std::string& dtype, int n_threads, int quant, int64_t group, int head_quant) {
  std::vector<WeightSource> ws;
  for (const auto& [role, layer, parts, prequant, pgroup] : sources) {
    WeightSource w{role, layer, {}, quant_arg(prequant), pgroup};
    for (const auto& [path, tensor, transpose] : parts) w.parts.push_back({path, tensor, transpose});
    ws.push_back(std::move(w));
  }
  const DType dt = dtype_arg(dtype);
  spec.validate();
  QuantSpec qs{quant_arg(quant), group, quant_arg(head_quant), n_threads};
  if (group < 32 || group % 32)
    throw Error(Error::Kind::InvalidInput, "", "group", "must be a multiple of 32, got " + std::to_string(group));
  py::gil_scoped_release nogil;
  ModelWeights weights = load_weights(spec, ws, dt, qs);
  return std::make_unique<Model>(spec, std::move(weights), n_threads);
}

std::vector<int32_t> to_ids(const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& a) {
  if (a.ndim() != 1) throw Error(Error::Kind::InvalidInput, "", "token_ids", "expected a 1-d sequence of ids");
  std::vector<int32_t> ids(size_t(a.size()));
  const int64_t* p = a.data();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (p[i] < INT32_MIN || p[i] > INT32_MAX)
      throw Error(Error::Kind::InvalidInput, "", "token_ids", "token id " + std::to_string(p[i]) + " is out of range");
    ids[i] = int32_t(p[i]);
  }
  return ids;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "llmos C++ core: weights, kernels, the decoder and the decode loop";
#if defined(__GLIBC__)
  // glibc raises its mmap threshold each time a large block is freed, after which large
  // blocks come from the heap and stay resident when freed: loading a model and a 512-token
  // prefill then left ~25 MB of freed memory in RSS (SmolLM2 int8: peak 279 -> 253 MB with
  // a fixed 1 MB threshold). A fixed threshold returns every large block to the OS.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      raise_python(e);
    }
  });

  m.def(
      "memory_bandwidth",
      [](int threads, int64_t mbytes, int reps) {
        py::gil_scoped_release nogil;
        return measure_read_bandwidth(threads, size_t(mbytes) << 20, reps);
      },
      py::arg("threads"), py::arg("mbytes") = 512, py::arg("reps") = 5, "Memory read bandwidth in GB/s (benchmarks)");
  m.def("cpu_isa", [] { return std::string(isa_name(cpu_active_isa())); }, "ISA the kernels use");
  m.def("cpu_best_isa", [] { return std::string(isa_name(cpu_best_isa())); }, "widest ISA this CPU supports");

  m.def(
      "kernel_matmul",
      [](const std::string& isa, py::array_t<float, py::array::c_style | py::array::forcecast> x, py::array w,
         const std::string& wdtype, bool prefill) {
        // For tests: y = x @ W^T with one ISA's kernel (the many-token one with prefill).
        // W is float32, or uint16 holding bfloat16 / float16 bits.
        const KernelTable& kt = kernels_named(isa);
        const DType dt = dtype_arg(wdtype);
        if (x.ndim() != 2 || w.ndim() != 2 || x.shape(1) != w.shape(1))
          throw Error(Error::Kind::InvalidInput, "", "x", "expected x [n, k] and w [rows, k]");
        const size_t es = dtype_size(dt);
        if (size_t(w.itemsize()) != es || !(w.flags() & py::array::c_style))
          throw Error(Error::Kind::InvalidInput, "", "w", "expected a C-contiguous array of the weight dtype's size");
        const int64_t n = x.shape(0), k = x.shape(1), rows = w.shape(0);
        py::array_t<float> y({n, rows});
        const float* xp = x.data();
        const void* wp = w.data();
        float* yp = y.mutable_data();
        {
          py::gil_scoped_release nogil;
          if (prefill && dt == DType::BF16 && kt.matmul_tiles_bf16 && rows >= 16 && k % 32 == 0) {
            // the decoder's choice for bf16 prefill under AMX
            ThreadPool pool(1);
            QuantScratch scratch;
            bf16_matmul_tiles(kt, pool, scratch, xp, n, static_cast<const uint16_t*>(wp), rows, k, nullptr, yp,
                              gemm_for(kt, dt));
          } else {
            (prefill ? gemm_for(kt, dt) : matmul_for(kt, dt))(xp, n, k, wp, 0, rows, yp, rows);
          }
        }
        return y;
      },
      py::arg("isa"), py::arg("x"), py::arg("w"), py::arg("w_dtype"), py::arg("prefill") = false);

  m.def(
      "kernel_qmatmul",
      [](const std::string& isa, py::array_t<float, py::array::c_style | py::array::forcecast> x,
         py::array_t<float, py::array::c_style | py::array::forcecast> w, int quant, int64_t group, bool prefill) {
        // For tests: quantize W (rows, k) and x, then y = x @ W^T with one ISA's kernel.
        const KernelTable& kt = kernels_named(isa);
        if (x.ndim() != 2 || w.ndim() != 2 || x.shape(1) != w.shape(1) || w.shape(1) % 64 || w.shape(1) % group)
          throw Error(Error::Kind::InvalidInput, "", "x", "expected x [n, k], w [rows, k], k a multiple of 64 and group");
        const int64_t n = x.shape(0), k = x.shape(1), rows = w.shape(0);
        Matrix mat;
        mat.rows = rows;
        mat.cols = k;
        mat.data.resize(size_t(rows * k) * 4);
        std::memcpy(mat.data.data(), w.data(), size_t(rows * k) * 4);
        quantize_matrix(mat, quant_arg(quant), group);
        // The forward pass's own dispatch on one thread, as for a run of `prefill` tokens
        // (at any n) or of decode tokens.
        py::array_t<float> y({n, rows});
        ThreadPool pool(1);
        QuantScratch scratch;
        quantized_matmul(kt, pool, scratch, x.data(), n, mat.qview(), nullptr, y.mutable_data(), prefill);
        return y;
      },
      py::arg("isa"), py::arg("x"), py::arg("w"), py::arg("quant"), py::arg("group"), py::arg("prefill") = true);

  m.def(
      "kernel_attention",
      [](const std::string& isa, py::array_t<float, py::array::c_style | py::array::forcecast> q,
         py::array_t<float, py::array::c_style | py::array::forcecast> k,
         py::array_t<float, py::array::c_style | py::array::forcecast> v, int64_t start, int64_t p0, int64_t window,
         float scale, float softcap) {
        // For tests: one AttnBlock (kernels.h) with one ISA's attention kernel.
        const KernelTable& kt = kernels_named(isa);
        if (q.ndim() != 2 || k.ndim() != 2 || v.ndim() != 2 || q.shape(1) != k.shape(1) || k.shape(0) != v.shape(0) ||
            k.shape(1) != v.shape(1) || q.shape(0) < 1 || q.shape(0) > 16 || start < 0 ||
            p0 + q.shape(0) != start + k.shape(0) || p0 < start)
          throw Error(Error::Kind::InvalidInput, "", "q",
                      "expected q [1..16, D], k and v [len, D], keys ending at the last query");
        const int64_t nq = q.shape(0), len = k.shape(0), D = q.shape(1);
        py::array_t<float> out({nq, D});
        AttnBlock blk;
        blk.q = q.data(), blk.ldq = D, blk.k = k.data(), blk.v = v.data();
        blk.nq = nq, blk.len = len, blk.D = D, blk.start = start, blk.p0 = p0, blk.window = window;
        blk.scale = scale, blk.softcap = softcap, blk.out = out.mutable_data(), blk.ldo = D;
        std::vector<float> scratch(size_t(attend_scratch_floats(len, D)));
        if (kt.attend) kt.attend(blk, scratch.data());
        else attend_generic(kt, blk, scratch.data());
        return out;
      },
      py::arg("isa"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("start"), py::arg("p0"), py::arg("window"),
      py::arg("scale"), py::arg("softcap") = 0.0f);

  m.def(
      "quantize_dequantize",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> w, int quant, int64_t group) {
        // For tests: W after a round trip through the quantized format.
        if (w.ndim() != 2 || w.shape(1) % 64 || w.shape(1) % group)
          throw Error(Error::Kind::InvalidInput, "", "w", "expected [rows, k], k a multiple of 64 and group");
        Matrix mat;
        mat.rows = w.shape(0);
        mat.cols = w.shape(1);
        mat.data.resize(size_t(mat.rows * mat.cols) * 4);
        std::memcpy(mat.data.data(), w.data(), mat.data.size());
        quantize_matrix(mat, quant_arg(quant), group);
        py::array_t<float> out({mat.rows, mat.cols});
        for (int64_t r = 0; r < mat.rows; ++r) mat.row(r, out.mutable_data() + r * mat.cols);
        return out;
      },
      py::arg("w"), py::arg("quant"), py::arg("group"));

  m.def(
      "kernel_activate",
      [](const std::string& isa, int act, py::array_t<float, py::array::c_style | py::array::forcecast> x,
         py::object up) {
        // For tests: act(x), or act(x) * up when up is given, or softmax(x) for act == -1.
        const KernelTable& kt = kernels_named(isa);
        if (act < -1 || act > 3) throw Error(Error::Kind::InvalidInput, "", "act", "unknown activation");
        const int64_t n = int64_t(x.size());
        py::array_t<float> out(n);
        std::copy(x.data(), x.data() + n, out.mutable_data());
        if (act == -1) kt.softmax(out.mutable_data(), n);
        else if (up.is_none()) kt.activate(act, out.mutable_data(), n);
        else {
          auto u = up.cast<py::array_t<float, py::array::c_style | py::array::forcecast>>();
          if (u.size() != n) throw Error(Error::Kind::InvalidInput, "", "up", "size differs from x");
          kt.activate_gated(act, x.data(), u.data(), out.mutable_data(), n);
        }
        return out;
      },
      py::arg("isa"), py::arg("act"), py::arg("x"), py::arg("up") = py::none());

  py::enum_<NormKind>(m, "NormKind").value("LayerNorm", NormKind::LayerNorm).value("RMSNorm", NormKind::RMSNorm);
  py::enum_<Activation>(m, "Activation")
      .value("Silu", Activation::Silu)
      .value("GeluErf", Activation::GeluErf)
      .value("GeluTanh", Activation::GeluTanh)
      .value("Relu", Activation::Relu);

  py::class_<RopeSpec>(m, "RopeSpec")
      .def(py::init<>())
      .def_readwrite("rotary_dim", &RopeSpec::rotary_dim)
      .def_readwrite("inv_freq", &RopeSpec::inv_freq)
      .def_readwrite("inv_freq_long", &RopeSpec::inv_freq_long)
      .def_readwrite("long_after", &RopeSpec::long_after)
      .def_readwrite("attention_scaling", &RopeSpec::attention_scaling)
      .def_readwrite("dynamic", &RopeSpec::dynamic)
      .def_readwrite("dynamic_base", &RopeSpec::dynamic_base)
      .def_readwrite("dynamic_factor", &RopeSpec::dynamic_factor)
      .def_readwrite("dynamic_max_positions", &RopeSpec::dynamic_max_positions);

  py::class_<ArchSpec>(m, "ArchSpec")
      .def(py::init<>())
      .def_readwrite("family", &ArchSpec::family)
      .def_readwrite("vocab_size", &ArchSpec::vocab_size)
      .def_readwrite("hidden_size", &ArchSpec::hidden_size)
      .def_readwrite("n_layers", &ArchSpec::n_layers)
      .def_readwrite("n_heads", &ArchSpec::n_heads)
      .def_readwrite("n_kv_heads", &ArchSpec::n_kv_heads)
      .def_readwrite("head_dim", &ArchSpec::head_dim)
      .def_readwrite("intermediate_size", &ArchSpec::intermediate_size)
      .def_readwrite("max_positions", &ArchSpec::max_positions)
      .def_readwrite("norm", &ArchSpec::norm)
      .def_readwrite("norm_eps", &ArchSpec::norm_eps)
      .def_readwrite("norm_weight_offset", &ArchSpec::norm_weight_offset)
      .def_readwrite("norm_bias", &ArchSpec::norm_bias)
      .def_readwrite("learned_positions", &ArchSpec::learned_positions)
      .def_readwrite("rope", &ArchSpec::rope)
      .def_readwrite("qkv_bias", &ArchSpec::qkv_bias)
      .def_readwrite("o_bias", &ArchSpec::o_bias)
      .def_readwrite("qk_norm", &ArchSpec::qk_norm)
      .def_readwrite("gated_mlp", &ArchSpec::gated_mlp)
      .def_readwrite("mlp_bias", &ArchSpec::mlp_bias)
      .def_readwrite("act", &ArchSpec::act)
      .def_readwrite("post_attn_norm", &ArchSpec::post_attn_norm)
      .def_readwrite("post_ffn_norm", &ArchSpec::post_ffn_norm)
      .def_readwrite("tied_lm_head", &ArchSpec::tied_lm_head)
      .def_readwrite("embed_scale", &ArchSpec::embed_scale)
      .def_readwrite("attn_scale", &ArchSpec::attn_scale)
      .def_readwrite("attn_softcap", &ArchSpec::attn_softcap)
      .def_readwrite("final_softcap", &ArchSpec::final_softcap)
      .def_readwrite("sliding_window", &ArchSpec::sliding_window)
      .def("validate", &ArchSpec::validate);

  py::class_<DecodeOptions>(m, "DecodeOptions", "Every option of token choice (cpp/sampling/options.h)")
      .def(py::init<>())
      .def_readwrite("max_new_tokens", &DecodeOptions::max_new_tokens)
      .def_readwrite("min_new_tokens", &DecodeOptions::min_new_tokens)
      .def_readwrite("min_length", &DecodeOptions::min_length)
      .def_readwrite("eos_token_ids", &DecodeOptions::eos_token_ids)
      .def_readwrite("logit_bias", &DecodeOptions::logit_bias)
      .def_readwrite("sequence_bias", &DecodeOptions::sequence_bias)
      .def_readwrite("encoder_repetition_penalty", &DecodeOptions::encoder_repetition_penalty)
      .def_readwrite("repetition_penalty", &DecodeOptions::repetition_penalty)
      .def_readwrite("presence_penalty", &DecodeOptions::presence_penalty)
      .def_readwrite("frequency_penalty", &DecodeOptions::frequency_penalty)
      .def_readwrite("no_repeat_ngram_size", &DecodeOptions::no_repeat_ngram_size)
      .def_readwrite("encoder_no_repeat_ngram_size", &DecodeOptions::encoder_no_repeat_ngram_size)
      .def_readwrite("bad_words_ids", &DecodeOptions::bad_words_ids)
      .def_readwrite("forced_bos_token_id", &DecodeOptions::forced_bos_token_id)
      .def_readwrite("forced_eos_token_ids", &DecodeOptions::forced_eos_token_ids)
      .def_readwrite("remove_invalid_values", &DecodeOptions::remove_invalid_values)
      .def_readwrite("exponential_decay_length_penalty", &DecodeOptions::exponential_decay_length_penalty)
      .def_readwrite("suppress_tokens", &DecodeOptions::suppress_tokens)
      .def_readwrite("begin_suppress_tokens", &DecodeOptions::begin_suppress_tokens)
      .def_readwrite("do_sample", &DecodeOptions::do_sample)
      .def_readwrite("temperature", &DecodeOptions::temperature)
      .def_readwrite("top_h", &DecodeOptions::top_h)
      .def_readwrite("top_k", &DecodeOptions::top_k)
      .def_readwrite("top_p", &DecodeOptions::top_p)
      .def_readwrite("min_p", &DecodeOptions::min_p)
      .def_readwrite("typical_p", &DecodeOptions::typical_p)
      .def_readwrite("epsilon_cutoff", &DecodeOptions::epsilon_cutoff)
      .def_readwrite("eta_cutoff", &DecodeOptions::eta_cutoff)
      .def_readwrite("seed", &DecodeOptions::seed)
      .def_readwrite("renormalize_logits", &DecodeOptions::renormalize_logits)
      .def_readwrite("num_beams", &DecodeOptions::num_beams)
      .def_readwrite("length_penalty", &DecodeOptions::length_penalty)
      .def_readwrite("early_stopping", &DecodeOptions::early_stopping)
      .def_readwrite("num_return_sequences", &DecodeOptions::num_return_sequences)
      .def_readwrite("logprobs", &DecodeOptions::logprobs)
      .def_readwrite("top_logprobs", &DecodeOptions::top_logprobs)
      .def("validate", &DecodeOptions::validate, py::arg("vocab_size"));

  m.def(
      "process_logits",
      [](const DecodeOptions& o, std::vector<int32_t> sequence, int64_t prompt_len,
         py::array_t<float, py::array::c_style | py::array::forcecast> logits) {
        // For tests: one row of logits through the processors (and the warpers when
        // sampling), as the decode loop applies them at this point of the sequence.
        const int64_t V = int64_t(logits.size());
        o.validate(V);
        if (prompt_len < 0 || prompt_len > int64_t(sequence.size()))
          throw Error(Error::Kind::InvalidInput, "", "prompt_len", "must be within the sequence");
        for (int32_t t : sequence)
          if (t < 0 || t >= V) throw Error(Error::Kind::InvalidInput, "", "sequence", "token id out of range");
        TokenHistory h(std::vector<int32_t>(sequence.begin(), sequence.begin() + prompt_len), V);
        for (size_t i = size_t(prompt_len); i < sequence.size(); ++i) h.push(sequence[i]);
        py::array_t<float> out(V);
        std::copy(logits.data(), logits.data() + V, out.mutable_data());
        apply_processors(o, h, out.mutable_data(), V);
        if (o.do_sample) apply_warpers(o, out.mutable_data(), V, 1);
        return out;
      },
      py::arg("options"), py::arg("sequence"), py::arg("prompt_len"), py::arg("logits"));

  // For decode loops that run outside the core (ONNX): the same processors, warpers and
  // sampler as generate(), one token at a time.
  struct PySampler {
    DecodeOptions options;
    TokenHistory history;
    Sampler sampler;
    PySampler(const DecodeOptions& o, const std::vector<int32_t>& prompt, int64_t vocab)
        : options(o), history(prompt, vocab), sampler(options, o.seed) {}
  };
  py::class_<PySampler>(m, "Sampler")
      .def(py::init([](const DecodeOptions& o, std::vector<int32_t> prompt, int64_t vocab_size) {
             o.validate(vocab_size);
             for (int32_t t : prompt)
               if (t < 0 || t >= vocab_size) throw Error(Error::Kind::InvalidInput, "", "prompt", "token id out of range");
             return std::make_unique<PySampler>(o, prompt, vocab_size);
           }),
           py::arg("options"), py::arg("prompt"), py::arg("vocab_size"))
      .def(
          "next",
          [](PySampler& s, py::array_t<float, py::array::c_style | py::array::forcecast> logits) {
            const int64_t V = int64_t(logits.size());
            if (logits.ndim() != 1 || V != int64_t(s.history.tokens().empty() ? V : V))
              throw Error(Error::Kind::InvalidInput, "", "logits", "expected a 1-d array of vocab_size scores");
            std::vector<float> row(logits.data(), logits.data() + V);
            TokenLogprobs lp;
            const int32_t tok = s.sampler.next(row.data(), V, s.history, s.options.logprobs ? &lp : nullptr);
            s.history.push(tok);
            return py::make_tuple(tok, lp.logprob, lp.top);
          },
          py::arg("logits"), "Processes one row of logits and picks the next token: (token, logprob, top_logprobs)");

  py::class_<Model>(m, "Model")
      .def(py::init(&make_model), py::arg("spec"), py::arg("sources"), py::arg("dtype"), py::arg("n_threads"),
           py::arg("quant") = 0, py::arg("group") = 32, py::arg("head_quant") = 0,
           "Loads the weights named by `sources` [(role, layer, [(path, tensor, transpose)])].")
      .def_property_readonly("n_threads", &Model::n_threads)
      .def(
          "quantized_matrices",
          [](const Model& m) {
            // [(role, layer, type, group, codes u8 [rows, row_bytes], scale u16 [rows, ng], min or None)]
            py::list out;
            for_each_matrix(m.spec(), m.weights(), [&](const std::string& role, int64_t layer, const Matrix& w) {
              if (!w.quantized()) return;
              const int64_t rb = quant_row_bytes(w.qtype, w.cols), ng = w.cols / w.group;
              py::array_t<uint8_t> codes({w.rows, rb});
              std::memcpy(codes.mutable_data(), w.data.data(), size_t(w.rows * rb));
              py::array_t<uint16_t> scale({w.rows, ng});
              std::memcpy(scale.mutable_data(), w.scale.data(), size_t(w.rows * ng) * 2);
              py::object mn = py::none();
              if (w.qtype == QuantType::Q4Asym) {
                py::array_t<uint16_t> a({w.rows, ng});
                std::memcpy(a.mutable_data(), w.min.data(), size_t(w.rows * ng) * 2);
                mn = a;
              }
              out.append(py::make_tuple(role, layer, int(w.qtype), w.group, codes, scale, mn));
            });
            return out;
          },
          "The quantized matrices, for llmos.quantize to save")
      .def_property_readonly("isa", [](const Model& m) { return std::string(isa_name(m.kernels().isa)); })
      .def(
          "logits",
          [](Model& m, py::array_t<int64_t, py::array::c_style | py::array::forcecast> ids) {
            std::vector<int32_t> toks = to_ids(ids);
            const int64_t n = int64_t(toks.size()), V = m.spec().vocab_size;
            py::array_t<float> out({n, V});
            float* op = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              Session s(m);
              m.forward(s, toks.data(), n, op, true);
            }
            return out;
          },
          py::arg("token_ids"), "[n, vocab] float32 logits of every position, in a fresh context")
      .def(
          "generate",
          [](Model& m, std::vector<std::vector<int32_t>> prompts, const DecodeOptions& o, py::object on_token) {
            TokenCallback cb;
            if (!on_token.is_none())
              cb = [&on_token](int64_t seq, int32_t t) {
                py::gil_scoped_acquire gil;
                return on_token(seq, t).cast<bool>();
              };
            std::vector<SequenceResult> rs;
            {
              py::gil_scoped_release nogil;
              rs = generate(m, prompts, o, cb);
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
          py::arg("prompts"), py::arg("options"), py::arg("on_token") = py::none(),
          "Decodes every prompt together (one forward per step), or by beam search. "
          "on_token(sequence, id) -> bool (stop that sequence) is called per token when given.");

  bind_io(m);
}
