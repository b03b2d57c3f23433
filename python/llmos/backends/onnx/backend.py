"""An ONNX decoder folder run by onnxruntime: the second `Backend` (backends/base.py).

`llmos.load(onnx_folder)` gives the same `llmos.Model` as for a checkpoint; only the backend
differs. `OnnxBackend` stands where the C++ core stands — same `logits` / `generate` calls,
same results — and picks every token with the core's own
processors and sampler (`_core.Sampler`), so decoding options behave exactly as they do in
the core: the same seed gives the same tokens from the same logits.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from llmos import _core
from llmos.io.config import ConfigReader, read_json
from llmos.errors import (CancelledError, DeviceUnavailableError, InvalidInputError, LlmosError, ModelFileError,
                          ModelFormatError)
from llmos.arch.families import Architecture, family_for
from llmos.backends.device import Device
from llmos.backends.onnx import layout
from llmos.backends.onnx.layout import DecoderLayout
from llmos.backends.onnx.reader import decoder_layout, load_proto

_FINISH = {0: "length", 1: "eos", 2: "stop"}


CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
GPU_EXTRA_HINT = ("pip install 'llmos[gpu]' (onnxruntime-gpu, which takes the place of onnxruntime: uninstall "
                  "onnxruntime first)")


def providers_for(device: Device) -> list:
    """onnxruntime's execution providers for `device`: "cpu" only the CPU provider; "cuda:N" the
    CUDA provider on GPU N, then the CPU one for the operators CUDA lacks (DeviceUnavailableError
    when this onnxruntime has no CUDA provider); "auto" the CUDA provider on GPU 0 when it is
    installed, else the CPU."""
    import onnxruntime as ort

    if device.kind == "cpu":
        return [CPU_PROVIDER]
    available = ort.get_available_providers()
    if CUDA_PROVIDER not in available:
        if device.kind == "cuda":
            raise DeviceUnavailableError(
                f"device: {device} needs onnxruntime's {CUDA_PROVIDER}, which the installed onnxruntime lacks "
                f"(it has {', '.join(available)}); {GPU_EXTRA_HINT}", field="device")
        return [CPU_PROVIDER]
    return [(CUDA_PROVIDER, {"device_id": device.index}), CPU_PROVIDER]


class OnnxBackend:
    """One onnxruntime session over a decoder in the optimum layout: a `Backend` (see
    backends/base.py). Create with `load(path, threads)`."""

    name = "onnx"
    quant = None  # int4 graphs quantize inside the graph (MatMulNBits); the core's formats do not apply

    def __init__(self, file: str, arch: Architecture, threads: int, *, decoder: DecoderLayout | None = None,
                 kv_dims: tuple[int, int] | None = None, shared_kv: bool = False, min_capacity: int = 0,
                 device: Device = Device("auto")):
        import onnxruntime as ort

        if decoder is None:
            decoder = decoder_layout(load_proto(file), file)
        self.layout: DecoderLayout = decoder
        self.file = file
        self.arch = arch
        self.threads = threads
        self.folder = os.path.dirname(os.path.abspath(file))
        self.config: ConfigReader | None = None  # config.json, when the folder has one
        self.genai: dict | None = None           # genai_config.json, when the folder has one
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = providers_for(device)  # refuses "cuda" without the provider, outside the graph's errors
        try:
            self.session = ort.InferenceSession(file, so, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / NotImplemented classes
            raise ModelFormatError(f"{file}: onnxruntime cannot load the graph: {e}", file=file) from None
        first = self.session.get_providers()[0]
        if device.kind == "cuda" and first != CUDA_PROVIDER:
            # onnxruntime falls back to the CPU when the CUDA provider cannot start; "cuda" asked for the GPU
            raise DeviceUnavailableError(f"device: onnxruntime could not start its {CUDA_PROVIDER} on {device} "
                                         "(no NVIDIA driver, no such GPU, or a CUDA / cuDNN it cannot load) and "
                                         "fell back to the CPU", field="device")
        self.isa = "onnxruntime:" + first.replace("ExecutionProvider", "").lower()
        # Where the session runs; its kind and index name the device of bound inputs and outputs.
        self._on = Device("cuda", device.index) if first == CUDA_PROVIDER else Device("cpu")
        self.device = str(self._on)
        heads, dim = self.layout.kv_dims()
        if kv_dims is not None:
            heads, dim = heads or kv_dims[0], dim or kv_dims[1]
        if self.layout.past and (not heads or not dim):
            raise ModelFormatError(f"{file}: the KV cache inputs have no fixed kv_heads / head_dim and no config "
                                   "(config.json or genai_config.json) gives them", file=file,
                                   field=self.layout.past[0][0].name)
        self._kv_shape = (heads, dim)
        self._kv_dtype = np.dtype(self.layout.kv_type)
        self._outputs = [self.layout.logits.name] + [n for pair in self.layout.present for n in pair]
        self._lock = threading.Lock()
        self.shared_kv = bool(shared_kv and self.layout.past)
        self._min_capacity = min_capacity
        long_after = arch.rope.long_after if arch.rope is not None and arch.rope.inv_freq_long is not None else 0
        self._long_after = long_after
        self.dtype = self.layout.kv_type

    # ---- one forward ------------------------------------------------------------------------

    def _value(self, arr: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(arr, self._on.kind, self._on.index)

    def _new_past(self, capacity: int) -> list:
        """Empty caches: [1, kv, 0, D] to concatenate onto, or, for graphs that write their
        present into the past buffer (onnxruntime-genai's past_present_share_buffer), zeroed
        buffers of `capacity` positions."""
        heads, dim = self._kv_shape
        length = max(capacity, self._min_capacity) if self.shared_kv else 0
        return [self._value(np.zeros((1, heads, length, dim), self._kv_dtype))
                for _ in range(2 * self.layout.num_layers)]

    def _forward(self, tokens: list[int], state: dict) -> np.ndarray:
        """Runs `tokens` after the cached ones; returns their logits [n, vocab] float32."""
        lay = self.layout
        past_len = state["past_len"]
        if self._long_after and 0 < past_len <= self._long_after < past_len + len(tokens):
            # Keys cached before the longrope switch were rotated with the short factors: run
            # the whole sequence again, as the core (and transformers for Phi-3) does.
            history = state["history"]
            state.update(past=None, past_len=0, history=[])
            return self._forward(history + list(tokens), state)[len(history):]
        if not lay.past and past_len:
            # A graph without a KV cache recomputes the whole sequence every step.
            history = state["history"]
            state.update(past_len=0, history=[])
            return self._forward(history + list(tokens), state)[len(history):]
        n = len(tokens)
        total = past_len + n
        if lay.past and state["past"] is None:
            state["past"] = self._new_past(max(state["capacity"], total))
        past = state["past"]
        if self.shared_kv and total > past[0].shape()[2]:
            raise InvalidInputError(f"sequence of {total} tokens exceeds the KV cache of {past[0].shape()[2]} "
                                    "positions allocated for this call", field="max_new_tokens")

        feeds = {lay.input_ids.name: self._value(np.asarray([tokens], dtype=lay.input_ids.type))}
        if lay.attention_mask is not None:
            feeds[lay.attention_mask.name] = self._value(np.ones((1, total), dtype=lay.attention_mask.type))
        if lay.position_ids is not None:
            feeds[lay.position_ids.name] = self._value(np.arange(past_len, total, dtype=lay.position_ids.type)[None])
        if lay.use_cache_branch is not None:
            feeds[lay.use_cache_branch.name] = self._value(np.array([past_len > 0], dtype=np.bool_))
        for i, (k, v) in enumerate(lay.past):
            feeds[k.name], feeds[v.name] = past[2 * i], past[2 * i + 1]
        try:
            if self.shared_kv:
                io = self.session.io_binding()
                for name, value in feeds.items():
                    io.bind_ortvalue_input(name, value)
                io.bind_output(lay.logits.name, self._on.kind, self._on.index)
                for i, (k, v) in enumerate(lay.present):
                    io.bind_ortvalue_output(k, past[2 * i])
                    io.bind_ortvalue_output(v, past[2 * i + 1])
                self.session.run_with_iobinding(io)
                logits = io.get_outputs()[0].numpy()
            else:
                outs = self.session.run_with_ort_values(self._outputs, feeds)
                logits = outs[0].numpy()
                state["past"] = list(outs[1:]) if lay.past else None
        except Exception as e:
            raise ModelFormatError(f"{self.file}: onnxruntime failed to run the graph: {e}", file=self.file) from None
        if logits.ndim != 3 or logits.shape[0] != 1 or logits.shape[1] not in (n, 1):
            raise ModelFormatError(f"{self.file}: output 'logits' has shape {list(logits.shape)}, expected "
                                   f"[1, {n}, vocab]", file=self.file, field=lay.logits.name)
        state["past_len"] = total
        state["history"] = state["history"] + list(tokens)
        return np.ascontiguousarray(logits[0], dtype=np.float32)

    @staticmethod
    def new_state(capacity: int = 0) -> dict:
        return {"past": None, "past_len": 0, "history": [], "capacity": capacity}

    # ---- the Backend interface --------------------------------------------------------

    def logits(self, ids) -> np.ndarray:
        ids = [int(t) for t in np.asarray(ids).reshape(-1)]
        with self._lock:
            out = self._forward(ids, self.new_state(len(ids)))
        if out.shape[0] != len(ids):
            raise ModelFormatError(f"{self.file}: the graph returns logits for the last position only, not for "
                                   "every position", file=self.file, field="logits")
        return out

    def generate(self, prompts, options, on_token=None, cancel=None, constraints=None) -> list[dict]:
        """Greedy / sampled decoding of each prompt, as cpp/model/generate.cc does it. `cancel`
        is checked before each onnxruntime run (one run is not interrupted). constraints: None
        or one TokenConstraint (or None) per sequence; here each mask is computed between runs."""
        n_seq = len(prompts) * options.num_return_sequences
        if constraints is not None and len(constraints) != n_seq:
            raise InvalidInputError(f"constraints: expected one per sequence ({n_seq}), got {len(constraints)}",
                                    field="constraints")
        if options.num_beams > 1:
            raise InvalidInputError("num_beams: beam search is not available for ONNX models (use num_beams=1)",
                                    field="num_beams")
        V = self.arch.vocab_size
        options.validate(V)
        eos = set(options.eos_token_ids)
        results = []
        base_seed = options.seed
        with self._lock:
            for p_index, prompt in enumerate(prompts):
                prompt = [int(t) for t in prompt]
                for r in range(options.num_return_sequences):
                    seq = p_index * options.num_return_sequences + r
                    # Each returned sequence has its own RNG stream, seeded as the core seeds it.
                    options.seed = base_seed + r
                    try:
                        sampler = _core.Sampler(options, prompt, V)
                    finally:
                        options.seed = base_seed
                    res = {"prompt_index": p_index, "tokens": [], "finish_reason": "length", "logprobs": [],
                           "top_logprobs": [], "score": 0.0}
                    results.append(res)
                    if options.max_new_tokens == 0:
                        continue
                    state = self.new_state(len(prompt) + options.max_new_tokens)
                    _check_cancelled(cancel)
                    row = self._forward(prompt, state)[-1]
                    constraint = constraints[seq] if constraints is not None else None
                    mask = np.zeros((V + 31) // 32, dtype=np.uint32) if constraint is not None else None
                    while True:
                        if constraint is not None:
                            mask[:] = 0
                            constraint.fill_mask(mask, V)
                        tok, logprob, top = sampler.next(row[:V], mask)
                        if constraint is not None:
                            if not (int(mask[tok >> 5]) >> (tok & 31)) & 1:
                                raise InvalidInputError(
                                    "constraint: no token the output constraint allows survives the other options "
                                    f"(min_new_tokens, bad_words_ids, suppress_tokens, ...) after {len(res['tokens'])} "
                                    "tokens", field="constraint")
                            if tok not in eos:
                                constraint.accept(tok)
                        res["tokens"].append(tok)
                        if options.logprobs:
                            res["logprobs"].append(logprob)
                            res["top_logprobs"].append(top)
                        stop = bool(on_token(seq, tok)) if on_token is not None else False
                        if tok in eos:
                            res["finish_reason"] = "eos"
                        elif stop:
                            res["finish_reason"] = "stop"
                        elif len(res["tokens"]) >= options.max_new_tokens:
                            res["finish_reason"] = "length"
                        elif constraint is not None and not eos and constraint.done():
                            res["finish_reason"] = "stop"  # no EOS token to end it (as the core does)
                        else:
                            _check_cancelled(cancel)
                            row = self._forward([tok], state)[-1]
                            continue
                        break
        return results


def _check_cancelled(cancel) -> None:
    if cancel is not None and cancel.cancelled():
        raise CancelledError("the call was cancelled by its CancelToken", field="cancel")


def _minimal_architecture(family: str, vocab: int, layers: int, heads: int, kv_heads: int, head_dim: int,
                          hidden: int, context: int) -> Architecture:
    return Architecture(family=family, vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                        num_kv_heads=kv_heads, head_dim=head_dim, intermediate_size=0,
                        max_position_embeddings=context, sliding_window=[0] * layers)


def decoder_file(path: str) -> str:
    """The ONNX decoder graph of a folder (ModelFileError when it has none)."""
    path = os.fspath(path)
    file = layout.find_onnx_file(path)
    if file is None:
        raise ModelFileError(f"{path}: no ONNX decoder found (expected one of {', '.join(layout.ONNX_FILES)} "
                             f"or {layout.GENAI_CONFIG})", file=path)
    return os.path.abspath(file)


def load(path: str, threads: int, dtype: str | None = None, device: Device = Device("auto")) -> OnnxBackend:
    """The backend for an ONNX decoder folder (ours, optimum's, the onnxruntime-genai
    builder's), on the execution providers `device` picks (providers_for): onnxruntime's CUDA
    provider for "cuda:N", and for "auto" when it is installed; the CPU otherwise. Beam search is
    not available (num_beams must be 1)."""
    file = decoder_file(path)
    folder = os.path.dirname(file)
    cfg_path = os.path.join(folder, "config.json")
    raw = read_json(cfg_path, required=False)
    cfg = ConfigReader(raw or {}, cfg_path)
    genai = layout.read_metadata(folder, layout.GENAI_CONFIG)
    proto = load_proto(file)
    lay = decoder_layout(proto, file)
    # GroupQueryAttention with a local window needs a cache buffer at least that long.
    windows = [a.i for node in proto.graph.node if node.op_type == "GroupQueryAttention"
               for a in node.attribute if a.name == "local_window_size"]
    del proto
    arch = _architecture(file, cfg, raw, genai, lay)
    meta = layout.read_metadata(folder, layout.METADATA_FILE) or {}
    shared = bool(((genai or {}).get("search") or {}).get("past_present_share_buffer", False)) or \
        meta.get("past_present_share_buffer") is True
    backend = OnnxBackend(file, arch, threads, decoder=lay, kv_dims=(arch.num_kv_heads, arch.head_dim),
                          shared_kv=shared, min_capacity=max(windows, default=0), device=device)
    backend.folder, backend.config, backend.genai = folder, cfg, genai
    if dtype is not None and dtype != backend.dtype:
        raise InvalidInputError(f"dtype: an ONNX model computes in the precision it was exported with "
                                f"({backend.dtype}); got {dtype!r}", field="dtype")
    return backend


def _architecture(file: str, cfg: ConfigReader, raw: dict | None, genai: dict | None,
                  lay: DecoderLayout) -> Architecture:
    """The model's Architecture: from config.json when its family is known to llmos,
    else the few numbers generation needs, from config.json / genai_config.json / the graph."""
    if raw:
        try:
            return family_for(cfg).architecture(cfg)
        except LlmosError:
            pass  # an ONNX model of a family the core lacks still runs: fall back to the basics
    heads_g, dim_g = lay.kv_dims()
    vocab_g = lay.logits.shape[2] if isinstance(lay.logits.shape[2], int) else None
    d = ((genai or {}).get("model") or {})
    dec = d.get("decoder") or {}
    c = raw or {}

    def pick(*values):
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return None

    heads = pick(dec.get("num_attention_heads"), c.get("num_attention_heads"), c.get("n_head"))
    hidden = pick(dec.get("hidden_size"), c.get("hidden_size"), c.get("n_embd"))
    kv_heads = pick(heads_g, dec.get("num_key_value_heads"), c.get("num_key_value_heads"), heads)
    head_dim = pick(dim_g, dec.get("head_size"), c.get("head_dim"),
                    hidden // heads if hidden and heads and hidden % heads == 0 else None)
    vocab = pick(vocab_g, d.get("vocab_size"), c.get("vocab_size"))
    context = pick(d.get("context_length"), c.get("max_position_embeddings"), c.get("n_positions")) or 1 << 20
    if vocab is None:
        raise ModelFormatError(f"{file}: the vocabulary size is not fixed in the graph and no config "
                               "(config.json or genai_config.json) gives it", file=file, field="vocab_size")
    layers = lay.num_layers
    return _minimal_architecture(str(d.get("type") or c.get("model_type") or "onnx"), vocab, layers,
                                 heads or (kv_heads or 1), kv_heads or 1, head_dim or 1, hidden or 0, context)
