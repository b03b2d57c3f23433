// The CUDA device for Python: whether the build has CUDA, the devices, and one-kernel calls
// for the tests (tests/test_cuda_kernels.py) and the benchmark (tools/bench_cuda.py). Each
// kernel call copies its numpy arguments to the device, runs one op of cuda/cuda_ops.h,
// waits, and copies the result back. Bound in every build, so the module's surface is the same:
// without CUDA (cuda/no_cuda.cc) the device count is 0 and each call raises
// InvalidInputError naming `device` with the reason.
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "bindings/bindings.h"
#include "cuda/cuda_ops.h"

#ifndef LLMOS_HAS_CUDA
#define LLMOS_HAS_CUDA 0
#endif

using namespace llmos;
using namespace llmos::binding;
namespace cu = llmos::cuda;

namespace {

// Makes `device` current, or raises naming it with the reason it cannot be used.
void use_device(int64_t device) {
  require(device >= 0 && device < 1024, "device", "must be a GPU index from 0");
  cu::set_device(int(device));
}

cu::DeviceBuffer upload(const void* src, size_t bytes) {
  cu::DeviceBuffer b(bytes);
  cu::copy_to_device(b.data(), src, bytes);
  return b;
}


}  // namespace

void bind_cuda(py::module_& m) {
  m.def("cuda_built", [] { return bool(LLMOS_HAS_CUDA); }, "Whether this build has the CUDA kernels (LLMOS_CUDA)");
  m.def("cuda_device_count", [] { return cu::device_count(); },
        "CUDA GPUs visible to this process; 0 without CUDA in the build, a driver or a GPU");
  m.def(
      "cuda_unavailable_reason", [](int64_t device) {
        if (device < 0 || device > INT32_MAX) return std::string("device index must be >= 0");
        return cu::device_unavailable_reason(int(device));
      },
      py::arg("device"), "Why GPU `device` cannot be used, or '' when it can");
  m.def(
      "cuda_device_info",
      [](int64_t device) {
        require(device >= 0 && device < 1024, "device", "must be a GPU index from 0");
        const cu::DeviceInfo d = cu::device_info(int(device));
        py::dict out;
        out["name"] = d.name;
        out["capability"] = py::make_tuple(d.major, d.minor);
        out["sm_count"] = d.sm_count;
        out["total_memory"] = d.total_memory;
        out["memory_clock_khz"] = d.memory_clock_khz;
        out["bus_width_bits"] = d.bus_width_bits;
        out["peak_bandwidth_gbs"] = d.peak_bandwidth_gbs;
        return out;
      },
      py::arg("device"), "Name, compute capability, SMs, memory and peak memory bandwidth of GPU `device`");

  m.def(
      "cuda_kernel_gemv_quant",
      [](FloatArray x, FloatArray w, QuantType quant, int64_t group, int64_t device) {
        // For tests: quantize W [rows, k] on the host (the CPU path's codes), y = x @ dequantize(W)^T on the GPU.
        group_arg(group, "group");
        require(x.ndim() == 2 && x.shape(0) >= 1 && x.shape(0) <= cu::kMaxGemvTokens, "x", "expected x [1..16, k]");
        require(w.ndim() == 2 && w.shape(0) > 0 && w.shape(1) == x.shape(1) && w.shape(1) % 64 == 0 &&
                    w.shape(1) % group == 0,
                "w", "expected w [rows, k], rows > 0, k a positive multiple of 64 and of group");
        const int64_t n = x.shape(0), k = x.shape(1), rows = w.shape(0);
        const float* xp = x.data();
        const float* wp = w.data();
        py::array_t<float> y({n, rows});
        float* yp = y.mutable_data();
        {
          py::gil_scoped_release nogil;
          use_device(device);
          const Matrix mat = quantized_copy(wp, rows, k, quant, group);
          const size_t code_bytes = size_t(rows * quant_row_bytes(quant, k)), scale_bytes = size_t(rows * (k / group) * 2);
          cu::DeviceBuffer dc = upload(mat.data.data(), code_bytes), ds = upload(mat.scale.data(), scale_bytes);
          cu::DeviceBuffer dm = quant == QuantType::Q4Asym ? upload(mat.min.data(), scale_bytes) : cu::DeviceBuffer();
          cu::DeviceBuffer dx = upload(xp, size_t(n * k * 4)), dy(size_t(n * rows * 4));
          const QView v{quant, rows, k, group, dc.as<uint8_t>(), ds.as<uint16_t>(), dm.as<uint16_t>()};
          cu::gemv_quant(v, dx.as<float>(), n, dy.as<float>(), rows, nullptr);
          cu::synchronize();
          cu::copy_to_host(yp, dy.data(), size_t(n * rows * 4));
        }
        return y;
      },
      py::arg("x"), py::arg("w"), py::arg("quant"), py::arg("group"), py::arg("device") = 0);

  m.def(
      "cuda_kernel_gemv_half",
      [](FloatArray x, py::array w, const std::string& w_dtype, int64_t device) {
        // For tests: y = x @ W^T on the GPU, W uint16 / float16 holding float16 or bfloat16 bits.
        const DType dt = dtype_arg(w_dtype);
        require(dt == DType::F16 || dt == DType::BF16, "w_dtype", "expected float16 or bfloat16");
        require(x.ndim() == 2 && x.shape(0) >= 1 && x.shape(0) <= cu::kMaxGemvTokens, "x", "expected x [1..16, k]");
        require(w.ndim() == 2 && w.shape(0) > 0 && w.shape(1) == x.shape(1) && w.itemsize() == 2 &&
                    (w.dtype().kind() == 'u' || w.dtype().kind() == 'f') && (w.flags() & py::array::c_style),
                "w", "expected a C-contiguous uint16 / float16 array [rows, k] holding the bits of w_dtype");
        const int64_t n = x.shape(0), k = x.shape(1), rows = w.shape(0);
        const float* xp = x.data();
        const void* wp = w.data();
        py::array_t<float> y({n, rows});
        float* yp = y.mutable_data();
        {
          py::gil_scoped_release nogil;
          use_device(device);
          cu::DeviceBuffer dw = upload(wp, size_t(rows * k * 2)), dx = upload(xp, size_t(n * k * 4));
          cu::DeviceBuffer dy(size_t(n * rows * 4));
          cu::gemv_half(dt, dw.as<uint16_t>(), rows, k, dx.as<float>(), n, dy.as<float>(), rows, nullptr);
          cu::synchronize();
          cu::copy_to_host(yp, dy.data(), size_t(n * rows * 4));
        }
        return y;
      },
      py::arg("x"), py::arg("w"), py::arg("w_dtype"), py::arg("device") = 0);

  m.def(
      "cuda_kernel_rms_norm",
      [](FloatArray x, FloatArray w, float eps, int64_t device) {
        // For tests: RMSNorm of every row of x [rows, n] with weight w [n].
        require(x.ndim() == 2 && x.shape(0) >= 1 && x.shape(1) >= 1, "x", "expected x [rows, n]");
        require(w.ndim() == 1 && w.shape(0) == x.shape(1), "w", "expected w [n]");
        require(std::isfinite(eps) && eps >= 0.f, "eps", "must be a finite number >= 0");
        const int64_t rows = x.shape(0), n = x.shape(1);
        const float* xp = x.data();
        const float* wp = w.data();
        py::array_t<float> out({rows, n});
        float* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          use_device(device);
          cu::DeviceBuffer dx = upload(xp, size_t(rows * n * 4)), dw = upload(wp, size_t(n * 4));
          cu::rms_norm(dx.as<float>(), dw.as<float>(), eps, rows, n, dx.as<float>(), nullptr);  // in place, as allowed
          cu::synchronize();
          cu::copy_to_host(op, dx.data(), size_t(rows * n * 4));
        }
        return out;
      },
      py::arg("x"), py::arg("w"), py::arg("eps"), py::arg("device") = 0);

  m.def(
      "cuda_kernel_rope",
      [](FloatArray x, FloatArray cos_t, FloatArray sin_t, int64_t device) {
        // For tests: x [tokens, heads, head_dim] rotated by cos / sin [tokens, rotary_dim / 2].
        require(x.ndim() == 3 && x.shape(0) >= 1 && x.shape(1) >= 1 && x.shape(2) >= 2, "x",
                "expected x [tokens, heads, head_dim]");
        require(cos_t.ndim() == 2 && cos_t.shape(0) == x.shape(0) && cos_t.shape(1) >= 1 &&
                    2 * cos_t.shape(1) <= x.shape(2),
                "cos_t", "expected cos_t [tokens, rotary_dim / 2], rotary_dim <= head_dim");
        require(sin_t.ndim() == 2 && sin_t.shape(0) == cos_t.shape(0) && sin_t.shape(1) == cos_t.shape(1), "sin_t",
                "expected sin_t shaped as cos_t");
        const int64_t tokens = x.shape(0), heads = x.shape(1), hd = x.shape(2), half = cos_t.shape(1);
        const float* xp = x.data();
        const float* cp = cos_t.data();
        const float* sp = sin_t.data();
        py::array_t<float> out({tokens, heads, hd});
        float* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          use_device(device);
          cu::DeviceBuffer dx = upload(xp, size_t(tokens * heads * hd * 4));
          cu::DeviceBuffer dc = upload(cp, size_t(tokens * half * 4)), ds = upload(sp, size_t(tokens * half * 4));
          cu::rope(dx.as<float>(), tokens, heads, hd, 2 * half, dc.as<float>(), ds.as<float>(), nullptr);
          cu::synchronize();
          cu::copy_to_host(op, dx.data(), size_t(tokens * heads * hd * 4));
        }
        return out;
      },
      py::arg("x"), py::arg("cos_t"), py::arg("sin_t"), py::arg("device") = 0);

  m.def(
      "cuda_kernel_activate_gated",
      [](int act, FloatArray gate, FloatArray up, int64_t device) {
        // For tests: act(gate) * up element-wise (act an Activation value).
        require(act >= 0 && act <= 3, "act", "expected an Activation value (0..3)");
        require(gate.ndim() == 1 && gate.size() >= 1, "gate", "expected a non-empty 1-d array");
        require(up.ndim() == 1 && up.size() == gate.size(), "up", "expected a 1-d array of gate's size");
        const int64_t n = int64_t(gate.size());
        const float* gp = gate.data();
        const float* upp = up.data();
        py::array_t<float> out(n);
        float* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          use_device(device);
          cu::DeviceBuffer dg = upload(gp, size_t(n * 4)), du = upload(upp, size_t(n * 4)), dout(size_t(n * 4));
          cu::activate_gated(act, dg.as<float>(), du.as<float>(), dout.as<float>(), n, nullptr);
          cu::synchronize();
          cu::copy_to_host(op, dout.data(), size_t(n * 4));
        }
        return out;
      },
      py::arg("act"), py::arg("gate"), py::arg("up"), py::arg("device") = 0);

  m.def(
      "cuda_kernel_attention_decode",
      [](FloatArray q, FloatArray k, FloatArray v, int64_t window, float scale, float softcap, int64_t device) {
        // For tests: one decode query per head, q [heads, D], against k, v [kv_heads, len, D].
        require(q.ndim() == 2 && q.shape(0) >= 1 && q.shape(1) >= 1 && q.shape(1) <= cu::kMaxAttentionHeadDim, "q",
                "expected q [heads, D], D from 1 to 256");
        require(k.ndim() == 3 && k.shape(0) >= 1 && q.shape(0) % k.shape(0) == 0 && k.shape(1) >= 1 &&
                    k.shape(2) == q.shape(1),
                "k", "expected k [kv_heads, len, D], heads a multiple of kv_heads");
        require(v.ndim() == 3 && v.shape(0) == k.shape(0) && v.shape(1) == k.shape(1) && v.shape(2) == k.shape(2), "v",
                "expected v shaped as k");
        require(window >= 0, "window", "must be >= 0 (0: every key)");
        require(std::isfinite(scale), "scale", "must be finite");
        require(std::isfinite(softcap) && softcap >= 0.f, "softcap", "must be >= 0 (0: none)");
        const int64_t heads = q.shape(0), D = q.shape(1), kvh = k.shape(0), len = k.shape(1);
        const float* qp = q.data();
        const float* kp = k.data();
        const float* vp = v.data();
        py::array_t<float> out({heads, D});
        float* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          use_device(device);
          const size_t kv_bytes = size_t(kvh * len * D * 4);
          cu::DeviceBuffer dq = upload(qp, size_t(heads * D * 4)), dk = upload(kp, kv_bytes), dv = upload(vp, kv_bytes);
          cu::DeviceBuffer dout(size_t(heads * D * 4)), ws(size_t(cu::attention_workspace_floats(heads, D, len) * 4));
          cu::DecodeAttention a{dq.as<float>(), dk.as<float>(), dv.as<float>(), heads, kvh, D, len, len, window,
                                scale, softcap, dout.as<float>()};
          cu::attention_decode(a, ws.as<float>(), nullptr);
          cu::synchronize();
          cu::copy_to_host(op, dout.data(), size_t(heads * D * 4));
        }
        return out;
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("window") = 0, py::arg("scale") = 1.0f,
      py::arg("softcap") = 0.0f, py::arg("device") = 0);

  m.def(
      "cuda_kernel_sample",
      [](FloatArray logits, bool greedy, float temperature, int64_t top_k, float top_p, float min_p, uint64_t seed,
         uint64_t step, int64_t device) {
        // For tests: one token per row of logits [rows, vocab], and the distribution it was drawn from.
        require(logits.ndim() == 2 && logits.shape(0) >= 1 && logits.shape(1) >= 1, "logits", "expected [rows, vocab]");
        const int64_t rows = logits.shape(0), vocab = logits.shape(1);
        cu::SampleParams p;
        p.greedy = greedy, p.temperature = temperature, p.top_k = top_k, p.top_p = top_p, p.min_p = min_p;
        p.seed = seed, p.step = step;
        const float* lp = logits.data();
        py::array_t<int32_t> tokens(rows);
        py::array_t<float> probs({rows, vocab});
        int32_t* tp = tokens.mutable_data();
        float* pp = probs.mutable_data();
        {
          py::gil_scoped_release nogil;
          use_device(device);
          cu::DeviceBuffer dl = upload(lp, size_t(rows * vocab * 4)), dt(size_t(rows * 4)), dp(size_t(rows * vocab * 4));
          cu::sample(dl.as<float>(), rows, vocab, p, dt.as<int32_t>(), dp.as<float>(), nullptr);
          cu::synchronize();
          cu::copy_to_host(tp, dt.data(), size_t(rows * 4));
          cu::copy_to_host(pp, dp.data(), size_t(rows * vocab * 4));
        }
        return std::make_tuple(tokens, probs);
      },
      py::arg("logits"), py::arg("greedy"), py::arg("temperature") = 1.0f, py::arg("top_k") = 0,
      py::arg("top_p") = 1.0f, py::arg("min_p") = 0.0f, py::arg("seed") = 0, py::arg("step") = 0,
      py::arg("device") = 0);

  m.def(
      "cuda_time_gemv",
      [](int64_t rows, int64_t cols, int64_t tokens, std::optional<QuantType> quant, const std::string& w_dtype,
         int64_t group, int64_t reps, int64_t device) {
        // For tools/bench_cuda.py: seconds per GEMV launch (quantized when quant is given, else w_dtype).
        require(rows >= 1 && rows <= (int64_t(1) << 20), "rows", "must be from 1 to 2**20");
        require(cols >= 64 && cols <= (int64_t(1) << 20) && cols % 64 == 0, "cols", "must be a multiple of 64 up to 2**20");
        require(tokens >= 1 && tokens <= cu::kMaxGemvTokens, "tokens", "must be from 1 to 16");
        require(reps >= 1 && reps <= 100000, "reps", "must be from 1 to 100000");
        if (quant) {
          group_arg(group, "group");
          require(cols % group == 0, "group", "must divide cols");
        }
        const DType dt = quant ? DType::F16 : dtype_arg(w_dtype);
        require(quant || dt == DType::F16 || dt == DType::BF16, "w_dtype", "expected float16 or bfloat16");
        py::gil_scoped_release nogil;
        use_device(device);
        return quant ? cu::time_gemv_quant(*quant, group, rows, cols, tokens, int(reps))
                     : cu::time_gemv_half(dt, rows, cols, tokens, int(reps));
      },
      py::arg("rows"), py::arg("cols"), py::arg("tokens"), py::arg("quant"), py::arg("w_dtype") = "float16",
      py::arg("group") = 32, py::arg("reps") = 200, py::arg("device") = 0);
}
