// The block-quantized formats (quant/qformat.h) and their round trip, for tests.
//
// QuantType is an IntEnum: its numbers are stored in the metadata of checkpoints written by
// llmos.quantize. Python's None stands for QuantType::None (a float matrix), so every
// QuantType argument that may be "not quantized" is optional and None is never a member.
#include <pybind11/native_enum.h>


#include "bindings/bindings.h"
#include "core/errors.h"
#include "model/weights.h"

using namespace llmos;
using namespace llmos::binding;

void bind_quant(py::module_& m) {
  py::native_enum<QuantType>(m, "QuantType", "enum.IntEnum", "A block-quantized weight format (quant/qformat.h)")
      .value("Q8", QuantType::Q8, "8-bit codes, zero point 128")
      .value("Q4", QuantType::Q4, "4-bit codes, zero point 8 (as llama.cpp's Q4_0)")
      .value("Q4Asym", QuantType::Q4Asym, "4-bit codes with a float16 offset per group (AWQ / GPTQ style)")
      .value("Q6", QuantType::Q6, "6-bit codes, zero point 32 (the embedding / LM head of int4 models)")
      .finalize();

  m.def(
      "quantize_dequantize",
      [](FloatArray w, QuantType quant, int64_t group) {
        // For tests: W after a round trip through the quantized format.
        group_arg(group, "group");
        require(w.ndim() == 2 && w.shape(0) > 0 && w.shape(1) > 0 && w.shape(1) % 64 == 0 && w.shape(1) % group == 0,
                "w", "expected [rows, k], rows > 0, k a positive multiple of 64 and group, got " + shape_str(w));
        const int64_t rows = w.shape(0), cols = w.shape(1);
        py::array_t<float> out({rows, cols});
        const float* wp = w.data();
        float* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          const Matrix mat = quantized_copy(wp, rows, cols, quant, group);
          for (int64_t r = 0; r < rows; ++r) mat.row(r, op + r * cols);
        }
        return out;
      },
      py::arg("w"), py::arg("quant"), py::arg("group"));
}
