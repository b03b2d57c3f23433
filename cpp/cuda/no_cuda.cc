// cuda_ops.h in a build without CUDA (LLMOS_CUDA off, CMakeLists.txt compiles this file
// instead of cpp/cuda/*.cu): no device, and every op refuses with the reason, so the bindings
// and their Python callers are the same in both builds.
#include <string>

#include "core/errors.h"
#include "cuda/cuda_ops.h"

namespace llmos::cuda {

namespace {

const char* kReason =
    "this llmos was built without CUDA (rebuild on a machine with the CUDA toolkit and an NVIDIA driver, or "
    "with -DLLMOS_CUDA=ON)";

[[noreturn]] void refuse() { throw Error(Error::Kind::InvalidInput, "", "device", kReason); }

}  // namespace

int device_count() { return 0; }
std::string device_unavailable_reason(int) { return kReason; }
DeviceInfo device_info(int) { refuse(); }
void set_device(int) { refuse(); }

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes) refuse();
}
DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  p_ = o.p_;
  bytes_ = o.bytes_;
  o.p_ = nullptr;
  o.bytes_ = 0;
  return *this;
}
void copy_to_device(void*, const void*, size_t) { refuse(); }
void copy_to_host(void*, const void*, size_t) { refuse(); }
void copy_on_device(void*, const void*, size_t) { refuse(); }
void synchronize() { refuse(); }
Stream stream_create() { refuse(); }
void stream_destroy(Stream) {}
void stream_synchronize(Stream) { refuse(); }
void capture_begin(Stream) { refuse(); }
GraphExec capture_end(Stream) { refuse(); }
void capture_abort(Stream) {}
void graph_launch(GraphExec, Stream) { refuse(); }
void graph_destroy(GraphExec) {}

void gemv_quant(const QView&, const float*, int64_t, float*, int64_t, Stream) { refuse(); }
void gemv_half(DType, const uint16_t*, int64_t, int64_t, const float*, int64_t, float*, int64_t, Stream) { refuse(); }
void gemv_float(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, Stream) { refuse(); }
void norm_rows(const float*, int64_t, int64_t, int64_t, int64_t, const float*, const float*, float, bool, float*,
               Stream) {
  refuse();
}
void rope_rows(float*, int64_t, int64_t, int64_t, int64_t, int64_t, const float*, const float*, Stream) { refuse(); }
void kv_append(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float*, float*, int64_t, int64_t,
               Stream, const int64_t*) {
  refuse();
}
void mlp_activation(int, bool, const float*, int64_t, int64_t, int64_t, float*, Stream) { refuse(); }
void add_bias(float*, int64_t, int64_t, int64_t, const float*, Stream) { refuse(); }
void add_residual(float*, const float*, int64_t, float, Stream) { refuse(); }
void finish_logits(float*, int64_t, float, float, Stream) { refuse(); }
void rms_norm(const float*, const float*, float, int64_t, int64_t, float*, Stream) { refuse(); }
void rope(float*, int64_t, int64_t, int64_t, int64_t, const float*, const float*, Stream) { refuse(); }
void activate_gated(int, const float*, const float*, float*, int64_t, Stream) { refuse(); }
int64_t attention_splits(int64_t) { return 1; }
int64_t attention_workspace_floats(int64_t, int64_t, int64_t) { return 0; }
void attention_decode(const DecodeAttention&, float*, Stream) { refuse(); }
void sample(const float*, int64_t, int64_t, const SampleParams&, int32_t*, float*, Stream) { refuse(); }
double time_gemv_quant(QuantType, int64_t, int64_t, int64_t, int64_t, int) { refuse(); }
double time_gemv_half(DType, int64_t, int64_t, int64_t, int) { refuse(); }

}  // namespace llmos::cuda
