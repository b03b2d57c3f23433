// The architecture description (model/arch.h) under the names of its Python twins,
// llmos.families.Architecture and llmos.rope.Rope, whose to_core copies every field by name
// (tests/test_binding_names.py checks that both sides list the same fields).
#include <pybind11/native_enum.h>
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "model/arch.h"

using namespace llmos;

void bind_arch(py::module_& m) {
  py::native_enum<NormKind>(m, "NormKind", "enum.Enum")
      .value("LayerNorm", NormKind::LayerNorm)
      .value("RMSNorm", NormKind::RMSNorm)
      .finalize();
  py::native_enum<Activation>(m, "Activation", "enum.Enum")
      .value("Silu", Activation::Silu)
      .value("GeluErf", Activation::GeluErf)
      .value("GeluTanh", Activation::GeluTanh)
      .value("Relu", Activation::Relu)
      .finalize();

  py::class_<RopeSpec>(m, "Rope", "RoPE frequencies and scaling (model/arch.h)")
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

  py::class_<ArchSpec>(m, "Architecture", "Every switch of the generic decoder (model/arch.h)")
      .def(py::init<>())
      .def_readwrite("family", &ArchSpec::family)
      .def_readwrite("vocab_size", &ArchSpec::vocab_size)
      .def_readwrite("hidden_size", &ArchSpec::hidden_size)
      .def_readwrite("num_layers", &ArchSpec::n_layers)
      .def_readwrite("num_heads", &ArchSpec::n_heads)
      .def_readwrite("num_kv_heads", &ArchSpec::n_kv_heads)
      .def_readwrite("head_dim", &ArchSpec::head_dim)
      .def_readwrite("intermediate_size", &ArchSpec::intermediate_size)
      .def_readwrite("max_position_embeddings", &ArchSpec::max_positions)
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
      .def_readwrite("activation", &ArchSpec::act)
      .def_readwrite("post_attn_norm", &ArchSpec::post_attn_norm)
      .def_readwrite("post_ffn_norm", &ArchSpec::post_ffn_norm)
      .def_readwrite("tie_word_embeddings", &ArchSpec::tied_lm_head)
      .def_readwrite("embed_scale", &ArchSpec::embed_scale)
      .def_readwrite("attn_scale", &ArchSpec::attn_scale)
      .def_readwrite("attn_softcap", &ArchSpec::attn_softcap)
      .def_readwrite("final_softcap", &ArchSpec::final_softcap)
      .def_readwrite("sliding_window", &ArchSpec::sliding_window)
      .def("validate", &ArchSpec::validate, "Raises InvalidInputError naming the first inconsistent field");
}
