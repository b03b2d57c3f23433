// Measures the machine's memory read bandwidth, the ceiling of batch-1 decode speed
// (every weight byte is read once per token). For benchmarks, not the hot path.
#pragma once

#include <cstddef>

namespace llmos {

// Reads a buffer of `bytes` (larger than the caches) `reps` times with `threads` threads;
// returns the best rate in GB/s.
double measure_read_bandwidth(int threads, size_t bytes, int reps);

}  // namespace llmos
