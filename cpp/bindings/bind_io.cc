// Python bindings for the safetensors reader: header inspection of files and in-memory
// images, and copying one tensor out as a numpy array. Errors are llmos::Error and reach
// Python through the translator registered in module.cc (SafetensorsError, ModelFileError,
// TensorError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "core/errors.h"
#include "io/safetensors.h"

namespace {

using llmos::DType;

py::tuple header_to_python(const llmos::SafetensorsHeader& h) {
  // Strings were validated as UTF-8 by the parser, so py::str cannot fail on them.
  py::list tensors;
  for (const llmos::TensorInfo& t : h.tensors) {
    py::list shape;
    for (int64_t d : t.shape) shape.append(py::int_(d));
    py::dict d;
    d["name"] = py::str(t.name);
    d["dtype"] = py::str(llmos::dtype_name(t.dtype));
    d["shape"] = shape;
    d["data_offsets"] = py::make_tuple(py::int_(t.begin), py::int_(t.end));
    tensors.append(d);
  }
  py::dict metadata;
  for (const auto& kv : h.metadata) metadata[py::str(kv.first)] = py::str(kv.second);
  return py::make_tuple(tensors, metadata);
}

// Explicit little-endian codes, so the bytes are interpreted as stored on any host. Types
// numpy lacks come back as raw bits: BF16 as uint16, FP8 as uint8.
py::dtype numpy_dtype(DType t) {
  switch (t) {
    case DType::BOOL: return py::dtype("?");
    case DType::U8: return py::dtype("u1");
    case DType::I8: return py::dtype("i1");
    case DType::U16: return py::dtype("<u2");
    case DType::I16: return py::dtype("<i2");
    case DType::F16: return py::dtype("<f2");
    case DType::BF16: return py::dtype("<u2");
    case DType::U32: return py::dtype("<u4");
    case DType::I32: return py::dtype("<i4");
    case DType::F32: return py::dtype("<f4");
    case DType::U64: return py::dtype("<u8");
    case DType::I64: return py::dtype("<i8");
    case DType::F64: return py::dtype("<f8");
    case DType::F8_E4M3: case DType::F8_E5M2: return py::dtype("u1");
  }
  throw std::logic_error("unhandled dtype");
}

std::shared_ptr<llmos::SafetensorsFile> open_file(const std::string& path) {
  py::gil_scoped_release nogil;
  return llmos::SafetensorsFile::open(path);
}

}  // namespace

void bind_io(py::module_& m) {
  m.def(
      "safetensors_read_header",
      [](const std::string& path) { return header_to_python(open_file(path)->header()); },
      py::arg("path"),
      "Validate a .safetensors file and return (tensors, metadata): tensors is a list, in\n"
      "header order, of dicts {name, dtype, shape, data_offsets}; metadata is a dict of str.\n"
      "Raises SafetensorsError for a malformed file, ModelFileError if it cannot be read.");

  m.def(
      "safetensors_parse_bytes",
      [](const py::bytes& data, const std::string& name) {
        char* buf = nullptr;
        Py_ssize_t len = 0;
        if (PyBytes_AsStringAndSize(data.ptr(), &buf, &len) != 0) throw py::error_already_set();
        llmos::SafetensorsHeader h;
        {
          // bytes are immutable and `data` holds a reference, so the buffer stays valid.
          py::gil_scoped_release nogil;
          h = llmos::parse_safetensors(reinterpret_cast<const uint8_t*>(buf), size_t(len), name);
        }
        return header_to_python(h);
      },
      py::arg("data"), py::arg("name") = "<bytes>",
      "Validate an in-memory safetensors image; same result as safetensors_read_header.\n"
      "name labels the image in error messages.");

  m.def(
      "safetensors_read_tensor",
      [](const std::string& path, const std::string& name) {
        auto file = open_file(path);
        const llmos::TensorInfo* t = file->find(name);
        if (!t)
          throw llmos::Error(llmos::Error::Kind::Tensor, path, name,
                             "no such tensor in this file (" +
                                 std::to_string(file->header().tensors.size()) + " tensors)");
        std::vector<py::ssize_t> shape(t->shape.begin(), t->shape.end());
        py::array out(numpy_dtype(t->dtype), shape);
        if (t->nbytes() > 0) {
          void* dst = out.mutable_data();
          const uint8_t* src = file->data(*t);
          size_t n = size_t(t->nbytes());
          py::gil_scoped_release nogil;  // `out` is not yet visible to any other thread
          std::memcpy(dst, src, n);
        }
        return out;
      },
      py::arg("path"), py::arg("name"),
      "Return a copy of one tensor as a numpy array (BF16 as uint16 bits, FP8 as uint8 bits).\n"
      "Raises TensorError if the file has no tensor of that name.");
}
