// CUDA status codes as llmos errors, and the checks every op runs on its arguments.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "core/errors.h"

namespace llmos::cuda {

// A failed CUDA call becomes Error(InvalidInput, field "device") with CUDA's message and the
// call that failed: the core never aborts, and Python sees an llmos.errors class.
inline void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  throw Error(Error::Kind::InvalidInput, "", "device",
              std::string("CUDA ") + what + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// After a launch: a bad configuration shows up here, a fault in the kernel at the next sync.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

inline void require(bool ok, const char* field, const std::string& what) {
  if (!ok) throw Error(Error::Kind::InvalidInput, "", field, what);
}

}  // namespace llmos::cuda
