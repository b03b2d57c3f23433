#include "model/weights.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "core/errors.h"
#include "core/thread_pool.h"
#include "io/safetensors.h"

namespace llmos {

namespace {

// One destination of the loader: a matrix [rows, cols] or a vector [rows] (cols == 0).
struct Target {
  Matrix* m = nullptr;
  Vector* v = nullptr;
  int64_t rows = 0, cols = 0;
  bool norm = false;  // receives Architecture::norm_weight_offset
};

struct RoleDef {
  const char* name;
  bool per_layer;
  bool (*needed)(const Architecture&);
  Target (*target)(const Architecture&, ModelWeights&, LayerWeights*, int64_t expert);
  bool per_expert = false;  // one tensor per (layer, expert): named "experts.E.<name minus 'experts.'>"
};

int64_t qkv_rows(const Architecture& s) { return (s.num_heads + 2 * s.num_kv_heads) * s.head_dim; }
int64_t up_rows(const Architecture& s) { return (s.gated_mlp ? 2 : 1) * s.mlp_width(); }
bool has_mlp(const Architecture& s) { return s.mlp_width() > 0; }
bool moe(const Architecture& s) { return s.num_experts > 0; }
bool always(const Architecture&) { return true; }
// A q/k norm weight covers one head, or every head at once (OLMo 2).
int64_t q_norm_rows(const Architecture& s, int64_t heads) { return s.qk_norm_across_heads ? heads * s.head_dim : s.head_dim; }

const RoleDef kRoles[] = {
    {"embed", false, always,
     [](const Architecture& s, ModelWeights& w, LayerWeights*, int64_t) { return Target{&w.embed, nullptr, s.vocab_size, s.hidden_size}; }},
    {"pos_embed", false, [](const Architecture& s) { return s.learned_positions; },
     [](const Architecture& s, ModelWeights& w, LayerWeights*, int64_t) { return Target{&w.pos_embed, nullptr, s.max_position_embeddings, s.hidden_size}; }},
    {"final_norm.weight", false, always,
     [](const Architecture& s, ModelWeights& w, LayerWeights*, int64_t) { return Target{nullptr, &w.final_norm_w, s.hidden_size, 0, true}; }},
    {"final_norm.bias", false, [](const Architecture& s) { return s.norm_bias; },
     [](const Architecture& s, ModelWeights& w, LayerWeights*, int64_t) { return Target{nullptr, &w.final_norm_b, s.hidden_size, 0}; }},
    {"lm_head", false, [](const Architecture& s) { return !s.tie_word_embeddings; },
     [](const Architecture& s, ModelWeights& w, LayerWeights*, int64_t) { return Target{&w.lm_head, nullptr, s.vocab_size, s.hidden_size}; }},
    {"attn_norm.weight", true, [](const Architecture& s) { return s.pre_norm; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->attn_norm_w, s.hidden_size, 0, true}; }},
    {"attn_norm.bias", true, [](const Architecture& s) { return s.pre_norm && s.norm_bias; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->attn_norm_b, s.hidden_size, 0}; }},
    {"qkv.weight", true, always,
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{&l->qkv, nullptr, qkv_rows(s), s.hidden_size}; }},
    {"qkv.bias", true, [](const Architecture& s) { return s.qkv_bias; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->qkv_b, qkv_rows(s), 0}; }},
    {"q_norm.weight", true, [](const Architecture& s) { return s.qk_norm; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->q_norm_w, q_norm_rows(s, s.num_heads), 0, true}; }},
    {"k_norm.weight", true, [](const Architecture& s) { return s.qk_norm; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->k_norm_w, q_norm_rows(s, s.num_kv_heads), 0, true}; }},
    {"o.weight", true, always,
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{&l->o, nullptr, s.hidden_size, s.num_heads * s.head_dim}; }},
    {"o.bias", true, [](const Architecture& s) { return s.o_bias; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->o_b, s.hidden_size, 0}; }},
    {"attn_post_norm.weight", true, [](const Architecture& s) { return s.post_attn_norm; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->attn_post_norm_w, s.hidden_size, 0, true}; }},
    {"ffn_norm.weight", true, [](const Architecture& s) { return s.pre_norm; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->ffn_norm_w, s.hidden_size, 0, true}; }},
    {"ffn_norm.bias", true, [](const Architecture& s) { return s.pre_norm && s.norm_bias; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->ffn_norm_b, s.hidden_size, 0}; }},
    {"up.weight", true, has_mlp,
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{&l->up, nullptr, up_rows(s), s.hidden_size}; }},
    {"up.bias", true, [](const Architecture& s) { return s.mlp_bias && has_mlp(s); },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->up_b, up_rows(s), 0}; }},
    {"down.weight", true, has_mlp,
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{&l->down, nullptr, s.hidden_size, s.mlp_width()}; }},
    {"down.bias", true, [](const Architecture& s) { return s.mlp_bias && has_mlp(s); },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->down_b, s.hidden_size, 0}; }},
    {"ffn_post_norm.weight", true, [](const Architecture& s) { return s.post_ffn_norm; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->ffn_post_norm_w, s.hidden_size, 0, true}; }},
    {"router.weight", true, moe,
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{&l->router, nullptr, s.num_experts, s.hidden_size}; }},
    {"router.bias", true, [](const Architecture& s) { return moe(s) && s.router_bias; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->router_b, s.num_experts, 0}; }},
    {"sinks", true, [](const Architecture& s) { return s.attn_sinks; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{nullptr, &l->sinks, s.num_heads, 0}; }},
    {"experts.up.bias", true, [](const Architecture& s) { return moe(s) && s.expert_bias; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t e) {
       return Target{nullptr, &l->expert_up_b[size_t(e)], 2 * s.expert_intermediate_size, 0}; }, true},
    {"experts.down.bias", true, [](const Architecture& s) { return moe(s) && s.expert_bias; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t e) {
       return Target{nullptr, &l->expert_down_b[size_t(e)], s.hidden_size, 0}; }, true},
    {"shared_gate.weight", true, [](const Architecture& s) { return s.shared_expert_gate; },
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t) { return Target{&l->shared_gate, nullptr, 1, s.hidden_size}; }},
    {"experts.up.weight", true, moe,
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t e) {
       return Target{&l->expert_up[size_t(e)], nullptr, 2 * s.expert_intermediate_size, s.hidden_size}; }, true},
    {"experts.down.weight", true, moe,
     [](const Architecture& s, ModelWeights&, LayerWeights* l, int64_t e) {
       return Target{&l->expert_down[size_t(e)], nullptr, s.hidden_size, s.expert_intermediate_size}; }, true},
};

