// The block-quantized formats (quant/qformat.h): their round trip (for tests) and the blocks of
// a float matrix (for writers of pre-quantized checkpoints: the GGUF import).
//
// QuantType is an IntEnum: its numbers are stored in the metadata of checkpoints written by
// llmos.quantize. Python's None stands for QuantType::None (a float matrix), so every
// QuantType argument that may be "not quantized" is optional and None is never a member.
#include <pybind11/native_enum.h>


#include "bindings/bindings.h"
#include <cstring>
#include <memory>

#include "core/errors.h"
#include "core/thread_pool.h"
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

  m.def(
      "quantize_blocks",
      [](FloatArray w, QuantType quant, int64_t group, int64_t threads) {
        // (codes u8 [rows, row_bytes], scale u16 [rows, cols / group] float16 bits, min or None):
        // exactly the blocks the loader makes when it quantizes the same float32 rows.
        group_arg(group, "group");
        require(w.ndim() == 2 && w.shape(0) > 0 && w.shape(1) > 0 && w.shape(1) % 64 == 0 && w.shape(1) % group == 0,
                "w", "expected [rows, k], rows > 0, k a positive multiple of 64 and group, got " + shape_str(w));
        require(threads >= 1 && threads <= ThreadPool::kMaxThreads, "threads",
                "must be from 1 to " + std::to_string(ThreadPool::kMaxThreads));
        const int64_t rows = w.shape(0), cols = w.shape(1), ng = cols / group;
        const int64_t rb = quant_row_bytes(quant, cols);
        py::array_t<uint8_t> codes({rows, rb});
        py::array_t<uint16_t> scale({rows, ng});
        py::object mn = py::none();
        uint16_t* min_out = nullptr;
        if (quant == QuantType::Q4Asym) {
          py::array_t<uint16_t> a({rows, ng});
          min_out = a.mutable_data();
          mn = a;
        }
        const float* wp = w.data();
        uint8_t* cp = codes.mutable_data();
        uint16_t* sp = scale.mutable_data();
        {
          py::gil_scoped_release nogil;
          Matrix mat;
          mat.rows = rows;
          mat.cols = cols;
          mat.data.resize(size_t(rows * cols) * 4);
          std::memcpy(mat.data.data(), wp, mat.data.size());
          std::unique_ptr<ThreadPool> pool;
          if (threads > 1) pool = std::make_unique<ThreadPool>(int(threads));
          quantize_matrix(mat, quant, group, pool.get());
          std::memcpy(cp, mat.data.data(), size_t(rows * rb));
          std::memcpy(sp, mat.scale.data(), size_t(rows * ng) * 2);
          if (min_out) std::memcpy(min_out, mat.min.data(), size_t(rows * ng) * 2);
        }
        return py::make_tuple(codes, scale, mn);
      },
      py::arg("w"), py::arg("quant"), py::arg("group") = 32, py::arg("threads") = 1,
      "The blocks of a float32 matrix in `quant` (quant/qformat.h), as the loader quantizes it");
}
