#include "model/weights.h"

#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "core/errors.h"
#include "io/safetensors.h"

namespace llmos {

namespace {

// One destination of the loader: a matrix [rows, cols] or a vector [rows] (cols == 0).
struct Target {
  Matrix* m = nullptr;
  Vector* v = nullptr;
  int64_t rows = 0, cols = 0;
  bool norm = false;  // receives ArchSpec::norm_weight_offset
};

struct RoleDef {
  const char* name;
  bool per_layer;
  bool (*needed)(const ArchSpec&);
  Target (*target)(const ArchSpec&, ModelWeights&, LayerWeights*);
};

int64_t qkv_rows(const ArchSpec& s) { return (s.n_heads + 2 * s.n_kv_heads) * s.head_dim; }
int64_t up_rows(const ArchSpec& s) { return (s.gated_mlp ? 2 : 1) * s.intermediate_size; }
bool always(const ArchSpec&) { return true; }

const RoleDef kRoles[] = {
    {"embed", false, always,
     [](const ArchSpec& s, ModelWeights& w, LayerWeights*) { return Target{&w.embed, nullptr, s.vocab_size, s.hidden_size}; }},
    {"pos_embed", false, [](const ArchSpec& s) { return s.learned_positions; },
     [](const ArchSpec& s, ModelWeights& w, LayerWeights*) { return Target{&w.pos_embed, nullptr, s.max_positions, s.hidden_size}; }},
    {"final_norm.weight", false, always,
     [](const ArchSpec& s, ModelWeights& w, LayerWeights*) { return Target{nullptr, &w.final_norm_w, s.hidden_size, 0, true}; }},
    {"final_norm.bias", false, [](const ArchSpec& s) { return s.norm_bias; },
     [](const ArchSpec& s, ModelWeights& w, LayerWeights*) { return Target{nullptr, &w.final_norm_b, s.hidden_size, 0}; }},
    {"lm_head", false, [](const ArchSpec& s) { return !s.tied_lm_head; },
     [](const ArchSpec& s, ModelWeights& w, LayerWeights*) { return Target{&w.lm_head, nullptr, s.vocab_size, s.hidden_size}; }},
    {"attn_norm.weight", true, always,
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{nullptr, &l->attn_norm_w, s.hidden_size, 0, true}; }},
    {"attn_norm.bias", true, [](const ArchSpec& s) { return s.norm_bias; },
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{nullptr, &l->attn_norm_b, s.hidden_size, 0}; }},
    {"qkv.weight", true, always,
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{&l->qkv, nullptr, qkv_rows(s), s.hidden_size}; }},
    {"qkv.bias", true, [](const ArchSpec& s) { return s.qkv_bias; },
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{nullptr, &l->qkv_b, qkv_rows(s), 0}; }},
    {"q_norm.weight", true, [](const ArchSpec& s) { return s.qk_norm; },
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{nullptr, &l->q_norm_w, s.head_dim, 0, true}; }},
    {"k_norm.weight", true, [](const ArchSpec& s) { return s.qk_norm; },
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{nullptr, &l->k_norm_w, s.head_dim, 0, true}; }},
    {"o.weight", true, always,
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{&l->o, nullptr, s.hidden_size, s.n_heads * s.head_dim}; }},
    {"o.bias", true, [](const ArchSpec& s) { return s.o_bias; },
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{nullptr, &l->o_b, s.hidden_size, 0}; }},
    {"attn_post_norm.weight", true, [](const ArchSpec& s) { return s.post_attn_norm; },
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{nullptr, &l->attn_post_norm_w, s.hidden_size, 0, true}; }},
    {"ffn_norm.weight", true, always,
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{nullptr, &l->ffn_norm_w, s.hidden_size, 0, true}; }},
    {"ffn_norm.bias", true, [](const ArchSpec& s) { return s.norm_bias; },
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{nullptr, &l->ffn_norm_b, s.hidden_size, 0}; }},
    {"up.weight", true, always,
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{&l->up, nullptr, up_rows(s), s.hidden_size}; }},
    {"up.bias", true, [](const ArchSpec& s) { return s.mlp_bias; },
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{nullptr, &l->up_b, up_rows(s), 0}; }},
    {"down.weight", true, always,
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{&l->down, nullptr, s.hidden_size, s.intermediate_size}; }},
    {"down.bias", true, [](const ArchSpec& s) { return s.mlp_bias; },
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{nullptr, &l->down_b, s.hidden_size, 0}; }},
    {"ffn_post_norm.weight", true, [](const ArchSpec& s) { return s.post_ffn_norm; },
     [](const ArchSpec& s, ModelWeights&, LayerWeights* l) { return Target{nullptr, &l->ffn_post_norm_w, s.hidden_size, 0, true}; }},
};

const RoleDef* find_role(const std::string& name) {
  for (const RoleDef& r : kRoles)
    if (name == r.name) return &r;
  return nullptr;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

float read_float(const uint8_t* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: { float f; std::memcpy(&f, p + 4 * i, 4); return f; }
    case DType::BF16: { uint16_t h; std::memcpy(&h, p + 2 * i, 2); return bf16_to_f32(h); }
    case DType::F16: { uint16_t h; std::memcpy(&h, p + 2 * i, 2); return f16_to_f32(h); }
    case DType::F64: { double d; std::memcpy(&d, p + 8 * i, 8); return float(d); }
    default: return 0.f;
  }
}