// "experts.E.up.weight" -> ("experts.up.weight", E); any other name -> (name, -1).
std::pair<std::string, int64_t> split_expert(const std::string& name) {
  static const std::string prefix = "experts.";
  if (name.compare(0, prefix.size(), prefix) != 0) return {name, -1};
  size_t i = prefix.size(), j = i;
  while (j < name.size() && j - i < 6 && name[j] >= '0' && name[j] <= '9') ++j;
  if (j == i || j >= name.size() || name[j] != '.') return {name, -1};
  return {prefix + name.substr(j + 1), std::stoll(name.substr(i, j - i))};
}

std::string expert_name(const char* role, int64_t e) {
  const std::string r = role;  // "experts.up.weight" -> "experts.E.up.weight"
  return r.substr(0, 8) + std::to_string(e) + "." + r.substr(8);
}

const RoleDef* find_role(const std::string& name) {
  const std::string base = split_expert(name).first;
  for (const RoleDef& r : kRoles)
    if (base == r.name) return &r;
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

bool quantizable(const Matrix& m, QuantType t, int64_t group) {
  return t != QuantType::None && group % kActBlock == 0 && m.cols % group == 0 && m.cols % kQ4Chunk == 0;
}

}  // namespace

// One tensor a part names: its bytes, from a mapped file or from caller memory.
struct SourceTensor {
  const uint8_t* data = nullptr;
  DType dtype = DType::F32;
  const std::vector<int64_t>* shape = nullptr;
  std::string file;  // for messages; "" for memory
  std::string name;  // for messages
  const SafetensorsFile* mapped = nullptr;
  const TensorInfo* info = nullptr;

