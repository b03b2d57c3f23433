// The Python boundary (llmos._core). Thin by design: convert arguments, release the GIL
// while the core computes, and map llmos::Error to the classes in llmos.errors. The
// public API lives in python/llmos/; nothing outside it should import _core directly.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/cpu_features.h"
#include "core/errors.h"
#include "kernels/kernels.h"
#include "model/decoder.h"
#include "model/generate.h"

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
  py::object exc = cls(py::str(e.what()), **kw);
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
using SourceTuple = std::tuple<std::string, int64_t, std::vector<PartTuple>>;

std::unique_ptr<Model> make_model(const ArchSpec& spec, const std::vector<SourceTuple>& sources,
                                  const std::string& dtype, int n_threads) {
  std::vector<WeightSource> ws;
  for (const auto& [role, layer, parts] : sources) {
    WeightSource w{role, layer, {}};
    for (const auto& [path, tensor, transpose] : parts) w.parts.push_back({path, tensor, transpose});
    ws.push_back(std::move(w));
  }
  const DType dt = dtype_arg(dtype);
  spec.validate();
  py::gil_scoped_release nogil;
  ModelWeights weights = load_weights(spec, ws, dt);
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

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      raise_python(e);
    }
  });

  m.def("cpu_isa", [] { return std::string(isa_name(cpu_active_isa())); }, "ISA the kernels use");
  m.def("cpu_best_isa", [] { return std::string(isa_name(cpu_best_isa())); }, "widest ISA this CPU supports");

  m.def(
      "kernel_matmul",
      [](const std::string& isa, py::array_t<float, py::array::c_style | py::array::forcecast> x, py::array w,
         const std::string& wdtype) {
        // For tests: y = x @ W^T with one ISA's kernel. W is float32, or uint16 holding
        // bfloat16 / float16 bits.
        Isa i;
        if (!isa_from_name(isa, &i)) throw Error(Error::Kind::InvalidInput, "", "isa", "unknown ISA '" + isa + "'");
        const KernelTable& kt = kernels_for(i);
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
          matmul_for(kt, dt)(xp, n, k, wp, 0, rows, yp, rows);
        }
        return y;
      },
      py::arg("isa"), py::arg("x"), py::arg("w"), py::arg("w_dtype"));

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

  py::class_<Model>(m, "Model")
      .def(py::init(&make_model), py::arg("spec"), py::arg("sources"), py::arg("dtype"), py::arg("n_threads"),
           "Loads the weights named by `sources` [(role, layer, [(path, tensor, transpose)])].")
      .def_property_readonly("n_threads", &Model::n_threads)
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
          [](Model& m, py::array_t<int64_t, py::array::c_style | py::array::forcecast> prompt, int64_t max_new_tokens,
             std::vector<int32_t> eos, bool do_sample, float temperature, int64_t top_k, float top_p, uint64_t seed,
             py::object on_token) {
            GenerateParams p;
            p.max_new_tokens = max_new_tokens;
            p.eos_token_ids = std::move(eos);
            p.sampling = SamplingParams{do_sample, temperature, top_k, top_p, seed};
            std::vector<int32_t> toks = to_ids(prompt);
            std::function<bool(int32_t)> cb;
            if (!on_token.is_none())
              cb = [&on_token](int32_t t) {
                py::gil_scoped_acquire gil;
                return on_token(t).cast<bool>();
              };
            GenerateResult r;
            {
              py::gil_scoped_release nogil;
              Session s(m);
              r = generate(m, s, toks, p, cb);
            }
            return py::make_tuple(r.tokens, finish_name(r.finish));
          },
          py::arg("prompt"), py::arg("max_new_tokens"), py::arg("eos_token_ids"), py::arg("do_sample"),
          py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("seed"), py::arg("on_token"),
          "Runs the decode loop; on_token(id) -> bool (stop) is called per token when given. "
          "Returns (new token ids, finish reason).");

  bind_io(m);
}
