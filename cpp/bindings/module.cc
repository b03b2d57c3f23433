// The Python boundary (llmos._core). Thin by design: each bind_*.cc converts arguments,
// releases the GIL while the core computes, and converts results back; this file maps
// llmos::Error to the classes in llmos.errors. The public API lives in python/llmos/;
// nothing outside it should import _core directly.
#include <pybind11/pybind11.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "bindings/bindings.h"
#include "core/errors.h"

using llmos::Error;

namespace llmos::binding {

const char* error_class(Error::Kind k) {
  switch (k) {
    case Error::Kind::Io: return "ModelFileError";
    case Error::Kind::Safetensors: return "SafetensorsError";
    case Error::Kind::Tensor: return "TensorError";
    case Error::Kind::InvalidInput: return "InvalidInputError";
    case Error::Kind::Context: return "ContextLengthError";
    case Error::Kind::Cancelled: return "CancelledError";
    case Error::Kind::Numerical: return "NumericalError";
  }
  return "LlmosError";
}

}  // namespace llmos::binding

using llmos::binding::error_class;

namespace {

void raise_python(const Error& e) {
  py::object errors = py::module_::import("llmos.errors");
  py::object cls = errors.attr(error_class(e.kind()));
  py::dict kw;
  kw["file"] = e.file().empty() ? py::object(py::none()) : py::object(py::str(e.file()));
  kw["field"] = e.field().empty() ? py::object(py::none()) : py::object(py::str(e.field()));
  // Messages quote file contents; never let a stray byte turn into a UnicodeDecodeError.
  const std::string what = e.what();
  py::object msg = py::reinterpret_steal<py::object>(
      PyUnicode_DecodeUTF8(what.data(), Py_ssize_t(what.size()), "backslashreplace"));
  py::object exc = cls(msg, **kw);
  PyErr_SetObject(cls.ptr(), exc.ptr());
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "llmos C++ core: weights, kernels, the decoder and the decode loop";
#if defined(__GLIBC__)
  // glibc raises its mmap threshold each time a large block is freed, after which large
  // blocks come from the heap and stay resident when freed: loading a model and a 512-token
  // prefill then left ~25 MB of freed memory in RSS (SmolLM2 int8: peak 279 -> 253 MB with
  // a fixed 1 MB threshold). A fixed threshold returns every large block to the OS.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      raise_python(e);
    }
  });

  bind_arch(m);
  bind_quant(m);  // before the functions that take a QuantType
  bind_kernels(m);
  bind_sampling(m);
  bind_model(m);
  bind_engine(m);
  bind_io(m);
  bind_cuda(m);
}
