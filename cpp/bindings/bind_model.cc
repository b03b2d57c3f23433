// The model (model/decoder.h, model/generate.h): loading weights, logits, and the decode
// loops.
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>

#include "bindings/bindings.h"
#include "core/cpu_features.h"
#include "core/errors.h"
#include "model/decoder.h"
#include "model/generate.h"

using namespace llmos;
using namespace llmos::binding;

namespace {

const char* finish_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length: return "length";
    case FinishReason::Eos: return "eos";
    case FinishReason::Stop: return "stop";
  }
  return "length";
}

using PartTuple = std::tuple<std::string, std::string, bool>;
// (role, layer, parts, prequant type or None, group)
using SourceTuple = std::tuple<std::string, int64_t, std::vector<PartTuple>, std::optional<QuantType>, int64_t>;

std::unique_ptr<Model> make_model(const ArchSpec& arch, const std::vector<SourceTuple>& sources,
                                  const std::string& dtype, int n_threads, std::optional<QuantType> quant,
                                  int64_t group, std::optional<QuantType> head_quant) {
  std::vector<WeightSource> ws;
  for (const auto& [role, layer, parts, prequant, pgroup] : sources) {
    WeightSource w{role, layer, {}, prequant.value_or(QuantType::None), pgroup};
    for (const auto& [path, tensor, transpose] : parts) w.parts.push_back({path, tensor, transpose});
    ws.push_back(std::move(w));
  }
  const DType dt = dtype_arg(dtype);
  require(n_threads >= 1, "n_threads", "must be >= 1");
  arch.validate();
  QuantSpec qs{quant.value_or(QuantType::None), group, head_quant.value_or(QuantType::None), n_threads};
  group_arg(group, "group");
  py::gil_scoped_release nogil;
  ModelWeights weights = load_weights(arch, ws, dt, qs);
  return std::make_unique<Model>(arch, std::move(weights), n_threads);
}

}  // namespace

void bind_model(py::module_& m) {
  py::class_<Model>(m, "Model")
      .def(py::init(&make_model), py::arg("arch"), py::arg("sources"), py::arg("dtype"), py::arg("n_threads"),
           py::arg("quant") = py::none(), py::arg("group") = 32, py::arg("head_quant") = py::none(),
           "Loads the weights named by `sources` [(role, layer, [(path, tensor, transpose)])].")
      .def_property_readonly("n_threads", &Model::n_threads)
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
}
