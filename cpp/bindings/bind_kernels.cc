// ISA queries, the memory bandwidth benchmark, and single-kernel calls for the tests that
// compare each ISA's kernels with the scalar ones.
#include <cstring>

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
      [](int threads, int64_t mbytes, int reps) {
        py::gil_scoped_release nogil;
        return measure_read_bandwidth(threads, size_t(mbytes) << 20, reps);
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
        if (x.ndim() != 2 || w.ndim() != 2 || x.shape(1) != w.shape(1))
          throw Error(Error::Kind::InvalidInput, "", "x", "expected x [n, k] and w [rows, k]");
        const size_t es = dtype_size(dt);
        if (size_t(w.itemsize()) != es || !(w.flags() & py::array::c_style))
          throw Error(Error::Kind::InvalidInput, "", "w", "expected a C-contiguous array of the weight dtype's size");
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
      [](const std::string& isa, FloatArray x, FloatArray w, int quant, int64_t group, bool prefill) {
        // For tests: quantize W (rows, k) and x, then y = x @ W^T with one ISA's kernel.
        const KernelTable& kt = kernels_named(isa);
        if (x.ndim() != 2 || w.ndim() != 2 || x.shape(1) != w.shape(1) || w.shape(1) % 64 || w.shape(1) % group)
          throw Error(Error::Kind::InvalidInput, "", "x", "expected x [n, k], w [rows, k], k a multiple of 64 and group");
        const int64_t n = x.shape(0), k = x.shape(1), rows = w.shape(0);
        Matrix mat;
        mat.rows = rows;
        mat.cols = k;
        mat.data.resize(size_t(rows * k) * 4);
        std::memcpy(mat.data.data(), w.data(), size_t(rows * k) * 4);
        quantize_matrix(mat, quant_arg(quant, "quant"), group);
        // The forward pass's own dispatch on one thread, as for a run of `prefill` tokens
        // (at any n) or of decode tokens.
        py::array_t<float> y({n, rows});
        ThreadPool pool(1);
        QuantScratch scratch;
        quantized_matmul(kt, pool, scratch, x.data(), n, mat.qview(), nullptr, y.mutable_data(), prefill);
        return y;
      },
      py::arg("isa"), py::arg("x"), py::arg("w"), py::arg("quant"), py::arg("group"), py::arg("prefill") = true);

  m.def(
      "kernel_attention",
      [](const std::string& isa, FloatArray q, FloatArray k, FloatArray v, int64_t start, int64_t p0, int64_t window,
         float scale, float softcap) {
        // For tests: one AttnBlock (kernels.h) with one ISA's attention kernel.
        const KernelTable& kt = kernels_named(isa);
        if (q.ndim() != 2 || k.ndim() != 2 || v.ndim() != 2 || q.shape(1) != k.shape(1) || k.shape(0) != v.shape(0) ||
            k.shape(1) != v.shape(1) || q.shape(0) < 1 || q.shape(0) > 16 || start < 0 ||
            p0 + q.shape(0) != start + k.shape(0) || p0 < start)
          throw Error(Error::Kind::InvalidInput, "", "q",
                      "expected q [1..16, D], k and v [len, D], keys ending at the last query");
        const int64_t nq = q.shape(0), len = k.shape(0), D = q.shape(1);
        py::array_t<float> out({nq, D});
        AttnBlock blk;
        blk.q = q.data(), blk.ldq = D, blk.k = k.data(), blk.v = v.data();
        blk.nq = nq, blk.len = len, blk.D = D, blk.start = start, blk.p0 = p0, blk.window = window;
        blk.scale = scale, blk.softcap = softcap, blk.out = out.mutable_data(), blk.ldo = D;
        std::vector<float> scratch(size_t(attend_scratch_floats(len, D)));
        if (kt.attend) kt.attend(blk, scratch.data());
        else attend_generic(kt, blk, scratch.data());
        return out;
      },
      py::arg("isa"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("start"), py::arg("p0"), py::arg("window"),
      py::arg("scale"), py::arg("softcap") = 0.0f);

  m.def(
      "kernel_activate",
      [](const std::string& isa, int act, FloatArray x, py::object up) {
        // For tests: act(x), or act(x) * up when up is given, or softmax(x) for act == -1.
        const KernelTable& kt = kernels_named(isa);
        if (act < -1 || act > 3) throw Error(Error::Kind::InvalidInput, "", "act", "unknown activation");
        const int64_t n = int64_t(x.size());
        py::array_t<float> out(n);
        std::copy(x.data(), x.data() + n, out.mutable_data());
        if (act == -1) kt.softmax(out.mutable_data(), n);
        else if (up.is_none()) kt.activate(act, out.mutable_data(), n);
        else {
          auto u = up.cast<FloatArray>();
          if (u.size() != n) throw Error(Error::Kind::InvalidInput, "", "up", "size differs from x");
          kt.activate_gated(act, x.data(), u.data(), out.mutable_data(), n);
        }
        return out;
      },
      py::arg("isa"), py::arg("act"), py::arg("x"), py::arg("up") = py::none());
}
