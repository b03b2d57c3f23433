#include "bindings/bindings.h"

#include <cstring>

#include "core/errors.h"

namespace llmos::binding {

void require(bool ok, const std::string& field, const std::string& what) {
  if (!ok) throw Error(Error::Kind::InvalidInput, "", field, what);
}

std::string shape_str(const py::array& a) {
  std::string s = "[";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

DType dtype_arg(const std::string& name) {
  if (name == "float32") return DType::F32;
  if (name == "bfloat16") return DType::BF16;
  if (name == "float16") return DType::F16;
  throw Error(Error::Kind::InvalidInput, "", "dtype", "expected float32, bfloat16 or float16, got '" + name + "'");
}

int64_t group_arg(int64_t group, const std::string& field) {
  require(group > 0 && group % kActBlock == 0, field, "must be a positive multiple of 32, got " + std::to_string(group));
  return group;
}

std::vector<int32_t> token_ids_arg(const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& a,
                                   const std::string& field) {
  require(a.ndim() == 1, field, "expected a 1-d sequence of ids, got " + std::to_string(a.ndim()) + " dimensions");
  std::vector<int32_t> ids(size_t(a.size()));
  const int64_t* p = a.data();
  for (size_t i = 0; i < ids.size(); ++i) {
    require(p[i] >= INT32_MIN && p[i] <= INT32_MAX, field, "token id " + std::to_string(p[i]) + " is out of range");
    ids[i] = int32_t(p[i]);
  }
  return ids;
}

Matrix quantized_copy(const float* w, int64_t rows, int64_t cols, QuantType quant, int64_t group) {
  Matrix mat;
  mat.rows = rows;
  mat.cols = cols;
  mat.data.resize(size_t(rows * cols) * 4);
  if (mat.data.size() > 0) std::memcpy(mat.data.data(), w, mat.data.size());  // an empty vector's data() may be null
  quantize_matrix(mat, quant, group);
  return mat;
}

}  // namespace llmos::binding
