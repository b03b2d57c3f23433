// Token choice (sampling/): the decoding options, the logits processors for tests, and a
// one-token-at-a-time Sampler for decode loops that run outside the core (ONNX).
#include <pybind11/stl.h>

#include <mutex>

#include "bindings/bindings.h"
#include "core/errors.h"
#include "sampling/constraint.h"
#include "sampling/options.h"
#include "sampling/processors.h"
#include "sampling/sampler.h"

using namespace llmos;
using namespace llmos::binding;

namespace {

// The history keeps a byte per vocabulary entry, allocated up front; no released model's
// vocabulary is within a factor of 50 of this.
constexpr int64_t kMaxVocab = int64_t(1) << 24;

// The same processors, warpers and sampler as generate(), one token at a time.
// next() runs without the GIL, so the mutex keeps two Python threads from sharing one
// history at once.
struct PySampler {
  DecodeOptions options;
  int64_t vocab_size;
  TokenHistory history;
  Sampler sampler;
  std::mutex mu;
  PySampler(const DecodeOptions& o, const std::vector<int32_t>& prompt, int64_t vocab)
      : options(o), vocab_size(vocab), history(prompt, vocab), sampler(options, o.seed) {}
};

// A TokenConstraint written in Python (llmos's structured output over llguidance). The core
// calls it from its own threads, so each call takes the GIL. The mask reaches Python as a
// uint32 array over the core's buffer (no copy). The Python object must outlive every call
// (the caller that passes it to the core keeps a reference until the sequence is done).
class PyTokenConstraint : public TokenConstraint {
 public:
  void fill_mask(uint32_t* allowed, int64_t vocab) override {
    py::gil_scoped_acquire gil;
    py::function f = py::get_override(static_cast<const TokenConstraint*>(this), "fill_mask");
    if (!f) throw Error(Error::Kind::InvalidInput, "", "constraint", "TokenConstraint subclass lacks fill_mask");
    py::capsule keep(allowed, [](void*) {});
    py::array_t<uint32_t> view({mask_words(vocab)}, {int64_t(4)}, allowed, keep);
    f(view, vocab);
  }
  void accept(int32_t token) override { PYBIND11_OVERRIDE_PURE(void, TokenConstraint, accept, token); }
  bool done() const override { PYBIND11_OVERRIDE_PURE(bool, TokenConstraint, done, ); }
};

}  // namespace

