// Checks every kernel of the active table (LLMOS_CPU_ISA lowers it) against the scalar
// reference over random shapes with vector tails, with tests/test_kernels.py's metrics:
// matmuls and attention by NMSE = sum((y - ref)^2) / sum(ref^2) < 1e-11; activations by
// |y - ref| <= 2e-6 |ref| + 1e-12 |x| + 1e-38; softmax by max relative error < 2e-6 and
// masked entries exactly 0; the quantized kernels (row kernel qmatmul, and qgemm_prefill for
// the formats it serves) by NMSE < 1e-11 against the scalar reference on the same int8
// activations (tests/test_quant.py's: the same integer dot products, only the float summation
// order differs), each token's result bitwise the one it gets alone (test_qmatmul_batch.py),
// and on AArch64 bitwise the neon level's (qmatmul_neon.inc's numerics); and the forward
// pass's quantized_matmul dispatch on a thread pool by the same bound. Built without
// Python, so it runs where only the core builds (AArch64 under qemu: .ci/arm64). Prints what
// it checked and which quantized kernel the level chose; exits 1 on any failure.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/quantized_matmul.h"
#include "quant/qformat.h"

using namespace llmos;

namespace {

int failures = 0, checks = 0;
std::mt19937 rng(1234);

std::vector<float> randn(size_t n, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

double nmse(const std::vector<float>& y, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < y.size(); ++i) num += double(y[i] - ref[i]) * (y[i] - ref[i]), den += double(ref[i]) * ref[i];
  return den > 0 ? num / den : num;
}

void expect(bool ok, const char* what, const char* detail) {
  ++checks;
  if (!ok) ++failures, std::printf("FAIL %s: %s\n", what, detail);
}

void check_matmuls(const KernelTable& kt, const KernelTable& ref) {
  const int64_t shapes[][3] = {{1, 64, 9}, {3, 37, 17}, {7, 129, 33}, {16, 256, 40}, {33, 5, 3}, {2, 1000, 7}};
  for (auto& s : shapes) {
    const int64_t n = s[0], k = s[1], rows = s[2];
    auto x = randn(size_t(n * k));
    auto w = randn(size_t(rows * k));
    std::vector<uint16_t> wb(w.size()), wh(w.size());
    for (size_t i = 0; i < w.size(); ++i) wb[i] = f32_to_bf16(w[i]), wh[i] = f32_to_f16(w[i]);
    struct Slot { const char* name; DType dt; const void* w; } slots[] = {
        {"f32", DType::F32, w.data()}, {"bf16", DType::BF16, wb.data()}, {"f16", DType::F16, wh.data()}};
    for (auto& sl : slots)
      for (bool gemm : {false, true}) {
        const int64_t r0 = rows > 2 ? 1 : 0;  // a row range that starts off 0
        std::vector<float> y(size_t(n * rows)), yr(y.size());
        (gemm ? gemm_for(kt, sl.dt) : matmul_for(kt, sl.dt))(x.data(), n, k, sl.w, r0, rows, y.data(), rows);
        matmul_for(ref, sl.dt)(x.data(), n, k, sl.w, r0, rows, yr.data(), rows);
        char d[128];
        const double e = nmse(y, yr);
        std::snprintf(d, sizeof d, "%s %s n=%ld k=%ld rows=%ld nmse=%.3g", gemm ? "gemm" : "matmul", sl.name, long(n),
                      long(k), long(rows), e);
        expect(e < 1e-11, "matmul", d);
      }
  }
  std::printf("matmul_f32/bf16/f16 and gemm: %zu shapes\n", sizeof shapes / sizeof shapes[0]);
}

void check_vector_math(const KernelTable& kt, const KernelTable& ref) {
  for (int64_t n : {1, 3, 4, 7, 16, 33, 1000}) {
    auto a = randn(size_t(n)), b = randn(size_t(n));
    const double d = kt.dot(a.data(), b.data(), n), dr = ref.dot(a.data(), b.data(), n);
    double mag = 0;
    for (int64_t i = 0; i < n; ++i) mag += std::fabs(double(a[i]) * b[i]);
    char msg[96];
    std::snprintf(msg, sizeof msg, "dot n=%ld err=%.3g", long(n), std::fabs(d - dr));
    expect(std::fabs(d - dr) <= 1e-6 * mag, "dot", msg);
    auto y = b, yr = b;
    kt.axpy(y.data(), 0.37f, a.data(), n);
    ref.axpy(yr.data(), 0.37f, a.data(), n);
    std::snprintf(msg, sizeof msg, "axpy n=%ld", long(n));
    expect(nmse(y, yr) < 1e-11, "axpy", msg);

    auto s = randn(size_t(n), 10.f);
    if (n > 1) s[0] = -INFINITY;
    auto so = s, sr = s;
    kt.softmax(so.data(), n);
    ref.softmax(sr.data(), n);
    bool ok = true;
    for (int64_t i = 0; i < n; ++i)
      ok &= sr[i] == 0 ? so[i] == 0 : sr[i] <= 1e-30f || std::fabs(so[i] - sr[i]) <= 2e-6 * sr[i];
    std::snprintf(msg, sizeof msg, "softmax n=%ld", long(n));
    expect(ok, "softmax", msg);
  }
  std::vector<float> x = randn(1000, 4.f);
  for (int i = -90; i <= 90; ++i) x.push_back(float(i));
  for (float v : {0.f, -0.f, 1e-30f, -1e-30f}) x.push_back(v);
  const auto up = randn(x.size());
  for (int act = 0; act < 4; ++act) {
    auto o = x, r = x;
    kt.activate(act, o.data(), int64_t(o.size()));
    ref.activate(act, r.data(), int64_t(r.size()));
    std::vector<float> g(x.size()), gr(x.size());
    kt.activate_gated(act, x.data(), up.data(), g.data(), int64_t(x.size()));
    ref.activate_gated(act, x.data(), up.data(), gr.data(), int64_t(x.size()));
    bool ok = true;
    for (size_t i = 0; i < x.size(); ++i) {
      ok &= std::fabs(o[i] - r[i]) <= 2e-6 * std::fabs(r[i]) + 1e-12 * std::fabs(x[i]) + 1e-38;
      ok &= std::fabs(g[i] - gr[i]) <= 2e-6 * std::fabs(gr[i]) + 1e-12 * std::fabs(x[i] * up[i]) + 1e-38 +
                                           2e-6 * std::fabs(r[i] * up[i] - gr[i]);
    }
    char msg[48];
    std::snprintf(msg, sizeof msg, "activation %d", act);
    expect(ok, "activate", msg);
  }
  std::printf("dot/axpy/softmax: 7 lengths; activate + gated: 4 activations x %zu inputs\n", x.size());
}

void check_attention(const KernelTable& kt, const KernelTable& ref) {
  // nq, D, keys before the block, window, softcap: as tests/test_kernels.py's ATTN_CASES; then
  // a sink logit (0 = none), as gpt-oss's attention has.
  const double cases[][6] = {{1, 64, 0, 0, 0, 0},  {16, 64, 37, 0, 0, 0}, {5, 128, 100, 0, 0, 0}, {16, 80, 19, 0, 0, 0},
                             {3, 8, 0, 0, 0, 0},   {16, 64, 40, 24, 0, 0}, {9, 32, 3, 4, 0, 0},   {16, 256, 21, 0, 50, 0},
                             {16, 64, 37, 0, 0, 1.5}, {1, 64, 200, 32, 0, -0.5}};
  for (auto& c : cases) {
    const int64_t nq = int64_t(c[0]), D = int64_t(c[1]), window = int64_t(c[3]), p0 = int64_t(c[2]) + 7;
    const int64_t start = window > 0 ? std::max<int64_t>(0, p0 - window + 1) : 0, len = p0 + nq - start;
    auto q = randn(size_t(nq * D)), k = randn(size_t(len * D)), v = randn(size_t(len * D));
    std::vector<float> out(size_t(nq * D)), outr(out.size()), scratch(size_t(attend_scratch_floats(len, D)));
    AttnBlock a{q.data(), D, k.data(), v.data(), nq, len, D, start, p0, window,
                c[4] == 0 ? float(1 / std::sqrt(double(D))) : 2.f, float(c[4]),
                c[5] == 0 ? -std::numeric_limits<float>::infinity() : float(c[5]), out.data(), D};
    if (kt.attend) kt.attend(a, scratch.data());
    else attend_generic(kt, a, scratch.data());
    a.out = outr.data();
    attend_generic(ref, a, scratch.data());
    char msg[96];
    const double e = nmse(out, outr);
    std::snprintf(msg, sizeof msg, "nq=%ld D=%ld window=%ld nmse=%.3g", long(nq), long(D), long(window), e);
    expect(e < 1e-11, "attention", msg);
  }
  std::printf("attention (%s): 8 blocks\n", kt.attend ? "vector kernel" : "generic");
}

// The quantized kernels do the reference's integer dot products; only the float rounding
// order differs (tests/test_quant.py's SAME_INTEGERS_NMSE).
constexpr double kSameIntegersNmse = 1e-11;

// A quantized W [rows, k] and int8 activations x [n, k], built with the scalar code.
struct QCase {
  QuantType type;
  int64_t n, rows, k, group;
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scale, min;
  std::vector<int8_t> q;
  std::vector<float> d, sd, sdg;
  std::vector<int32_t> qsum;

