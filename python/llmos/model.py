"""The public model object: load a checkpoint, then logits / generate / stream / chat.

Everything per token runs in the C++ core (llmos._core); this file only prepares inputs
once per call and turns token ids into text.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from typing import Iterator, Sequence

import numpy as np

from . import _core, hf_quant
from .checkpoint import float_source, tensor_locations
from .config import ConfigReader, read_json
from .errors import ChatTemplateError, ContextLengthError, InvalidInputError, ModelFileError
from .families import Architecture, family_for
from .generation import Generation, GenerationConfig, to_core_options
from .text_stream import IncrementalDecoder, StopMatcher
from .quant import parse_quant
from .tokenizer import Tokenizer

DTYPES = ("float32", "bfloat16", "float16")
_TORCH_DTYPE_NAMES = {"float32": "float32", "float": "float32", "bfloat16": "bfloat16",
                      "float16": "float16", "half": "float16"}


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's SIMD units)."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "physical_package_id") as f:
                pkg = f.read().strip()
            with open(base + "core_id") as f:
                core = f.read().strip()
            cores.add((pkg, core))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def _checkpoint_dtype(cfg: ConfigReader) -> str:
    """The dtype the checkpoint was saved in, per config.json (float32 when unknown)."""
    name = cfg.raw("torch_dtype") or cfg.raw("dtype") or "float32"
    return _TORCH_DTYPE_NAMES.get(str(name).replace("torch.", ""), "float32")


class Model:
    """A loaded checkpoint. Create with `llmos.load(path)`.

    Thread-safety: calls may come from several threads; the core runs one forward pass at a
    time per model.
    """

    def __init__(self, path: str, dtype: str | None = None, threads: int | None = None, quant: str | None = None):
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise ModelFileError(f"{path}: not a directory (expected a Hugging Face checkpoint folder)", file=path)
        self.path = path
        config_path = os.path.join(path, "config.json")
        cfg = ConfigReader(read_json(config_path), config_path)
        family = family_for(cfg)
        self.config: Architecture = family.architecture(cfg)
        if dtype is None:
            dtype = _checkpoint_dtype(cfg)
        if dtype not in DTYPES:
            raise InvalidInputError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}", field="dtype")
        self.dtype = dtype
        if threads is None:
            threads = physical_cores()
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidInputError(f"threads: expected an integer >= 1, got {threads!r}", field="threads")

        # The tokenizer is checked before the (slower) weight load so a bad folder fails fast.
        self.tokenizer = Tokenizer.from_dir(path)
        self.generation_config = self._generation_defaults(path, cfg)

        locations = tensor_locations(path)
        self._family = family
        prequant = _prequantized_roles(locations)
        self.prequantized = bool(prequant)
        # Where the quantized blocks come from: "llmos" (llmos.quantize), "awq", "gptq", or None.
        self.quant_method = "llmos" if prequant else None
        hf = None if prequant else hf_quant.read_config(cfg)
        self.quant = parse_quant(quant)
        converted = None
        try:
            if hf is not None:
                # AWQ / GPTQ: the blocks are repacked into llmos's format and loaded through the
                # same pre-quantized path (see hf_quant.py); float parts stay float.
                converted = hf_quant.convert(hf, family, self.config, locations, path, threads=threads)
                sources, saved = converted.sources, converted.choice
                self.prequantized, self.quant_method = saved is not None, hf.method
            else:
                sources, saved = [], parse_quant(prequant["__quant__"]) if prequant else None
                for role, layer, parts in family.tensors(self.config):
                    if (role, layer) in prequant:
                        file, base, qtype, group = prequant[(role, layer)]
                        sources.append((role, layer, [(file, base, False)], qtype, group))
                    else:
                        sources.append(float_source(locations, role, layer, parts, path))
            if self.prequantized:
                if self.quant is not None and self.quant.name != saved.name:
                    how = f" with {hf.label}" if hf is not None else ""
                    raise InvalidInputError(f"quant: {path} is already quantized{how} as {saved.name}, not {quant} "
                                            "(load it without quant=)", field="quant")
                self.quant, quant = saved, None
            q = parse_quant(quant)
            self._core = _core.Model(self.config.to_core(_core), sources, dtype, threads,
                                     q.type if q else 0, q.group if q else 32, q.head_type if q else 0)
        finally:
            if converted is not None:
                converted.cleanup()

    @staticmethod
    def _generation_defaults(path: str, cfg: ConfigReader) -> GenerationConfig:
        """Decoding defaults from generation_config.json (as transformers applies them);
        EOS falls back to config.json's."""
        gen_path = os.path.join(path, "generation_config.json")
        gen = read_json(gen_path, required=False) or {}
        out = GenerationConfig.from_dict(gen, strict=False, source=gen_path)
        if out.eos_token_id is None and cfg.raw("eos_token_id") is not None:
            out.eos_token_id = cfg.raw("eos_token_id")
        return out

    # ---- properties -------------------------------------------------------------------

    @property
    def threads(self) -> int:
        return self._core.n_threads

    @property
    def isa(self) -> str:
        """The kernel ISA in use: scalar, avx2 or avx512."""
        return self._core.isa

    def __repr__(self) -> str:
        c = self.config
        return (f"<llmos.Model {c.family} layers={c.num_layers} hidden={c.hidden_size} vocab={c.vocab_size} "
                f"dtype={self.dtype} quant={self.quant.name if self.quant else None} threads={self.threads} isa={self.isa} path={self.path!r}>")

    # ---- inputs -----------------------------------------------------------------------

    def _ids(self, prompt, *, field: str = "prompt") -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, np.ndarray) and prompt.ndim == 1 and np.issubdtype(prompt.dtype, np.integer):
            ids = [int(i) for i in prompt]
        elif isinstance(prompt, Sequence) and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                                  for i in prompt):
            ids = [int(i) for i in prompt]
        else:
            raise InvalidInputError(f"{field}: expected a string or a list of token ids, got {type(prompt).__name__}",
                                    field=field)
        if not ids:
            raise InvalidInputError(f"{field}: is empty (no tokens)", field=field)
        vocab = self.config.vocab_size
        for i, t in enumerate(ids):
            if not 0 <= t < vocab:
                raise InvalidInputError(f"{field}: token id {t} at index {i} is outside the vocabulary [0, {vocab})",
                                        field=field)
        ctx = self.config.max_position_embeddings
        if len(ids) > ctx:
            raise ContextLengthError(f"{field}: {len(ids)} tokens exceed the model's context of {ctx} tokens",
                                     field=field)
        return ids

    def _config(self, generation_config, options: dict) -> tuple[GenerationConfig, bool]:
        """The effective options and whether the caller set a length limit explicitly."""
        user = GenerationConfig.from_dict(options) if options else GenerationConfig()
        if generation_config is not None:
            if not isinstance(generation_config, GenerationConfig):
                raise InvalidInputError("generation_config: expected an llmos.GenerationConfig, got "
                                        f"{type(generation_config).__name__}", field="generation_config")
            user = generation_config.merged(user)
        explicit = user.max_new_tokens is not None or user.max_length is not None
        return self.generation_config.merged(user), explicit

    # ---- API --------------------------------------------------------------------------

    def logits(self, token_ids) -> np.ndarray:
        """[n_tokens, vocab] float32 logits for every position, computed in a fresh context."""
        ids = self._ids(token_ids, field="token_ids")
        return self._core.logits(np.asarray(ids, dtype=np.int64))

    def generate(self, prompt, generation_config: GenerationConfig | None = None, **options):
        """Continues `prompt`: a string or a list of token ids.

        Options (see llmos.GenerationConfig): max_new_tokens, max_length, min_new_tokens,
        do_sample, temperature, top_k, top_p, min_p, typical_p, repetition_penalty,
        no_repeat_ngram_size, num_beams, length_penalty, early_stopping,
        num_return_sequences, bad_words_ids, eos_token_id ([] disables EOS), seed,
        presence_penalty, frequency_penalty, logit_bias, stop, logprobs, top_logprobs.
        Unset options take the checkpoint's generation_config.json, then transformers'
        defaults.

        Returns a Generation; a list of prompts gives a list, decoded together (one forward
        per step for all of them); num_return_sequences > 1 gives a list per prompt.
        """
        batch = _is_batch(prompt)
        prompts = [self._ids(p) for p in prompt] if batch else [self._ids(prompt)]
        cfg, explicit = self._config(generation_config, options)
        per_prompt = self._decode(prompts, cfg, explicit)
        out = [r[0] if len(r) == 1 and (cfg.get("num_return_sequences") == 1) else r for r in per_prompt]
        return out if batch else out[0]

    def stream(self, prompt, generation_config: GenerationConfig | None = None, **options) -> Iterator[str]:
        """Yields the new text piece by piece as tokens are produced. Every piece is valid
        UTF-8, nothing yielded is later cut by a stop string, and the pieces join into the
        `.text` that generate() returns for the same options and seed."""
        if _is_batch(prompt):
            raise InvalidInputError("stream: takes one prompt, not a list", field="prompt")
        ids = self._ids(prompt)
        cfg, explicit = self._config(generation_config, options)
        if cfg.get("num_beams") > 1 or cfg.get("num_return_sequences") > 1:
            raise InvalidInputError("stream: needs num_beams=1 and num_return_sequences=1", field="num_beams")
        core_opts, stop = to_core_options(_core, cfg, len(ids), self.config.vocab_size,
                                          self.config.max_position_embeddings, explicit_limit=explicit)
        return self._stream(ids, core_opts, stop)

    def chat(self, messages, *, add_generation_prompt: bool = True, stream: bool = False, **options):
        """Renders `messages` with the checkpoint's chat template and generates the reply."""
        ids = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
        return self.stream(ids, **options) if stream else self.generate(ids, **options)

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = True, tokenize: bool = False, **extra):
        """The prompt text (or ids with tokenize=True) for `messages`, as transformers renders it."""
        if not self.tokenizer.chat_template:
            raise ChatTemplateError(f"{self.path}: the checkpoint has no chat template "
                                    "(tokenizer_config.json 'chat_template' or chat_template.jinja)",
                                    file=self.path, field="chat_template")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **extra)
        return self.tokenizer.encode(text, add_special_tokens=False) if tokenize else text

    # ---- internals --------------------------------------------------------------------

    def _decode(self, prompts: list[list[int]], cfg: GenerationConfig, explicit: bool) -> list[list[Generation]]:
        """Runs the core's decode loop; prompts that need the same options go together."""
        groups: dict[int, list[int]] = {}
        opts_by_len = {}
        for i, ids in enumerate(prompts):
            # max_length counts the prompt, so the token budget can differ per prompt.
            key = len(ids) if cfg.max_new_tokens is None and cfg.max_length is not None else -1
            if key not in opts_by_len:
                opts_by_len[key] = to_core_options(_core, cfg, len(ids), self.config.vocab_size,
                                                   self.config.max_position_embeddings, explicit_limit=explicit)
            groups.setdefault(key, []).append(i)
        # Context check per prompt (the shared option set was built for one prompt length).
        for key, members in groups.items():
            o = opts_by_len[key][0]
            for i in members:
                if len(prompts[i]) + o.max_new_tokens > self.config.max_position_embeddings:
                    if explicit:
                        raise ContextLengthError(
                            f"max_new_tokens: prompt {i} of {len(prompts[i])} tokens plus {o.max_new_tokens} new "
                            f"tokens exceeds the model's context of {self.config.max_position_embeddings} tokens",
                            field="max_new_tokens")
                    o.max_new_tokens = self.config.max_position_embeddings - len(prompts[i])
        results: list[list[Generation]] = [[] for _ in prompts]
        for key, members in groups.items():
            core_opts, stop = opts_by_len[key]
            group_prompts = [prompts[i] for i in members]
            texts: dict[int, list[str]] = {}
            callback = self._batch_stop_callback(group_prompts, core_opts, stop, texts) if stop else None
            raw = self._core.generate(group_prompts, core_opts, callback)
            for seq, r in enumerate(raw):
                tokens = r["tokens"]
                if stop:
                    text = "".join(texts.get(seq, []))
                else:
                    text = self._new_text(group_prompts[r["prompt_index"]],
                                          tokens[:-1] if r["finish_reason"] == "eos" else tokens)
                g = Generation(
                    text=text, token_ids=list(tokens), finish_reason=r["finish_reason"],
                    logprobs=list(r["logprobs"]) if core_opts.logprobs else None,
                    top_logprobs=[[(int(t), float(v)) for t, v in row] for row in r["top_logprobs"]]
                    if core_opts.top_logprobs > 0 else None,
                    score=float(r["score"]) if core_opts.num_beams > 1 else None,
                    prompt_token_ids=list(group_prompts[r["prompt_index"]]),
                )
                results[members[r["prompt_index"]]].append(g)
        return results

    def _batch_stop_callback(self, prompts, core_opts, stop: list[str], texts: dict[int, list[str]]):
        """The core's callback for a batch with stop strings: sequence i continues prompt
        i // num_return_sequences; its final text pieces collect in texts[i]."""
        per_seq = {}

        def on_token(seq: int, token: int) -> bool:
            if seq not in per_seq:
                texts[seq] = []
                prompt = prompts[seq // core_opts.num_return_sequences]
                per_seq[seq] = self._text_callback(prompt, core_opts, stop, texts[seq].append, lambda: False)
            return per_seq[seq](token)

        return on_token

    def _new_text(self, prompt: list[int], new: list[int]) -> str:
        """The text the new tokens add after the prompt. Decoding them alone would lose
        what depends on context (a sentencepiece tokenizer's leading space), and streaming
        decodes with the prompt as prefix, so both paths agree."""
        if not new:
            return ""
        before = self.tokenizer.decode(prompt)
        both = self.tokenizer.decode(list(prompt) + list(new))
        return both[len(before):] if both.startswith(before) else self.tokenizer.decode(new)

    def _text_callback(self, ids, core_opts, stop: list[str], emit, cancelled):
        """A per-token callback for the core: detokenizes incrementally, finds stop strings
        across token boundaries, and emits only text that is final."""
        decoder = IncrementalDecoder(self.tokenizer, skip_special_tokens=True, prefix_ids=ids)
        matcher = StopMatcher(stop) if stop else None
        eos = set(core_opts.eos_token_ids)
        remaining = [core_opts.max_new_tokens]

        def on_token(token: int) -> bool:
            remaining[0] -= 1
            text = "" if token in eos else decoder.push(token)
            last = token in eos or remaining[0] <= 0
            if last:
                text += decoder.flush()
            stopped = False
            if matcher is not None:
                text, stopped = matcher.feed(text)
                if last and not stopped:
                    text += matcher.flush()
            if text:
                emit(text)
            return stopped or cancelled()

        return on_token

    def _stream(self, ids, core_opts, stop: list[str]) -> Iterator[str]:
        # The decode loop runs in a worker thread (the core releases the GIL); pieces come
        # back through a queue. Closing the iterator early stops the loop at the next token.
        q: queue.Queue = queue.Queue()
        cancel = threading.Event()
        done = object()
        on_token = self._text_callback(ids, core_opts, stop, q.put, cancel.is_set)

        def work():
            try:
                self._core.generate([ids], core_opts, lambda seq, tok: on_token(tok))
                q.put(done)
            except BaseException as e:  # re-raised in the consumer
                q.put(e)

        worker = threading.Thread(target=work, name="llmos-stream", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            worker.join()


def _prequantized_roles(locations: dict[str, str]) -> dict:
    """For a checkpoint written by llmos.quantize: {(role, layer): (file, base name, type,
    group)} and "__quant__"; {} for any other checkpoint."""
    from .errors import SafetensorsError

    out: dict = {}
    for file in sorted(set(locations.values())):
        _, meta = _core.safetensors_read_header(file)
        if "llmos_format" not in meta:
            continue
        if meta["llmos_format"] != "1":
            raise SafetensorsError(f"{file}: llmos_format {meta['llmos_format']!r} is newer than this llmos reads (1)",
                                   file=file, field="llmos_format")
        try:
            entries = json.loads(meta["llmos_quantized"])
            for role, layer, qtype, group in entries:
                base = f"llmos.{role}" + (f".{layer}" if layer >= 0 else "")
                out[(role, int(layer))] = (file, base, int(qtype), int(group))
            out["__quant__"] = meta["llmos_quant"]
        except (KeyError, ValueError, TypeError) as e:
            raise SafetensorsError(f"{file}: metadata field llmos_quantized is malformed ({e})",
                                   file=file, field="llmos_quantized") from None
    return out


def _is_batch(prompt) -> bool:
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(
        isinstance(p, str) or (isinstance(p, (list, tuple, np.ndarray)) and not isinstance(p, str)) for p in prompt)


def load(path: str, dtype: str | None = None, threads: int | None = None, quant: str | None = None,
         adapter: str | None = None) -> Model:
    """Loads a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json).

    dtype: "float32", "bfloat16" or "float16" for the weights (default: the checkpoint's).
    threads: compute threads (default: the number of physical cores).
    quant: quantize the matrices at load: "int8", "int4", "int4-asym", optionally with a
    group size suffix ("int4-g64"; 32 by default).
    A checkpoint that is already quantized loads as it is: one written by llmos.quantize,
    or an AWQ / GPTQ one (`quantization_config` in config.json), whose blocks go straight
    into llmos's int4 / int8 formats (llmos/hf_quant.py; `Model.quant_method` says which).
    quant= may then only repeat the checkpoint's own format (`Model.quant.name`).
    adapter: a LoRA adapter folder (llmos train --lora) merged into the weights first
    (cached under $LLMOS_HOME/cache/merged); an adapter for another base model is refused.

    A folder holding an ONNX decoder (model.onnx, decoder_model_merged.onnx, genai_config.json)
    and no safetensors runs through onnxruntime instead: see llmos.onnx.OnnxModel.
    `path` may also name a model in the local registry (`llmos ls`).
    """
    from . import registry
    from .onnx.layout import is_onnx_model

    path = registry.resolve(path)
    if adapter is not None:
        from .lora import merged

        path = merged(path, os.fspath(adapter))
    if is_onnx_model(path):
        from .onnx.runtime import OnnxModel

        return OnnxModel(path, dtype=dtype, threads=threads)
    return Model(path, dtype=dtype, threads=threads, quant=quant)
