#include "kernels/quantized_matmul.h"

#include <algorithm>
#include <vector>

#include "core/errors.h"

namespace llmos {

namespace {

void add_bias(const float* bias, int64_t t0, int64_t t1, int64_t r0, int64_t r1, float* y, int64_t rows) {
  if (!bias) return;
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t r = r0; r < r1; ++r) y[t * rows + r] += bias[r];
}

// x quantized to int8 for the integer kernels: codes in [-max_code, max_code] and scales per
// 32-value block, and per weight group the sum of d * sum(codes) that the zero-point term needs.
ActView quantize_for(const KernelTable& kt, ThreadPool& pool, QuantScratch& s, const float* x, int64_t n,
                     const QView& w, int max_code = 127) {
  const int64_t k = w.cols;
  const int64_t nb = k / kActBlock, ng = k / w.group, per_group = w.group / kActBlock;
  s.q.resize(size_t(n * k));
  s.d.resize(size_t(n * nb) * 4);
  s.sd.resize(size_t(n * nb) * 4);
  s.sdg.resize(size_t(n * ng) * 4);
  s.qsum.resize(size_t(n * nb) * 4);
  int8_t* q = reinterpret_cast<int8_t*>(s.q.data());
  int32_t* qsum = s.qsum.as<int32_t>();
  float* d = s.d.as<float>();
  float* sd = s.sd.as<float>();
  float* sdg = s.sdg.as<float>();
  pool.parallel_for(n, 1, [&](int64_t t0, int64_t t1) {
    kt.quantize_acts(x + t0 * k, t1 - t0, k, q + t0 * k, d + t0 * nb, sd + t0 * nb, qsum + t0 * nb, max_code);
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t g = 0; g < ng; ++g) {
        float acc = 0.f;
        for (int64_t b = g * per_group; b < (g + 1) * per_group; ++b) acc += sd[t * nb + b];
        sdg[t * ng + g] = acc;
      }
  });
  return ActView{q, d, sd, qsum, n, k};
}

// y [n, w.rows] rows [r0, r1) for the quantized tokens [t0, t0 + n) of a (sdg their group sums)
// with the row kernel (+ bias), walking the tokens in blocks so a block of x stays in cache
// while the rows pass over it.
void row_slice(const KernelTable& kt, const ActView& a, const float* sdg, const QView& w, int64_t t0, int64_t n,
               int64_t r0, int64_t r1, const float* bias, float* y) {
  const int64_t rows = w.rows, k = w.cols, nb = k / kActBlock, ng = k / w.group;
  constexpr int64_t kTokenBlock = 64;
  for (int64_t t = 0; t < n; t += kTokenBlock) {
    const int64_t nt = std::min(kTokenBlock, n - t), tx = t0 + t;
    const ActView xv{a.q + tx * k, a.d + tx * nb, a.sd + tx * nb, a.qsum + tx * nb, nt, k};
    kt.qmatmul(xv, sdg + tx * ng, w, r0, r1, y + t * rows + r0, rows);
    add_bias(bias, t, t + nt, r0, r1, y, rows);
  }
}

// Rows [row0, row1) with the row kernel on int8 activations; threads split the output rows.
void row_kernel(const KernelTable& kt, ThreadPool& pool, QuantScratch& s, const float* x, int64_t n, const QView& w,
                int64_t row0, int64_t row1, const float* bias, float* y) {
  const ActView a = quantize_for(kt, pool, s, x, n, w);
  const float* sdg = s.sdg.as<float>();
  const int64_t grain = std::max<int64_t>(16, (((row1 - row0) / (pool.size() * 8)) + 3) & ~int64_t(3));
  pool.parallel_for(row1 - row0, grain, [&](int64_t b, int64_t e) {
    row_slice(kt, a, sdg, w, 0, n, row0 + b, row0 + e, bias, y);
  });
}

// All rows with the packed int8 GEMM (kt.qgemm_prefill): threads split the rows in whole
// 32-row panels, each panel packed once and run over every token. The panels are dealt in
// 2 x threads runs of equal length (+-1 panel): parallel_for's chunks of ceil(panels / 8) left
// 2 threads 16 and 12 of a 896-row matrix's 28 panels (Qwen2.5-0.5B's MLP down projection).
void int8_gemm(const KernelTable& kt, ThreadPool& pool, QuantScratch& s, const float* x, int64_t n, const QView& w,
               const float* bias, float* y) {
  const int64_t rows = w.rows;
  const int max_code = kt.qgemm_acts7_types >> int(w.type) & 1 ? kActMaxCode7 : 127;
  const ActView a = quantize_for(kt, pool, s, x, n, w, max_code);
  const float* sdg = s.sdg.as<float>();
  constexpr int64_t kPanel = 32;
  const int64_t panels = (rows + kPanel - 1) / kPanel;
  const int64_t tasks = std::min<int64_t>(panels, 2 * int64_t(pool.size()));
  pool.run(tasks, [&](int64_t i) {
    const int64_t r0 = i * panels / tasks * kPanel, r1 = std::min(rows, (i + 1) * panels / tasks * kPanel);
    kt.qgemm_prefill(a, sdg, w, r0, r1, y + r0, rows);
    add_bias(bias, 0, n, r0, r1, y, rows);
  });
}