  // max_code: the activation codes' range (127; kActMaxCode7 for the 7-bit GEMMs).
  QCase(QuantType t, int64_t n_, int64_t rows_, int64_t k_, int64_t group_, const std::vector<float>& w,
        const std::vector<float>& x, int max_code = 127)
      : type(t), n(n_), rows(rows_), k(k_), group(group_) {
    const int64_t rb = quant_row_bytes(t, k), ng = k / group, nb = k / kActBlock;
    codes.resize(size_t(rows * rb));
    scale.resize(size_t(rows * ng));
    min.resize(t == QuantType::Q4Asym ? size_t(rows * ng) : 0);
    for (int64_t r = 0; r < rows; ++r)
      quantize_row(t, group, w.data() + r * k, k, codes.data() + r * rb, scale.data() + r * ng,
                   min.empty() ? nullptr : min.data() + r * ng);
    q.resize(size_t(n * k)), d.resize(size_t(n * nb)), sd.resize(d.size()), qsum.resize(d.size());
    quantize_activations(x.data(), n, k, q.data(), d.data(), sd.data(), qsum.data(), max_code);
    sdg.assign(size_t(n * ng), 0.f);  // as kernels/quantized_matmul.cc's quantize_for
    for (int64_t t = 0; t < n; ++t)
      for (int64_t b = 0; b < nb; ++b) sdg[size_t(t * ng + b * kActBlock / group)] += sd[size_t(t * nb + b)];
  }
  QView w() const { return QView{type, rows, k, group, codes.data(), scale.data(), min.empty() ? nullptr : min.data()}; }
  // y [nt, row1 - row0] = the kernel's product of tokens [t0, t0 + nt) and rows [row0, row1).
  std::vector<float> run(QMatmulRowsFn f, int64_t t0, int64_t nt, int64_t row0, int64_t row1) const {
    const int64_t nb = k / kActBlock;
    const ActView x{q.data() + t0 * k, d.data() + t0 * nb, sd.data() + t0 * nb, qsum.data() + t0 * nb, nt, k};
    std::vector<float> y(size_t(nt * (row1 - row0)));
    f(x, sdg.data() + t0 * (k / group), w(), row0, row1, y.data(), row1 - row0);
    return y;
  }
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// One case: the row kernel on rows [row0, rows) (a range that starts off 0 where there are
// rows to spare), each token alone, the packed GEMM where it serves the format, and on
// AArch64 levels above neon the neon kernel's bits.
void check_qcase(const KernelTable& kt, const KernelTable& ref, const KernelTable* neon, const QCase& c,
                 const QCase& c7) {
  const int64_t row0 = c.rows > 2 ? 1 : 0, width = c.rows - row0;
  const auto yr = c.run(ref.qmatmul, 0, c.n, row0, c.rows);
  const auto y = c.run(kt.qmatmul, 0, c.n, row0, c.rows);
  char msg[160];
  const int len = std::snprintf(msg, sizeof msg, "%s n=%ld rows=%ld k=%ld group=%ld", quant_name(c.type), long(c.n),
                                long(c.rows), long(c.k), long(c.group));
  char* tail = msg + len;
  const size_t room = sizeof msg - size_t(len);
  const double e = nmse(y, yr);
  std::snprintf(tail, room, " nmse=%.3g", e);
  expect(e < kSameIntegersNmse, "qmatmul vs scalar", msg);
  bool alone = true;
  for (int64_t t = 0; t < c.n; ++t) {
    const auto yt = c.run(kt.qmatmul, t, 1, row0, c.rows);
    alone &= std::memcmp(yt.data(), y.data() + t * width, size_t(width) * sizeof(float)) == 0;
  }
  std::snprintf(tail, room, " (a token alone differs from it in the batch)");
  expect(alone, "qmatmul batch invariance", msg);
  if (neon) {
    std::snprintf(tail, room, " (differs from the neon level's bits)");
    expect(same_bits(y, c.run(neon->qmatmul, 0, c.n, row0, c.rows)), "qmatmul neon levels agree", msg);
  }
  if (kt.qgemm_prefill && (kt.qgemm_types >> int(c.type) & 1)) {  // called from row 0, as quantized_matmul does
    // on the activations it is given (7-bit codes for some), against the reference on the same
    const QCase& g = kt.qgemm_acts7_types >> int(c.type) & 1 ? c7 : c;
    const double eg = nmse(g.run(kt.qgemm_prefill, 0, g.n, 0, g.rows), g.run(ref.qmatmul, 0, g.n, 0, g.rows));
    std::snprintf(tail, room, " nmse=%.3g", eg);
    expect(eg < kSameIntegersNmse, "qgemm_prefill vs scalar", msg);
  }
}

// The level's activation quantizer against the scalar one, bit for bit (codes, scales, sums),
// for both code ranges, on values with exact ties (x.5 steps), zeros and a zero block.
void check_quantize_acts(const KernelTable& kt) {
  const int64_t n = 3, k = 256, nb = k / kActBlock;
  auto x = randn(size_t(n * k));
  for (int64_t i = 0; i < 32; ++i) x[size_t(i)] = float(i % 9) * 0.5f - 2.0f;  // ties at 127 / 2: halves
  for (int64_t i = 32; i < 64; ++i) x[size_t(i)] = 0.f;
  int mismatches = 0;
  for (int max_code : {127, kActMaxCode7}) {
    std::vector<int8_t> q0(size_t(n * k)), q1(q0.size());
    std::vector<float> d0(size_t(n * nb)), d1(d0.size()), s0(d0.size()), s1(d0.size());
    std::vector<int32_t> c0(d0.size()), c1(d0.size());
    quantize_activations(x.data(), n, k, q0.data(), d0.data(), s0.data(), c0.data(), max_code);
    kt.quantize_acts(x.data(), n, k, q1.data(), d1.data(), s1.data(), c1.data(), max_code);
    mismatches += q0 != q1 || c0 != c1 || std::memcmp(d0.data(), d1.data(), d0.size() * 4) != 0 ||
                  std::memcmp(s0.data(), s1.data(), s0.size() * 4) != 0;
  }
  expect(mismatches == 0, "quantize_acts vs scalar", "codes, scales or sums differ (max_code 127 or 63)");
  std::printf("quantize_acts: bitwise the scalar's at 127 and %d\n", kActMaxCode7);
}

void check_quantized(const KernelTable& kt, const KernelTable& ref) {
  const KernelTable* neon = isa_is_arm(kt.isa) && kt.isa != Isa::Neon ? &kernels_for(Isa::Neon) : nullptr;
  std::printf("quantized kernels: qmatmul %s; prefill %s\n", kt.qmatmul_name,
              kt.qmatmul_tiles    ? "AMX tiles (bf16: tests/test_quant.py checks them), qgemm_prefill checked here"
              : kt.qgemm_prefill ? "qgemm_prefill for its formats"
                                 : "the row kernel");
  // k is a multiple of 64 (every quantized matrix's), and of 128 or not (192, 320, 448); odd
  // row counts and row tails of 1-3 past each 4-row step; 1..7 tokens (every tail of pairs
  // and quads of tokens), 9 and 33.
  const int64_t shapes[][3] = {{1, 1, 64},  {1, 7, 128}, {2, 5, 192}, {3, 9, 256}, {4, 4, 384}, {5, 13, 448},
                               {6, 3, 64},  {7, 11, 320}, {9, 6, 128}, {33, 10, 256}};
  const QuantType types[] = {QuantType::Q8, QuantType::Q4, QuantType::Q4Asym, QuantType::Q6};
  int cases = 0;
  for (auto& s : shapes)
    for (int64_t group : {32, 64, 128}) {
      if (s[2] % group) continue;
      const auto w = randn(size_t(s[1] * s[2])), x = randn(size_t(s[0] * s[2]));
      for (QuantType t : types)
        check_qcase(kt, ref, neon, QCase(t, s[0], s[1], s[2], group, w, x),
                    QCase(t, s[0], s[1], s[2], group, w, x, kActMaxCode7)),
            ++cases;
    }
  // The largest sums (as test_quant.py's test_prefill_sums_hold_the_largest_codes): every code at
  // the top or bottom of its range bar the one that sets each group's scale, activations +-127
  // (int16 partial sums that overflowed would be off by thousands).
  const int64_t n = 7, rows = 9, k = 256;
  std::vector<float> w(size_t(rows * k), 0.97f), x(size_t(n * k), 1.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < k; ++i) w[size_t(r * k + i)] = (i % 32 == 0 ? -1.f : 0.97f) * (r % 2 ? -1.f : 1.f);
  for (int64_t t = 1; t < n; t += 2)
    for (int64_t i = 0; i < k; ++i) x[size_t(t * k + i)] = -1.f;
  for (QuantType t : types)
    check_qcase(kt, ref, neon, QCase(t, n, rows, k, 32, w, x), QCase(t, n, rows, k, 32, w, x, kActMaxCode7)), ++cases;
  std::printf("qmatmul%s: %d cases (4 formats), each token alone bitwise%s\n",
              kt.qgemm_prefill ? " and qgemm_prefill" : "", cases, neon ? ", bitwise the neon level's" : "");
}

// The forward pass's own dispatch (kernels/quantized_matmul.cc) on 3 threads, 70 tokens (past
// its 64-token blocks) and 37 rows with a bias: decode runs the row kernel; prefill runs the
// packed GEMM for its formats, the row kernel for the others (AMX tiles are skipped:
// test_quant.py checks them against float math). Against the scalar table's.
void check_quantized_dispatch(const KernelTable& kt, const KernelTable& ref) {
  const int64_t n = 70, rows = 37, k = 320, group = 64;
  const auto w = randn(size_t(rows * k)), x = randn(size_t(n * k)), bias = randn(size_t(rows));
  ThreadPool pool(3);
  QuantScratch scratch;
  // For the formats whose GEMM takes 7-bit activations: the scalar row kernel behind the same
  // dispatch, so it gets the same codes.
  KernelTable ref7 = ref;
  ref7.qgemm_prefill = ref.qmatmul;
  ref7.qgemm_types = ref7.qgemm_acts7_types = kt.qgemm_acts7_types;
  int runs = 0;
  for (QuantType t : {QuantType::Q8, QuantType::Q4, QuantType::Q4Asym, QuantType::Q6}) {
    const QCase c(t, 1, rows, k, group, w, x);  // the weights (its activations go unused)
    std::vector<float> yr(size_t(n * rows)), yr7(yr.size());
    quantized_matmul(ref, pool, scratch, x.data(), n, c.w(), bias.data(), yr.data(), false);
    quantized_matmul(ref7, pool, scratch, x.data(), n, c.w(), bias.data(), yr7.data(), true);
    for (bool prefill : {false, true}) {
      if (prefill && kt.qmatmul_tiles) continue;
      std::vector<float> y(yr.size());
      quantized_matmul(kt, pool, scratch, x.data(), n, c.w(), bias.data(), y.data(), prefill);
      char msg[96];
      const bool acts7 = prefill && (kt.qgemm_acts7_types >> int(t) & 1);
      const double e = nmse(y, acts7 ? yr7 : yr);
      std::snprintf(msg, sizeof msg, "%s %s n=%ld rows=%ld nmse=%.3g", quant_name(t), prefill ? "prefill" : "decode",
                    long(n), long(rows), e);
      expect(e < kSameIntegersNmse, "quantized_matmul vs scalar", msg);
      ++runs;
    }
  }
  std::printf("quantized_matmul dispatch, 3 threads: %d runs\n", runs);
}

}  // namespace

int main() {
  const KernelTable& kt = kernels();
  const KernelTable& ref = kernels_for(Isa::Scalar);
  std::printf("best isa: %s, active isa: %s\n", isa_name(cpu_best_isa()), isa_name(kt.isa));
  check_matmuls(kt, ref);
  check_vector_math(kt, ref);
  check_attention(kt, ref);
  check_quantize_acts(kt);
  check_quantized(kt, ref);
  check_quantized_dispatch(kt, ref);
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