// Copies element (r, c) of the part's logical [rows, cols] view into the destination.
// Same-dtype, untransposed rows are copied as bytes so bf16 -> bf16 is exact.
void copy_part(const uint8_t* src, DType st, int64_t rows, int64_t cols, bool transpose, Target& t,
               int64_t row_offset, DType dst_type, float offset) {
  if (t.v) {
    for (int64_t r = 0; r < rows; ++r) (*t.v)[row_offset + r] = read_float(src, st, r) + offset;
    return;
  }
  uint8_t* dst = t.m->data.data();
  const size_t es = dtype_size(dst_type);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* drow = dst + size_t(row_offset + r) * cols * es;
    if (!transpose && st == dst_type) {
      std::memcpy(drow, src + size_t(r) * cols * es, size_t(cols) * es);
      continue;
    }
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = transpose ? c * rows + r : r * cols + c;
      const float f = read_float(src, st, i);
      if (dst_type == DType::F32) std::memcpy(drow + 4 * c, &f, 4);
      else {
        const uint16_t h = dst_type == DType::BF16 ? f32_to_bf16(f) : f32_to_f16(f);
        std::memcpy(drow + 2 * c, &h, 2);
      }
    }
  }
}

}  // namespace

ModelWeights load_weights(const ArchSpec& spec, const std::vector<WeightSource>& sources, DType dtype) {
  if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16)
    throw Error(Error::Kind::InvalidInput, "", "dtype", "weights can be float32, bfloat16 or float16");
  ModelWeights w;
  w.layers.resize(size_t(spec.n_layers));
  std::map<std::string, std::shared_ptr<SafetensorsFile>> files;
  std::set<std::pair<std::string, int64_t>> seen;

  for (const WeightSource& src : sources) {
    const RoleDef* role = find_role(src.role);
    const std::string where = src.role + (src.layer >= 0 ? " (layer " + std::to_string(src.layer) + ")" : "");
    if (!role) throw Error(Error::Kind::InvalidInput, "", src.role, "unknown weight role");
    if (role->per_layer != (src.layer >= 0) || src.layer >= spec.n_layers)
      throw Error(Error::Kind::InvalidInput, "", where, "layer index out of range");
    if (!role->needed(spec)) throw Error(Error::Kind::InvalidInput, "", where, "role not used by this architecture");
    if (!seen.insert({src.role, src.layer}).second)
      throw Error(Error::Kind::InvalidInput, "", where, "given twice");
    if (src.parts.empty()) throw Error(Error::Kind::InvalidInput, "", where, "no source tensors");

    Target t = role->target(spec, w, src.layer >= 0 ? &w.layers[size_t(src.layer)] : nullptr);
    if (t.m) {
      t.m->dtype = dtype;
      t.m->rows = t.rows;
      t.m->cols = t.cols;
      t.m->data.resize(size_t(t.rows) * size_t(t.cols) * dtype_size(dtype));
    } else {
      t.v->assign(size_t(t.rows), 0.f);
    }

    int64_t row = 0;
    for (const WeightPart& part : src.parts) {
      auto it = files.find(part.path);
      if (it == files.end()) it = files.emplace(part.path, SafetensorsFile::open(part.path)).first;
      const SafetensorsFile& f = *it->second;
      const TensorInfo* info = f.find(part.tensor);
      if (!info) throw Error(Error::Kind::Tensor, part.path, part.tensor, "tensor not found (needed for " + where + ")");
      if (info->dtype != DType::F32 && info->dtype != DType::BF16 && info->dtype != DType::F16 && info->dtype != DType::F64)
        throw Error(Error::Kind::Tensor, part.path, part.tensor,
                    std::string("dtype ") + dtype_name(info->dtype) + " is not a float type (needed for " + where + ")");
      // The part's logical shape [rows, cols] after the optional transpose.
      const auto& sh = info->shape;
      int64_t prow, pcol;
      bool ok;
      if (t.cols == 0) {
        ok = sh.size() == 1;
        prow = ok ? sh[0] : 0;
        pcol = 0;
      } else {
        ok = sh.size() == 2;
        prow = ok ? (part.transpose ? sh[1] : sh[0]) : 0;
        pcol = ok ? (part.transpose ? sh[0] : sh[1]) : 0;
        ok = ok && pcol == t.cols;
      }
      ok = ok && row + prow <= t.rows;
      if (!ok) {
        std::string expected = t.cols == 0 ? "[" + std::to_string(t.rows) + "]"
                                           : (part.transpose ? "[" + std::to_string(t.cols) + ", rows]"
                                                             : "[rows, " + std::to_string(t.cols) + "]");
        throw Error(Error::Kind::Tensor, part.path, part.tensor,
                    "shape " + shape_str(sh) + " does not fit " + where + " of " + spec.family + ": expected " +
                        expected + " with " + std::to_string(t.rows) + " rows in all");
      }
      copy_part(f.data(*info), info->dtype, prow, t.cols == 0 ? 1 : pcol, part.transpose, t, row, dtype,
                t.norm ? spec.norm_weight_offset : 0.f);
      row += prow;
    }
    if (row != t.rows) {
      std::string names;
      for (const WeightPart& p : src.parts) names += (names.empty() ? "" : " + ") + p.tensor;
      throw Error(Error::Kind::Tensor, src.parts[0].path, names,
                  "gives " + std::to_string(row) + " rows for " + where + ", expected " + std::to_string(t.rows));
    }
  }

  for (const RoleDef& role : kRoles) {
    if (!role.needed(spec)) continue;
    const int64_t n = role.per_layer ? spec.n_layers : 1;
    for (int64_t l = 0; l < n; ++l)
      if (!seen.count({role.name, role.per_layer ? l : -1}))
        throw Error(Error::Kind::Tensor, "", role.name,
                    "no tensor given for this weight" + (role.per_layer ? " in layer " + std::to_string(l) : std::string()));
  }
  return w;
}

}  // namespace llmos