  size_t nbytes() const {
    size_t n = dtype_size(dtype);
    for (int64_t d : *shape) n *= size_t(d);
    return n;
  }
  // Drops a file tensor's pages from RSS once its data was copied out.
  void done() const {
    if (mapped) mapped->evict(*info);
  }
  // Drops the pages of `n` bytes at `p`, inside this tensor's data, once they were read.
  void done(const uint8_t* p, size_t n) const {
    if (mapped) mapped->evict(p, n);
  }
};

namespace {

// One part of a weight, found and checked: its logical [rows, cols] after the transpose.
struct FoundPart {
  SourceTensor st;
  int64_t rows, cols;
  bool transpose;
};

// Quantizes a matrix straight from its parts, a slab of rows at a time, so that only the codes
// and one slab in float32 are ever held: never the whole matrix in float (a 152k-token
// embedding is 545 MB in float32, more than the rest of a 0.5B model in int8), and each slab's
// file pages leave RSS once read. Every row is converted by read_float and quantized by
// quantize_row exactly as quantize_matrix does after copy_part, so the codes are the same.
void quantize_from_parts(const std::vector<FoundPart>& found, Matrix& m, int64_t rows, int64_t cols, QuantType type,
                         int64_t group, ThreadPool* pool) {
  const int64_t ng = cols / group, rb = quant_row_bytes(type, cols);
  Buffer codes(size_t(rows * rb)), scale(size_t(rows * ng) * 2), min;
  if (type == QuantType::Q4Asym) min.resize(size_t(rows * ng) * 2);
  if (codes.size() > 0) std::memset(codes.data(), 0, codes.size());  // an empty Buffer's data() is null
  // 4 MB of float32 per slab: large enough to keep every thread busy, small next to any model.
  const int64_t slab = std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(cols, 1));
  Buffer scratch(size_t(std::min(slab, std::max<int64_t>(rows, 1)) * cols) * 4);
  int64_t row = 0;  // the destination row of the part's first row
  for (const FoundPart& f : found) {
    const size_t es = dtype_size(f.st.dtype);
    for (int64_t r0 = 0; r0 < f.rows; r0 += slab) {
      const int64_t n = std::min(slab, f.rows - r0);
      auto rows_fn = [&](int64_t a, int64_t b) {
        for (int64_t r = a; r < b; ++r) {
          float* x = scratch.as<float>() + r * cols;
          const int64_t pr = r0 + r;  // the row within the part
          if (!f.transpose && f.st.dtype == DType::F32)
            std::memcpy(x, f.st.data + size_t(pr) * cols * 4, size_t(cols) * 4);
          else
            for (int64_t c = 0; c < cols; ++c)
              x[c] = read_float(f.st.data, f.st.dtype, f.transpose ? c * f.rows + pr : pr * cols + c);
          const int64_t dr = row + pr;
          quantize_row(type, group, x, cols, codes.data() + dr * rb, scale.as<uint16_t>() + dr * ng,
                       type == QuantType::Q4Asym ? min.as<uint16_t>() + dr * ng : nullptr);
        }
      };
      if (pool) pool->parallel_for(n, std::max<int64_t>(1, (int64_t(1) << 16) / cols), rows_fn);
      else rows_fn(0, n);
      // A transposed part reads every page for every slab: its pages go when it is done.
      if (!f.transpose) f.st.done(f.st.data + size_t(r0) * cols * es, size_t(n) * cols * es);
    }
    f.st.done();
    row += f.rows;
  }
  m.rows = rows;
  m.cols = cols;
  m.dtype = DType::F32;  // as quantize_matrix leaves it
  m.data = std::move(codes);
  m.scale = std::move(scale);
  m.min = std::move(min);
  m.qtype = type;
  m.group = group;
}

}  // namespace

