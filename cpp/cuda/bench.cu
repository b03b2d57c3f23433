// Device timings for tools/bench_cuda.py: one op launched many times between two CUDA
// events. The weights are copied enough times that the copies together are 4x the L2 cache
// and the launches rotate through them, so each launch reads its matrix from memory (an H200's
// L2 would otherwise hold a whole 3072 x 8192 int4 matrix and flatter the bandwidth).
#include <cuda_runtime.h>

#include <vector>

#include "cuda/cuda_check.cuh"
#include "cuda/cuda_ops.h"

namespace llmos::cuda {

namespace {

int64_t copies_for(int64_t bytes) {
  int dev = 0, l2 = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev), "cudaDeviceGetAttribute");
  const int64_t n = (4 * int64_t(l2) + bytes - 1) / (bytes > 0 ? bytes : 1);
  return n < 1 ? 1 : n > 64 ? 64 : n;
}

template <class Launch>
double time_launches(int reps, int64_t copies, Launch launch) {
  for (int64_t c = 0; c < copies; ++c) launch(c);  // warm-up: one pass over every copy
  cudaEvent_t t0, t1;
  check(cudaEventCreate(&t0), "cudaEventCreate");
  check(cudaEventCreate(&t1), "cudaEventCreate");
  check(cudaEventRecord(t0), "cudaEventRecord");
  for (int r = 0; r < reps; ++r) launch(r % copies);
  check(cudaEventRecord(t1), "cudaEventRecord");
  check(cudaEventSynchronize(t1), "cudaEventSynchronize");
  float ms = 0.f;
  check(cudaEventElapsedTime(&ms, t0, t1), "cudaEventElapsedTime");
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  return double(ms) * 1e-3 / reps;
}

}  // namespace

double time_gemv_quant(QuantType type, int64_t group, int64_t rows, int64_t cols, int64_t m, int reps) {
  require(reps >= 1, "reps", "must be >= 1");
  const int64_t code_bytes = rows * quant_row_bytes(type, cols), scale_bytes = rows * (cols / group) * 2;
  const int64_t copies = copies_for(code_bytes + scale_bytes * (type == QuantType::Q4Asym ? 2 : 1));
  std::vector<DeviceBuffer> codes, scales;
  for (int64_t c = 0; c < copies; ++c) {
    codes.emplace_back(size_t(code_bytes));
    scales.emplace_back(size_t(scale_bytes));
    check(cudaMemset(codes.back().data(), 0x5a, size_t(code_bytes)), "cudaMemset");
    check(cudaMemset(scales.back().data(), 0x20, size_t(scale_bytes)), "cudaMemset");  // half 0x2020: small, finite
  }
  DeviceBuffer x(size_t(m * cols * 4)), y(size_t(m * rows * 4));
  check(cudaMemset(x.data(), 0, x.bytes()), "cudaMemset");
  return time_launches(reps, copies, [&](int64_t c) {
    const QView w{type, rows, cols, group, codes[size_t(c)].as<uint8_t>(), scales[size_t(c)].as<uint16_t>(),
                  type == QuantType::Q4Asym ? scales[size_t(c)].as<uint16_t>() : nullptr};
    gemv_quant(w, x.as<float>(), m, y.as<float>(), rows, nullptr);
  });
}

double time_gemv_half(DType type, int64_t rows, int64_t cols, int64_t m, int reps) {
  require(reps >= 1, "reps", "must be >= 1");
  const int64_t bytes = rows * cols * 2;
  const int64_t copies = copies_for(bytes);
  std::vector<DeviceBuffer> ws;
  for (int64_t c = 0; c < copies; ++c) {
    ws.emplace_back(size_t(bytes));
    check(cudaMemset(ws.back().data(), 0x20, size_t(bytes)), "cudaMemset");
  }
  DeviceBuffer x(size_t(m * cols * 4)), y(size_t(m * rows * 4));
  check(cudaMemset(x.data(), 0, x.bytes()), "cudaMemset");
  return time_launches(reps, copies, [&](int64_t c) {
    gemv_half(type, ws[size_t(c)].as<uint16_t>(), rows, cols, x.as<float>(), m, y.as<float>(), rows, nullptr);
  });
}

}  // namespace llmos::cuda
