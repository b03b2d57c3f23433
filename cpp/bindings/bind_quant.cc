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
        if (w.ndim() != 2 || w.shape(1) % 64 || w.shape(1) % group)
          throw Error(Error::Kind::InvalidInput, "", "w", "expected [rows, k], k a multiple of 64 and group");
        Matrix mat;
        mat.rows = w.shape(0);
        mat.cols = w.shape(1);
        mat.data.resize(size_t(mat.rows * mat.cols) * 4);
        std::memcpy(mat.data.data(), w.data(), mat.data.size());
        quantize_matrix(mat, quant_arg(quant, "quant"), group);
        py::array_t<float> out({mat.rows, mat.cols});
        for (int64_t r = 0; r < mat.rows; ++r) mat.row(r, out.mutable_data() + r * mat.cols);
        return out;
      },
      py::arg("w"), py::arg("quant"), py::arg("group"));
}