// The files opened during one load, each opened once.
class SourceFiles {
 public:
  // Tensor `index` of the part's arrays, or tensor part.tensor + suffix of its file.
  // False when there is no such tensor.
  bool find(const WeightPart& part, size_t index, const std::string& suffix, SourceTensor* out) {
    out->name = part.tensor + suffix;
    if (!part.arrays.empty()) {
      if (index >= part.arrays.size()) return false;
      const HostTensor& h = part.arrays[index];
      out->data = h.data;
      out->dtype = h.dtype;
      out->shape = &h.shape;
      out->file.clear();
      return true;
    }
    auto it = files_.find(part.path);
    if (it == files_.end()) it = files_.emplace(part.path, SafetensorsFile::open(part.path)).first;
    const TensorInfo* info = it->second->find(out->name);
    if (!info) return false;
    out->data = it->second->data(*info);
    out->dtype = info->dtype;
    out->shape = &info->shape;
    out->file = part.path;
    out->mapped = it->second.get();
    out->info = info;
    return true;
  }

 private:
  std::map<std::string, std::shared_ptr<SafetensorsFile>> files_;
};

void for_each_matrix(const Architecture& spec, const ModelWeights& w,
                     const std::function<void(const std::string&, int64_t, const Matrix&)>& fn) {
  ModelWeights& mw = const_cast<ModelWeights&>(w);  // target() only locates; nothing is written
  for (const RoleDef& role : kRoles) {
    if (!role.needed(spec)) continue;
    for (int64_t l = role.per_layer ? 0 : -1; l < (role.per_layer ? spec.num_layers : 0); ++l) {
      for (int64_t e = 0; e < (role.per_expert ? spec.num_experts : 1); ++e) {
        Target t = role.target(spec, mw, l >= 0 ? &mw.layers[size_t(l)] : nullptr, e);
        if (t.m) fn(role.per_expert ? expert_name(role.name, e) : role.name, l, *t.m);
      }
    }
  }
}

namespace {

// Copies a pre-quantized matrix, checking every shape and dtype.
void load_prequantized(const WeightSource& src, SourceFiles& files, const WeightPart& part, Target& t) {
  const QuantType qt = src.prequant;
  const int64_t g = src.group;
  if (g < kActBlock || g % kActBlock || t.cols % g || t.cols % kQ4Chunk)
    throw Error(Error::Kind::Tensor, part.path, part.tensor, "group size " + std::to_string(g) + " does not fit");
  const int64_t ng = t.cols / g;
  struct Want { const char* suffix; DType dt; int64_t cols; Buffer* dst; };
  Matrix& m = *t.m;
  std::vector<Want> wants = {{".codes", DType::U8, quant_row_bytes(qt, t.cols), &m.data},
                             {".scale", DType::F16, ng, &m.scale}};
  if (qt == QuantType::Q4Asym) wants.push_back({".min", DType::F16, ng, &m.min});
  for (size_t i = 0; i < wants.size(); ++i) {
    const Want& want = wants[i];
    SourceTensor st;
    if (!files.find(part, i, want.suffix, &st))
      throw Error(Error::Kind::Tensor, part.path, part.tensor + want.suffix,
                  "tensor not found (quantized " + src.role + ")");
    const auto& sh = *st.shape;
    if (st.dtype != want.dt || sh.size() != 2 || sh[0] != t.rows || sh[1] != want.cols)
      throw Error(Error::Kind::Tensor, st.file, st.name,
                  std::string("expected ") + dtype_name(want.dt) + " [" + std::to_string(t.rows) + ", " +
                      std::to_string(want.cols) + "], got " + dtype_name(st.dtype) + " " + shape_str(sh));
    want.dst->resize(st.nbytes());
    std::memcpy(want.dst->data(), st.data, want.dst->size());
    st.done();
  }
  m.rows = t.rows;
  m.cols = t.cols;
  m.qtype = qt;
  m.group = g;
  m.dtype = DType::U8;
}

}  // namespace

void Matrix::row(int64_t r, float* dst) const {
  if (quantized()) { dequantize_row(qview(), r, dst); return; }
  for (int64_t i = 0; i < cols; ++i) dst[i] = read_float(data.data(), dtype, r * cols + i);
}

