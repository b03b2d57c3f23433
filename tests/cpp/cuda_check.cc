// The CUDA library linked into a plain program, without Python (.ci/cuda builds and runs it): it
// must link against the static CUDA runtime alone and, on a machine without a driver or a GPU,
// report no device and refuse an op with the reason rather than crash. On a GPU it also runs
// one op end to end (RMSNorm of a row of ones: every output is w).
#include <cstdio>
#include <string>
#include <vector>

#include "core/errors.h"
#include "cuda/cuda_ops.h"

namespace cu = llmos::cuda;

// Every function of cuda_ops.h, so the link fails here (as the module's would) when one has no
// CUDA definition, although this program calls only a few.
const void* const kEveryOp[] = {
    reinterpret_cast<const void*>(&cu::device_count), reinterpret_cast<const void*>(&cu::device_unavailable_reason),
    reinterpret_cast<const void*>(&cu::device_info), reinterpret_cast<const void*>(&cu::set_device),
    reinterpret_cast<const void*>(&cu::copy_to_device), reinterpret_cast<const void*>(&cu::copy_to_host),
    reinterpret_cast<const void*>(&cu::synchronize), reinterpret_cast<const void*>(&cu::gemv_quant),
    reinterpret_cast<const void*>(&cu::gemv_half), reinterpret_cast<const void*>(&cu::rms_norm),
    reinterpret_cast<const void*>(&cu::rope), reinterpret_cast<const void*>(&cu::activate_gated),
    reinterpret_cast<const void*>(&cu::attention_splits), reinterpret_cast<const void*>(&cu::attention_workspace_floats),
    reinterpret_cast<const void*>(&cu::attention_decode), reinterpret_cast<const void*>(&cu::sample),
    reinterpret_cast<const void*>(&cu::time_gemv_quant), reinterpret_cast<const void*>(&cu::time_gemv_half),
};

int main() {
  std::printf("%zu ops linked\n", sizeof(kEveryOp) / sizeof(kEveryOp[0]));
  const int n = cu::device_count();
  std::printf("cuda devices: %d\n", n);
  if (n == 0) {
    const std::string why = cu::device_unavailable_reason(0);
    std::printf("why none: %s\n", why.c_str());
    if (why.empty()) return 1;
    try {
      cu::set_device(0);
      std::printf("set_device(0) did not refuse\n");
      return 1;
    } catch (const llmos::Error& e) {
      std::printf("refused as expected: %s\n", e.what());
    }
    return 0;
  }
  const cu::DeviceInfo d = cu::device_info(0);
  std::printf("GPU 0: %s sm_%d%d, %.0f GB/s peak\n", d.name.c_str(), d.major, d.minor, d.peak_bandwidth_gbs);
  const int64_t len = 1000;
  std::vector<float> x(len, 1.0f), w(len, 0.5f), out(len, 0.0f);
  cu::DeviceBuffer dx(len * 4), dw(len * 4);
  cu::copy_to_device(dx.data(), x.data(), len * 4);
  cu::copy_to_device(dw.data(), w.data(), len * 4);
  cu::rms_norm(dx.as<float>(), dw.as<float>(), 0.0f, 1, len, dx.as<float>(), nullptr);
  cu::synchronize();
  cu::copy_to_host(out.data(), dx.data(), len * 4);
  for (float v : out)
    if (v < 0.4999f || v > 0.5001f) { std::printf("rms_norm gave %f, expected 0.5\n", v); return 1; }
  std::printf("rms_norm on the GPU: ok\n");
  return 0;
}
