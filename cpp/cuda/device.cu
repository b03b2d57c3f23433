// Device queries and device memory. The CUDA runtime is linked statically; it opens the
// driver on the first call below, so nothing here runs at import time and a machine without
// a driver gets device_count() == 0 and a reason, not a crash.
#include <cuda_runtime.h>

#include <string>

#include "cuda/cuda_check.cuh"
#include "cuda/cuda_ops.h"

namespace llmos::cuda {

namespace {

// cudaGetDeviceCount's status, and the count when it succeeded.
cudaError_t query_count(int* n) {
  *n = 0;
  const cudaError_t e = cudaGetDeviceCount(n);
  if (e != cudaSuccess) {
    *n = 0;
    cudaGetLastError();  // the runtime keeps a failed init sticky; clear what can be cleared
  }
  return e;
}

}  // namespace

int device_count() {
  int n = 0;
  query_count(&n);
  return n;
}

std::string device_unavailable_reason(int index) {
  int n = 0;
  const cudaError_t e = query_count(&n);
  switch (e) {
    case cudaSuccess: break;
    case cudaErrorNoDevice: return "no CUDA GPU is visible (the driver reports none; check CUDA_VISIBLE_DEVICES)";
    case cudaErrorInsufficientDriver:
      return "no NVIDIA driver is loaded, or it is older than this build's CUDA runtime (" +
             std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10) + ")";
    default: return std::string("the CUDA runtime cannot start: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
  }
  if (index < 0) return "device index " + std::to_string(index) + " is negative";
  if (index >= n)
    return "there is no GPU " + std::to_string(index) + " (" + std::to_string(n) + " visible: cuda:0" +
           (n > 1 ? " .. cuda:" + std::to_string(n - 1) : std::string()) + ")";
  return "";
}

DeviceInfo device_info(int index) {
  const std::string why = device_unavailable_reason(index);
  require(why.empty(), "device", why);
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, index), "cudaGetDeviceProperties");
  DeviceInfo d;
  d.name = p.name;
  d.major = p.major;
  d.minor = p.minor;
  d.sm_count = p.multiProcessorCount;
  d.total_memory = int64_t(p.totalGlobalMem);
  d.bus_width_bits = p.memoryBusWidth;
  // CUDA 13 dropped cudaDeviceProp::memoryClockRate; the attribute remains.
  check(cudaDeviceGetAttribute(&d.memory_clock_khz, cudaDevAttrMemoryClockRate, index), "cudaDeviceGetAttribute");
  d.peak_bandwidth_gbs = 2.0 * double(d.memory_clock_khz) * 1e3 * double(d.bus_width_bits) / 8.0 / 1e9;
  return d;
}

void set_device(int index) {
  const std::string why = device_unavailable_reason(index);
  require(why.empty(), "device", why);
  check(cudaSetDevice(index), "cudaSetDevice");
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  check(cudaMalloc(&p_, bytes), "cudaMalloc");
}

DeviceBuffer::~DeviceBuffer() {
  if (p_) cudaFree(p_);  // a destructor cannot throw; a failed free leaves nothing to do
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) cudaFree(p_);
    p_ = o.p_;
    bytes_ = o.bytes_;
    o.p_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (to device)");
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (to host)");
}

void copy_on_device(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy (on device)");
}

void synchronize() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

Stream stream_create() {
  cudaStream_t s = nullptr;
  check(cudaStreamCreate(&s), "cudaStreamCreate");
  return s;
}

void stream_destroy(Stream s) {
  if (s) cudaStreamDestroy(s);
}

void stream_synchronize(Stream s) { check(cudaStreamSynchronize(s), "cudaStreamSynchronize"); }

void capture_begin(Stream s) {
  check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
}

GraphExec capture_end(Stream s) {
  cudaGraph_t g = nullptr;
  check(cudaStreamEndCapture(s, &g), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  check(e, "cudaGraphInstantiate");
  return exec;
}

void capture_abort(Stream s) {
  cudaGraph_t g = nullptr;
  if (cudaStreamEndCapture(s, &g) == cudaSuccess && g) cudaGraphDestroy(g);
  cudaGetLastError();  // the failed capture's status is not the next call's
}

void graph_launch(GraphExec g, Stream s) { check(cudaGraphLaunch(g, s), "cudaGraphLaunch"); }

void graph_destroy(GraphExec g) {
  if (g) cudaGraphExecDestroy(g);
}

}  // namespace llmos::cuda
