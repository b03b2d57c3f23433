// The architecture description (model/arch.h), named as its Python twins
// llmos.arch.families.Architecture and llmos.arch.rope.Rope, whose to_core copies every field
// by name (tests/test_binding_names.py checks that both sides list the same fields).
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

  py::class_<Rope>(m, "Rope", "RoPE frequencies and scaling (model/arch.h)")
      .def(py::init<>())
      .def_readwrite("rotary_dim", &Rope::rotary_dim)
      .def_readwrite("inv_freq", &Rope::inv_freq)
      .def_readwrite("inv_freq_long", &Rope::inv_freq_long)
      .def_readwrite("long_after", &Rope::long_after)
      .def_readwrite("attention_scaling", &Rope::attention_scaling)
      .def_readwrite("dynamic", &Rope::dynamic)
      .def_readwrite("dynamic_base", &Rope::dynamic_base)
      .def_readwrite("dynamic_factor", &Rope::dynamic_factor)
      .def_readwrite("dynamic_max_positions", &Rope::dynamic_max_positions);

  py::class_<Architecture>(m, "Architecture", "Every switch of the generic decoder (model/arch.h)")
      .def(py::init<>())
      .def_readwrite("family", &Architecture::family)
      .def_readwrite("vocab_size", &Architecture::vocab_size)
      .def_readwrite("hidden_size", &Architecture::hidden_size)
      .def_readwrite("num_layers", &Architecture::num_layers)
      .def_readwrite("num_heads", &Architecture::num_heads)
      .def_readwrite("num_kv_heads", &Architecture::num_kv_heads)
      .def_readwrite("head_dim", &Architecture::head_dim)
      .def_readwrite("intermediate_size", &Architecture::intermediate_size)
      .def_readwrite("max_position_embeddings", &Architecture::max_position_embeddings)
      .def_readwrite("norm", &Architecture::norm)
      .def_readwrite("norm_eps", &Architecture::norm_eps)
      .def_readwrite("norm_weight_offset", &Architecture::norm_weight_offset)
      .def_readwrite("norm_bias", &Architecture::norm_bias)
      .def_readwrite("learned_positions", &Architecture::learned_positions)
      .def_readwrite("rope", &Architecture::rope)
      .def_readwrite("rope_local", &Architecture::rope_local)
      .def_readwrite("rope_layers", &Architecture::rope_layers)
      .def_readwrite("qkv_bias", &Architecture::qkv_bias)
      .def_readwrite("o_bias", &Architecture::o_bias)
      .def_readwrite("qk_norm", &Architecture::qk_norm)
      .def_readwrite("qk_norm_across_heads", &Architecture::qk_norm_across_heads)
      .def_readwrite("pre_norm", &Architecture::pre_norm)
      .def_readwrite("gated_mlp", &Architecture::gated_mlp)
      .def_readwrite("num_experts", &Architecture::num_experts)
      .def_readwrite("experts_per_token", &Architecture::experts_per_token)
      .def_readwrite("expert_intermediate_size", &Architecture::expert_intermediate_size)
      .def_readwrite("norm_topk_prob", &Architecture::norm_topk_prob)
      .def_readwrite("shared_expert_size", &Architecture::shared_expert_size)
      .def_readwrite("shared_expert_gate", &Architecture::shared_expert_gate)
      .def_readwrite("mlp_bias", &Architecture::mlp_bias)
      .def_readwrite("router_bias", &Architecture::router_bias)
      .def_readwrite("expert_bias", &Architecture::expert_bias)
      .def_readwrite("swiglu_limit", &Architecture::swiglu_limit)
      .def_readwrite("swiglu_alpha", &Architecture::swiglu_alpha)
      .def_readwrite("attn_sinks", &Architecture::attn_sinks)
      .def_readwrite("activation", &Architecture::activation)
      .def_readwrite("post_attn_norm", &Architecture::post_attn_norm)
      .def_readwrite("post_ffn_norm", &Architecture::post_ffn_norm)
      .def_readwrite("tie_word_embeddings", &Architecture::tie_word_embeddings)
      .def_readwrite("embed_scale", &Architecture::embed_scale)
      .def_readwrite("attn_scale", &Architecture::attn_scale)
      .def_readwrite("attn_softcap", &Architecture::attn_softcap)
      .def_readwrite("final_softcap", &Architecture::final_softcap)
      .def_readwrite("residual_scale", &Architecture::residual_scale)
      .def_readwrite("logit_scale", &Architecture::logit_scale)
      .def_readwrite("sliding_window", &Architecture::sliding_window)
      .def("validate", &Architecture::validate, "Raises InvalidInputError naming the first inconsistent field");
}
