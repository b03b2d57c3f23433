// The block-quantized formats (quant/qformat.h): their round trip, for tests.
#include <cstring>

#include "bindings/bindings.h"
#include "core/errors.h"
#include "model/weights.h"

using namespace llmos;
using namespace llmos::binding;

void bind_quant(py::module_& m) {
  m.def(
      "quantize_dequantize",
      [](FloatArray w, int quant, int64_t group) {
        // For tests: W after a round trip through the quantized format.
        const QuantType qt = quant_arg(quant, "quant");
        require(qt != QuantType::None, "quant", "expected a quantized format");
        group_arg(group, "group");
        require(w.ndim() == 2 && w.shape(1) % 64 == 0 && w.shape(1) % group == 0, "w",
                "expected [rows, k], k a multiple of 64 and group");
        const int64_t rows = w.shape(0), cols = w.shape(1);
        py::array_t<float> out({rows, cols});
        const float* wp = w.data();
        float* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          Matrix mat;
          mat.rows = rows;
          mat.cols = cols;
          mat.data.resize(size_t(rows * cols) * 4);
          std::memcpy(mat.data.data(), wp, mat.data.size());
          quantize_matrix(mat, qt, group);
          for (int64_t r = 0; r < rows; ++r) mat.row(r, op + r * cols);
        }
        return out;
      },
      py::arg("w"), py::arg("quant"), py::arg("group"));
}