// The AMX products' shared part: x packed once as bf16 tiles (shared by the threads), then
// tile(acts, r0, r1) on whole 16-row slices spread over the pool, bias added. Returns the
// first row past the last whole slice, which the caller finishes another way.
template <class Tile>
int64_t on_tiles(const KernelTable& kt, ThreadPool& pool, QuantScratch& s, const float* x, int64_t n, int64_t k,
                 int64_t rows, const float* bias, float* y, Tile tile) {
  s.tiles.resize(size_t(amx_acts_bytes(n, k)));
  uint8_t* packed = s.tiles.data();
  pool.parallel_for((n + 15) / 16, 1, [&](int64_t t0, int64_t t1) { kt.pack_tile_acts(x, n, k, t0, t1, packed); });
  const int64_t slices = rows / 16;
  if (slices == 0) return 0;
  const int64_t n_tasks = std::min<int64_t>(slices, int64_t(pool.size()) * 2);
  const int64_t per = (slices + n_tasks - 1) / n_tasks;
  pool.run(n_tasks, [&](int64_t task) {
    const int64_t r0 = std::min(slices, task * per) * 16, r1 = std::min(slices, (task + 1) * per) * 16;
    if (r0 >= r1) return;
    tile(packed, r0, r1);
    add_bias(bias, 0, n, r0, r1, y, rows);
  });
  return slices * 16;
}

}  // namespace

void quantized_matmul(const KernelTable& kt, ThreadPool& pool, QuantScratch& s, const float* x, int64_t n,
                      const QView& w, const float* bias, float* y, bool prefill) {
  const int64_t rows = w.rows, k = w.cols;
  if (prefill && kt.qgemm_prefill && !kt.qmatmul_tiles && (kt.qgemm_types >> int(w.type) & 1)) {
    int8_gemm(kt, pool, s, x, n, w, bias, y);
    return;
  }
  if (!kt.qmatmul_tiles || !prefill || rows < 16) {
    row_kernel(kt, pool, s, x, n, w, 0, rows, bias, y);
    return;
  }
  // Whole 16-row slices on tiles, the last rows % 16 with the row kernel.
  const int64_t tiled = on_tiles(kt, pool, s, x, n, k, rows, bias, y, [&](const uint8_t* acts, int64_t r0, int64_t r1) {
    kt.qmatmul_tiles(acts, n, w, r0, r1, y + r0, rows);
  });
  if (tiled < rows) row_kernel(kt, pool, s, x, n, w, tiled, rows, bias, y);
}

void quantized_matmul_group(const KernelTable& kt, ThreadPool& pool, QuantScratch& s, const float* x, int64_t n_x,
                            const std::vector<QuantJob>& jobs) {
  if (jobs.empty()) return;
  const QView& w0 = jobs[0].w;
  const int64_t k = w0.cols;
  for (const QuantJob& j : jobs)
    if (j.w.cols != k || j.w.group != w0.group || j.t0 < 0 || j.t0 + j.n > n_x)
      throw Error(Error::Kind::InvalidInput, "", "jobs", "every job needs k columns, one group and tokens of x");
  const ActView a = quantize_for(kt, pool, s, x, n_x, w0);
  const float* sdg = s.sdg.as<float>();
  // Tasks of at most kRows rows of one job, so the pool balances jobs of any size.
  constexpr int64_t kRows = 64;
  std::vector<std::pair<int64_t, int64_t>> tasks;  // (job, first row)
  for (size_t j = 0; j < jobs.size(); ++j)
    for (int64_t r = 0; r < jobs[j].w.rows; r += kRows) tasks.emplace_back(int64_t(j), r);
  pool.parallel_for(int64_t(tasks.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const QuantJob& j = jobs[size_t(tasks[size_t(i)].first)];
      const int64_t r0 = tasks[size_t(i)].second;
      row_slice(kt, a, sdg, j.w, j.t0, j.n, r0, std::min(j.w.rows, r0 + kRows), j.bias, j.y);
    }
  });
}

void bf16_matmul_tiles(const KernelTable& kt, ThreadPool& pool, QuantScratch& s, const float* x, int64_t n,
                       const uint16_t* w, int64_t rows, int64_t k, const float* bias, float* y, MatmulRowsFn rest) {
  const int64_t tiled = on_tiles(kt, pool, s, x, n, k, rows, bias, y, [&](const uint8_t* acts, int64_t r0, int64_t r1) {
    kt.matmul_tiles_bf16(acts, n, k, w, r0, r1, y + r0, rows);
  });
  if (tiled < rows) {
    rest(x, n, k, w, tiled, rows, y + tiled, rows);
    add_bias(bias, 0, n, tiled, rows, y, rows);
  }
}

}  // namespace llmos