void quantize_matrix(Matrix& m, QuantType type, int64_t group, ThreadPool* pool) {
  if (m.dtype != DType::F32 || m.quantized())
    throw Error(Error::Kind::InvalidInput, "", "quant", "only float32 matrices are quantized");
  const int64_t ng = m.cols / group, rb = quant_row_bytes(type, m.cols);
  Buffer codes(size_t(m.rows * rb)), scale(size_t(m.rows * ng) * 2), min;
  if (type == QuantType::Q4Asym) min.resize(size_t(m.rows * ng) * 2);
  if (codes.size() > 0) std::memset(codes.data(), 0, codes.size());  // an empty Buffer's data() is null
  auto rows = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      quantize_row(type, group, m.data.as<float>() + r * m.cols, m.cols, codes.data() + r * rb,
                   scale.as<uint16_t>() + r * ng, type == QuantType::Q4Asym ? min.as<uint16_t>() + r * ng : nullptr);
  };
  if (pool) pool->parallel_for(m.rows, std::max<int64_t>(1, (int64_t(1) << 16) / m.cols), rows);
  else rows(0, m.rows);
  m.data = std::move(codes);
  m.scale = std::move(scale);
  m.min = std::move(min);
  m.qtype = type;
  m.group = group;
}

WeightLoader::WeightLoader(const Architecture& spec, DType dtype, const QuantSpec& quant)
    : spec_(spec), dtype_(dtype), quant_(quant), files_(std::make_unique<SourceFiles>()) {
  spec.validate();  // bounds num_layers before the per-layer table below is made
  if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16)
    throw Error(Error::Kind::InvalidInput, "", "dtype", "weights can be float32, bfloat16 or float16");
  w_.layers.resize(size_t(spec.num_layers));
  for (LayerWeights& l : w_.layers) {
    l.expert_up.resize(size_t(spec.num_experts));
    l.expert_down.resize(size_t(spec.num_experts));
    l.expert_up_b.resize(size_t(spec.num_experts));
    l.expert_down_b.resize(size_t(spec.num_experts));
  }
  // Quantizing at load is CPU work (the Q6 head above all: ~14 ns per value on one core).
  if (quant.n_threads > 1 && (quant.type != QuantType::None || quant.head_type != QuantType::None))
    pool_ = std::make_unique<ThreadPool>(quant.n_threads);
}

WeightLoader::~WeightLoader() = default;

