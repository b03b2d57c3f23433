// The pieces of the llmos._core module, one file per topic, and the argument conversions
// they share. A binding converts and checks its arguments, releases the GIL around the
// core's work, and converts the result back; it holds no logic of its own. Every check
// throws Error(InvalidInput) naming the argument, which reaches Python as
// llmos.errors.InvalidInputError.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/errors.h"
#include "kernels/kernels.h"
#include "model/generate.h"
#include "model/weights.h"
#include "quant/qformat.h"

namespace py = pybind11;

void bind_arch(py::module_& m);      // bind_arch.cc: Architecture, Rope, NormKind, Activation
void bind_io(py::module_& m);        // bind_io.cc: safetensors headers and tensors
void bind_kernels(py::module_& m);   // bind_kernels.cc: ISA queries and one-kernel calls for tests
void bind_quant(py::module_& m);     // bind_quant.cc: QuantType (Python None for QuantType::None), round trip
void bind_sampling(py::module_& m);  // bind_sampling.cc: DecodeOptions, process_logits, Sampler
void bind_model(py::module_& m);     // bind_model.cc: Model (load, logits, generate)
void bind_engine(py::module_& m);    // bind_engine.cc: Engine (continuous batching)
void bind_cuda(py::module_& m);      // bind_cuda.cc: the CUDA device (built or not) and one-kernel calls

namespace llmos::binding {

// A float32 argument, converted (copied) by pybind11 when it is not C-contiguous float32.
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// The llmos.errors class a core Error of this kind becomes (module.cc, and the engine's events).
const char* error_class(Error::Kind k);

// The finish_reason string of a finished sequence (bind_model.cc; the engine's events say the same).
const char* finish_name(FinishReason r);

// Throws Error(InvalidInput) naming `field` unless ok.
void require(bool ok, const std::string& field, const std::string& what);

std::string shape_str(const py::array& a);                  // "[2, 3]", for messages

DType dtype_arg(const std::string& name);                   // float32 | bfloat16 | float16
int64_t group_arg(int64_t group, const std::string& field);  // a positive multiple of 32
// For the test bindings: a copy of the float32 matrix w [rows, cols], quantized. Call without the GIL.
Matrix quantized_copy(const float* w, int64_t rows, int64_t cols, QuantType quant, int64_t group);
// A 1-d sequence of token ids, each within int32.
std::vector<int32_t> token_ids_arg(const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& a,
                                   const std::string& field);

}  // namespace llmos::binding
