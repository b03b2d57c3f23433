// Typed errors thrown by the core. The binding maps each Kind to a class in
// python/llmos/errors.py, so a Python user sees which file, field or tensor is wrong.
// Library code throws these; it never aborts or exits the process.
#pragma once

#include <stdexcept>
#include <string>

namespace llmos {

class Error : public std::runtime_error {
 public:
  enum class Kind {
    Io,           // a file cannot be opened, mapped or read           -> errors.ModelFileError
    Safetensors,  // a .safetensors file breaks the format              -> errors.SafetensorsError
    Tensor,       // a tensor is missing, misshapen or has a bad dtype  -> errors.TensorError
    InvalidInput, // a caller-supplied value is out of range            -> errors.InvalidInputError
    Context,      // a sequence does not fit the context                -> errors.ContextLengthError
    Cancelled,    // the caller's CancelToken stopped the call            -> errors.CancelledError
    Numerical,    // the model computed NaN or infinity                 -> errors.NumericalError
  };

  // file: path of the offending file ("" when none); field: header field, tensor name or
  // argument name ("" when none); detail: what was expected and what was found.
  Error(Kind kind, std::string file, std::string field, const std::string& detail)
      : std::runtime_error(compose(file, field, detail)),
        kind_(kind), file_(std::move(file)), field_(std::move(field)), detail_(detail) {}

  Kind kind() const { return kind_; }
  const std::string& file() const { return file_; }
  const std::string& field() const { return field_; }
  const std::string& detail() const { return detail_; }

 private:
  static std::string compose(const std::string& file, const std::string& field,
                             const std::string& detail) {
    std::string s;
    if (!file.empty()) s += file + ": ";
    if (!field.empty()) s += "'" + field + "': ";
    return s + detail;
  }
  Kind kind_;
  std::string file_, field_, detail_;
};

}  // namespace llmos
