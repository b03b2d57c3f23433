// ISA queries, the memory bandwidth benchmark, and single-kernel calls for the tests that
// compare each ISA's kernels with the scalar ones.
#include <cmath>
#include <pybind11/stl.h>

#include <chrono>
#include <optional>
#include <vector>

#include "bindings/bindings.h"
#include "core/bandwidth.h"
#include "core/cpu_features.h"
#include "core/errors.h"
#include "kernels/quantized_matmul.h"
#include "model/weights.h"

using namespace llmos;
using namespace llmos::binding;

void bind_kernels(py::module_& m) {
  m.def(
      "memory_bandwidth",
      [](int64_t threads, int64_t mbytes, int64_t reps) {
        require(threads >= 1 && threads <= ThreadPool::kMaxThreads, "threads",
                "must be from 1 to " + std::to_string(ThreadPool::kMaxThreads));
        require(mbytes >= 1 && mbytes <= (int64_t(1) << 20), "mbytes", "must be from 1 to 2**20 (1 TiB)");
        require(reps >= 1 && reps <= 1000, "reps", "must be from 1 to 1000");
        py::gil_scoped_release nogil;
        return measure_read_bandwidth(int(threads), size_t(mbytes) << 20, int(reps));
      },
      py::arg("threads"), py::arg("mbytes") = 512, py::arg("reps") = 5, "Memory read bandwidth in GB/s (benchmarks)");
  m.def("cpu_isa", [] { return std::string(isa_name(cpu_active_isa())); }, "ISA the kernels use");
  m.def("cpu_best_isa", [] { return std::string(isa_name(cpu_best_isa())); }, "widest ISA this CPU supports");

  m.def(
      "kernel_matmul",
      [](const std::string& isa, FloatArray x, py::array w, const std::string& wdtype, bool prefill) {
        // For tests: y = x @ W^T with one ISA's kernel (the many-token one with prefill).
        // W is float32, or uint16 holding bfloat16 / float16 bits.
        const KernelTable& kt = kernels_named(isa);
        const DType dt = dtype_arg(wdtype);
        require(x.ndim() == 2, "x", "expected x [n, k] and w [rows, k]");
        require(w.ndim() == 2 && x.shape(1) == w.shape(1), "w", "expected x [n, k] and w [rows, k]");
        const char kind = w.dtype().kind();
        const bool w_ok = dt == DType::F32 ? kind == 'f' && w.itemsize() == 4
                                           : (kind == 'u' || kind == 'f') && w.itemsize() == 2;
        require(w_ok && (w.flags() & py::array::c_style), "w",
                "expected a C-contiguous float32 array, or uint16 / float16 holding the bits of w_dtype");
        const int64_t n = x.shape(0), k = x.shape(1), rows = w.shape(0);
        py::array_t<float> y({n, rows});
        const float* xp = x.data();
        const void* wp = w.data();
        float* yp = y.mutable_data();
        {
          py::gil_scoped_release nogil;
          if (prefill && dt == DType::BF16 && kt.matmul_tiles_bf16 && rows >= 16 && k % 32 == 0) {
            // the decoder's choice for bf16 prefill under AMX
            ThreadPool pool(1);
            QuantScratch scratch;
            bf16_matmul_tiles(kt, pool, scratch, xp, n, static_cast<const uint16_t*>(wp), rows, k, nullptr, yp,
                              gemm_for(kt, dt));
          } else {
            (prefill ? gemm_for(kt, dt) : matmul_for(kt, dt))(xp, n, k, wp, 0, rows, yp, rows);
          }
        }
        return y;
      },
      py::arg("isa"), py::arg("x"), py::arg("w"), py::arg("w_dtype"), py::arg("prefill") = false);

  m.def(
      "kernel_qmatmul",
      [](const std::string& isa, FloatArray x, FloatArray w, QuantType quant, int64_t group, bool prefill) {
        // For tests: quantize W (rows, k) and x, then y = x @ W^T with one ISA's kernel.
        const KernelTable& kt = kernels_named(isa);
        group_arg(group, "group");
        require(x.ndim() == 2, "x", "expected x [n, k], w [rows, k], k a multiple of 64 and group");
        require(w.ndim() == 2 && w.shape(0) > 0 && w.shape(1) == x.shape(1) && w.shape(1) > 0 && w.shape(1) % 64 == 0 &&
                    w.shape(1) % group == 0,
                "w", "expected x [n, k], w [rows, k], rows > 0, k a positive multiple of 64 and group");
        const int64_t n = x.shape(0), k = x.shape(1), rows = w.shape(0);
        py::array_t<float> y({n, rows});
        const float* xp = x.data();
        const float* wp = w.data();
        float* yp = y.mutable_data();
        {
          py::gil_scoped_release nogil;
          const Matrix mat = quantized_copy(wp, rows, k, quant, group);
          // The forward pass's own dispatch on one thread, as for a run of `prefill` tokens
          // (at any n) or of decode tokens.
          ThreadPool pool(1);
          QuantScratch scratch;
          quantized_matmul(kt, pool, scratch, xp, n, mat.qview(), nullptr, yp, prefill);
        }
        return y;
      },
      py::arg("isa"), py::arg("x"), py::arg("w"), py::arg("quant"), py::arg("group"), py::arg("prefill") = true);

  m.def(
      "kernel_qmatmul_seconds",
      [](const std::string& isa, FloatArray x, FloatArray w, QuantType quant, int64_t group, bool prefill,
         int64_t threads, int64_t reps) {
        // For tools/bench_qmatmul.py: W quantized once, then `reps` timed calls of the forward
        // pass's dispatch (x @ W^T on `threads` threads); the seconds of each call.
        const KernelTable& kt = kernels_named(isa);
        group_arg(group, "group");
        require(threads >= 1 && threads <= ThreadPool::kMaxThreads, "threads",
                "must be from 1 to " + std::to_string(ThreadPool::kMaxThreads));
        require(reps >= 1 && reps <= 10000, "reps", "must be from 1 to 10000");
        require(x.ndim() == 2 && x.shape(0) > 0, "x", "expected x [n, k], n > 0");
        require(w.ndim() == 2 && w.shape(0) > 0 && w.shape(1) == x.shape(1) && w.shape(1) % 64 == 0 &&
                    w.shape(1) % group == 0,
                "w", "expected w [rows, k], rows > 0, k a positive multiple of 64 and group");
        const int64_t n = x.shape(0), k = x.shape(1), rows = w.shape(0);
        const float* xp = x.data();
        const float* wp = w.data();
        std::vector<double> seconds;
        {
          py::gil_scoped_release nogil;
          const Matrix mat = quantized_copy(wp, rows, k, quant, group);
          ThreadPool pool{int(threads)};
          QuantScratch scratch;
          std::vector<float> y(size_t(n * rows));
          for (int64_t i = 0; i < reps; ++i) {
            const auto t0 = std::chrono::steady_clock::now();
            quantized_matmul(kt, pool, scratch, xp, n, mat.qview(), nullptr, y.data(), prefill);
            seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
          }
        }
        return seconds;
      },
      py::arg("isa"), py::arg("x"), py::arg("w"), py::arg("quant"), py::arg("group"), py::arg("prefill"),
      py::arg("threads"), py::arg("reps"));

  m.def(
      "kernel_attention",
      [](const std::string& isa, FloatArray q, FloatArray k, FloatArray v, int64_t start, int64_t p0, int64_t window,
         float scale, float softcap, float sink) {
        // For tests: one AttnBlock (kernels.h) with one ISA's attention kernel.
        const KernelTable& kt = kernels_named(isa);
        // Positions within int32 first, so the shape check below cannot overflow.
        require(start >= 0 && start <= INT32_MAX, "start", "must be a position from 0 to 2**31-1");
        require(p0 >= 0 && p0 <= INT32_MAX, "p0", "must be a position from 0 to 2**31-1");
        if (q.ndim() != 2 || k.ndim() != 2 || v.ndim() != 2 || q.shape(1) != k.shape(1) || k.shape(0) != v.shape(0) ||
            k.shape(1) != v.shape(1) || q.shape(0) < 1 || q.shape(0) > 16 || start < 0 ||
            p0 + q.shape(0) != start + k.shape(0) || p0 < start)
          throw Error(Error::Kind::InvalidInput, "", "q",
                      "expected q [1..16, D], k and v [len, D], keys ending at the last query");
        require(window >= 0, "window", "must be >= 0 (0: every key)");
        const int64_t nq = q.shape(0), len = k.shape(0), D = q.shape(1);
        py::array_t<float> out({nq, D});
        AttnBlock blk;
        blk.q = q.data(), blk.ldq = D, blk.k = k.data(), blk.v = v.data();
        blk.nq = nq, blk.len = len, blk.D = D, blk.start = start, blk.p0 = p0, blk.window = window;
        blk.scale = scale, blk.softcap = softcap, blk.out = out.mutable_data(), blk.ldo = D;
        require(!std::isnan(sink) && sink != INFINITY, "sink", "must be a number or -inf (no sink)");
        blk.sink = sink;
        {
          py::gil_scoped_release nogil;
          std::vector<float> scratch(size_t(attend_scratch_floats(len, D)));
          if (kt.attend) kt.attend(blk, scratch.data());
          else attend_generic(kt, blk, scratch.data());
        }
        return out;
      },
      py::arg("isa"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("start"), py::arg("p0"), py::arg("window"),
      py::arg("scale"), py::arg("softcap") = 0.0f, py::arg("sink") = -INFINITY);

  m.def(
      "kernel_activate",
      [](const std::string& isa, int act, FloatArray x, std::optional<FloatArray> up) {
        // For tests: act(x), or act(x) * up when up is given, or softmax(x) for act == -1.
        const KernelTable& kt = kernels_named(isa);
        require(act >= -1 && act <= 3, "act", "expected -1 (softmax) or an Activation value");
        require(x.ndim() == 1, "x", "expected a 1-d array");
        require(!up || (up->ndim() == 1 && up->size() == x.size()), "up", "expected a 1-d array of x's size");
        require(!up || act >= 0, "up", "softmax takes no up");
        const int64_t n = int64_t(x.size());
        py::array_t<float> out(n);
        const float* xp = x.data();
        const float* upp = up ? up->data() : nullptr;
        float* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          if (upp) {
            kt.activate_gated(act, xp, upp, op, n);
          } else {
            std::copy(xp, xp + n, op);
            if (act == -1) kt.softmax(op, n);
            else kt.activate(act, op, n);
          }
        }
        return out;
      },
      py::arg("isa"), py::arg("act"), py::arg("x"), py::arg("up") = py::none());
}