void WeightLoader::add(const WeightSource& src) {
  const Architecture& spec = spec_;
  const QuantSpec& quant = quant_;
  ModelWeights& w = w_;
  SourceFiles& files = *files_;
  const RoleDef* role = find_role(src.role);
  const std::string where = src.role + (src.layer >= 0 ? " (layer " + std::to_string(src.layer) + ")" : "");
  if (!role) throw Error(Error::Kind::InvalidInput, "", src.role, "unknown weight role");
  if (role->per_layer != (src.layer >= 0) || src.layer >= spec.num_layers)
    throw Error(Error::Kind::InvalidInput, "", where, "layer index out of range");
  if (!role->needed(spec)) throw Error(Error::Kind::InvalidInput, "", where, "role not used by this architecture");
  const int64_t expert = split_expert(src.role).second;
  if (role->per_expert && (expert < 0 || expert >= spec.num_experts))
    throw Error(Error::Kind::InvalidInput, "", where,
                "expert index out of range (num_experts " + std::to_string(spec.num_experts) + ")");
  if (!seen_.insert({src.role, src.layer}).second) throw Error(Error::Kind::InvalidInput, "", where, "given twice");
  if (src.parts.empty()) throw Error(Error::Kind::InvalidInput, "", where, "no source tensors");

  Target t = role->target(spec, w, src.layer >= 0 ? &w.layers[size_t(src.layer)] : nullptr, expert);
  const bool head = src.role == "embed" || src.role == "lm_head";
  // The position table is a lookup, read one row per token: quantizing it saves no time. The
  // router's choice is discrete: it stays in float, so quantizing never changes which experts run.
  const bool keep_float = src.role == "pos_embed" || src.role == "router.weight" || src.role == "shared_gate.weight";
  const QuantType qt = keep_float ? QuantType::None : head ? quant.head_type : quant.type;
  if (src.prequant != QuantType::None) {
    if (!t.m || src.parts.size() != 1)
      throw Error(Error::Kind::InvalidInput, "", where, "a quantized source needs one part and a matrix role");
    load_prequantized(src, files, src.parts[0], t);
    return;
  }
  // Every part is found and its shape checked before the destination is allocated, so that
  // what is allocated is no larger than the tensors given (a config that claims a huge
  // dimension meets a tensor that does not have it, not an allocation of that size).
  std::vector<FoundPart> found;
  int64_t row = 0;
  for (const WeightPart& part : src.parts) {
    SourceTensor st;
    if (!files.find(part, 0, "", &st))
      throw Error(Error::Kind::Tensor, part.path, part.tensor, "tensor not found (needed for " + where + ")");
    if (st.dtype != DType::F32 && st.dtype != DType::BF16 && st.dtype != DType::F16 && st.dtype != DType::F64)
      throw Error(Error::Kind::Tensor, st.file, st.name,
                  std::string("dtype ") + dtype_name(st.dtype) + " is not a float type (needed for " + where + ")");
    // The part's logical shape [rows, cols] after the optional transpose.
    const auto& sh = *st.shape;
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
    ok = ok && prow >= 0 && row + prow <= t.rows;
    if (!ok) {
      std::string expected = t.cols == 0 ? "[" + std::to_string(t.rows) + "]"
                                         : (part.transpose ? "[" + std::to_string(t.cols) + ", rows]"
                                                           : "[rows, " + std::to_string(t.cols) + "]");
      throw Error(Error::Kind::Tensor, st.file, st.name,
                  "shape " + shape_str(sh) + " does not fit " + where + " of " + spec.family + ": expected " +
                      expected + " with " + std::to_string(t.rows) + " rows in all");
    }
    found.push_back({st, prow, t.cols == 0 ? 1 : pcol, part.transpose});
    row += prow;
  }
  if (row != t.rows) {
    std::string names;
    for (const WeightPart& p : src.parts) names += (names.empty() ? "" : " + ") + p.tensor;
    throw Error(Error::Kind::Tensor, src.parts[0].path, names,
                "gives " + std::to_string(row) + " rows for " + where + ", expected " + std::to_string(t.rows));
  }

  Matrix probe;
  probe.cols = t.cols;
  const bool quantize = t.m && quantizable(probe, qt, quant.group);
  // The router is also kept in float32 whatever the dtype: [num_experts, hidden] is small, and
  // its rounding would flip near-tied expert choices.
  const bool router = src.role == "router.weight" || src.role == "shared_gate.weight";
  if (quantize) {
    quantize_from_parts(found, *t.m, t.rows, t.cols, qt, quant.group, pool_.get());
    return;
  }
  const DType load_type = router ? DType::F32 : dtype_;
  if (t.m) {
    t.m->dtype = load_type;
    t.m->rows = t.rows;
    t.m->cols = t.cols;
    t.m->data.resize(size_t(t.rows) * size_t(t.cols) * dtype_size(load_type));
  } else {
    t.v->assign(size_t(t.rows), 0.f);
  }
  row = 0;
  for (const FoundPart& f : found) {
    copy_part(f.st.data, f.st.dtype, f.rows, f.cols, f.transpose, t, row, load_type,
              t.norm ? spec.norm_weight_offset : 0.f);
    f.st.done();
    row += f.rows;
  }
}

ModelWeights WeightLoader::finish() {
  for (const RoleDef& role : kRoles) {
    if (!role.needed(spec_)) continue;
    const int64_t n = role.per_layer ? spec_.num_layers : 1;
    for (int64_t l = 0; l < n; ++l)
      for (int64_t e = 0; e < (role.per_expert ? spec_.num_experts : 1); ++e) {
        const std::string name = role.per_expert ? expert_name(role.name, e) : role.name;
        if (!seen_.count({name, role.per_layer ? l : -1}))
          throw Error(Error::Kind::Tensor, "", name,
                      "no tensor given for this weight" + (role.per_layer ? " in layer " + std::to_string(l) : std::string()));
      }
  }
  return std::move(w_);
}

ModelWeights load_weights(const Architecture& spec, const std::vector<WeightSource>& sources, DType dtype,
                          const QuantSpec& quant) {
  WeightLoader loader(spec, dtype, quant);
  for (const WeightSource& src : sources) loader.add(src);
  return loader.finish();
}

}  // namespace llmos