void bind_sampling(py::module_& m) {
  py::class_<TokenConstraint, PyTokenConstraint, std::shared_ptr<TokenConstraint>>(
      m, "TokenConstraint",
      "Base class of output constraints (cpp/sampling/constraint.h): subclass and implement "
      "fill_mask(allowed: uint32 array of (vocab + 31) // 32 words, zeroed; set bit t % 32 of word t // 32 "
      "for each allowed token t, vocab), accept(token) and done(). Called from the core's threads.")
      .def(py::init<>());

  py::class_<DecodeOptions>(m, "DecodeOptions", "Every option of token choice (cpp/sampling/options.h)")
      .def(py::init<>())
      .def_readwrite("max_new_tokens", &DecodeOptions::max_new_tokens)
      .def_readwrite("min_new_tokens", &DecodeOptions::min_new_tokens)
      .def_readwrite("min_length", &DecodeOptions::min_length)
      .def_readwrite("eos_token_ids", &DecodeOptions::eos_token_ids)
      .def_readwrite("logit_bias", &DecodeOptions::logit_bias)
      .def_readwrite("sequence_bias", &DecodeOptions::sequence_bias)
      .def_readwrite("encoder_repetition_penalty", &DecodeOptions::encoder_repetition_penalty)
      .def_readwrite("repetition_penalty", &DecodeOptions::repetition_penalty)
      .def_readwrite("presence_penalty", &DecodeOptions::presence_penalty)
      .def_readwrite("frequency_penalty", &DecodeOptions::frequency_penalty)
      .def_readwrite("no_repeat_ngram_size", &DecodeOptions::no_repeat_ngram_size)
      .def_readwrite("encoder_no_repeat_ngram_size", &DecodeOptions::encoder_no_repeat_ngram_size)
      .def_readwrite("bad_words_ids", &DecodeOptions::bad_words_ids)
      .def_readwrite("forced_bos_token_id", &DecodeOptions::forced_bos_token_id)
      .def_readwrite("forced_eos_token_ids", &DecodeOptions::forced_eos_token_ids)
      .def_readwrite("remove_invalid_values", &DecodeOptions::remove_invalid_values)
      .def_readwrite("exponential_decay_length_penalty", &DecodeOptions::exponential_decay_length_penalty)
      .def_readwrite("suppress_tokens", &DecodeOptions::suppress_tokens)
      .def_readwrite("begin_suppress_tokens", &DecodeOptions::begin_suppress_tokens)
      .def_readwrite("do_sample", &DecodeOptions::do_sample)
      .def_readwrite("temperature", &DecodeOptions::temperature)
      .def_readwrite("top_h", &DecodeOptions::top_h)
      .def_readwrite("top_k", &DecodeOptions::top_k)
      .def_readwrite("top_p", &DecodeOptions::top_p)
      .def_readwrite("min_p", &DecodeOptions::min_p)
      .def_readwrite("typical_p", &DecodeOptions::typical_p)
      .def_readwrite("epsilon_cutoff", &DecodeOptions::epsilon_cutoff)
      .def_readwrite("eta_cutoff", &DecodeOptions::eta_cutoff)
      .def_readwrite("seed", &DecodeOptions::seed)
      .def_readwrite("renormalize_logits", &DecodeOptions::renormalize_logits)
      .def_readwrite("num_beams", &DecodeOptions::num_beams)
      .def_readwrite("length_penalty", &DecodeOptions::length_penalty)
      .def_readwrite("early_stopping", &DecodeOptions::early_stopping)
      .def_readwrite("num_return_sequences", &DecodeOptions::num_return_sequences)
      .def_readwrite("logprobs", &DecodeOptions::logprobs)
      .def_readwrite("top_logprobs", &DecodeOptions::top_logprobs)
      .def("validate", &DecodeOptions::validate, py::arg("vocab_size"));

  m.def(
      "process_logits",
      [](const DecodeOptions& o, std::vector<int32_t> sequence, int64_t prompt_len, FloatArray logits) {
        // For tests: one row of logits through the whole chain the decode loop applies at this
        // point of the sequence (processors, warpers when sampling, renormalize_logits).
        require(logits.ndim() == 1, "logits", "expected a 1-d array of vocab_size scores");
        const int64_t V = int64_t(logits.size());
        o.validate(V);
        require(prompt_len >= 0 && prompt_len <= int64_t(sequence.size()), "prompt_len", "must be within the sequence");
        for (int32_t t : sequence) require(t >= 0 && t < V, "sequence", "token id " + std::to_string(t) + " out of range");
        py::array_t<float> out(V);
        const float* lp = logits.data();
        float* op = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          TokenHistory h(std::vector<int32_t>(sequence.begin(), sequence.begin() + prompt_len), V);
          for (size_t i = size_t(prompt_len); i < sequence.size(); ++i) h.push(sequence[i]);
          std::copy(lp, lp + V, op);
          process_scores(o, h, op, V, 1);
        }
        return out;
      },
      py::arg("options"), py::arg("sequence"), py::arg("prompt_len"), py::arg("logits"));

  py::class_<PySampler>(m, "Sampler", "The processors, warpers and sampler of generate(), one token at a time")
      .def(py::init([](const DecodeOptions& o, std::vector<int32_t> prompt, int64_t vocab_size) {
             require(vocab_size > 0 && vocab_size <= kMaxVocab, "vocab_size",
                     "must be from 1 to " + std::to_string(kMaxVocab) + ", got " + std::to_string(vocab_size));
             o.validate(vocab_size);
             for (int32_t t : prompt)
               require(t >= 0 && t < vocab_size, "prompt", "token id " + std::to_string(t) + " out of range");
             return std::make_unique<PySampler>(o, prompt, vocab_size);
           }),
           py::arg("options"), py::arg("prompt"), py::arg("vocab_size"))
      .def_readonly("vocab_size", &PySampler::vocab_size)
      .def(
          "next",
          [](PySampler& s, FloatArray logits, std::optional<py::array_t<uint32_t, py::array::c_style>> allowed) {
            require(logits.ndim() == 1 && int64_t(logits.size()) == s.vocab_size, "logits",
                    "expected a 1-d array of vocab_size (" + std::to_string(s.vocab_size) + ") scores, got shape " +
                        shape_str(logits));
            const float* lp = logits.data();
            std::vector<float> row(lp, lp + s.vocab_size);
            std::vector<uint32_t> mask;
            if (allowed) {
              require(allowed->ndim() == 1 && int64_t(allowed->size()) == mask_words(s.vocab_size), "allowed",
                      "expected a 1-d uint32 array of (vocab_size + 31) // 32 = " +
                          std::to_string(mask_words(s.vocab_size)) + " words, got shape " + shape_str(*allowed));
              mask.assign(allowed->data(), allowed->data() + allowed->size());
            }
            TokenLogprobs tl;
            int32_t tok;
            {
              py::gil_scoped_release nogil;
              std::lock_guard<std::mutex> lock(s.mu);
              tok = s.sampler.next(row.data(), s.vocab_size, s.history, s.options.logprobs ? &tl : nullptr,
                                   allowed ? mask.data() : nullptr);
              s.history.push(tok);
            }
            return py::make_tuple(tok, tl.logprob, tl.top);
          },
          py::arg("logits"), py::arg("allowed") = py::none(),
          "Processes one row of logits and picks the next token: (token, logprob, top_logprobs). allowed: "
          "a TokenConstraint's mask (uint32, bit t % 32 of word t // 32 per allowed token), or None");
}
