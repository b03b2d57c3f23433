"""The public model object: load a checkpoint, then logits / generate / stream / chat.

Everything per token runs in the C++ core (llmos._core); this file only prepares inputs
once per call and turns token ids into text.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Iterator, Sequence

import numpy as np

from . import _core
from .chat_template import ChatTemplate
from .checkpoint import resolve, tensor_locations
from .config import ConfigReader, read_json
from .errors import ChatTemplateError, ContextLengthError, InvalidInputError, ModelFileError
from .families import Architecture, family_for
from .generation import Generation, SamplingOptions, normalize_options
from .text_stream import IncrementalDecoder, StopMatcher
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

    def __init__(self, path: str, dtype: str | None = None, threads: int | None = None):
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
        self.generation_defaults = self._generation_defaults(path, cfg)

        locations = tensor_locations(path)
        sources = []
        for role, layer, parts in family.tensors(self.config):
            what = role if layer < 0 else f"{role} of layer {layer}"
            resolved = []
            for name, transpose in parts:
                file, tensor = resolve(locations, name, path, what)
                resolved.append((file, tensor, transpose))
            sources.append((role, layer, resolved))
        self._core = _core.Model(self.config.to_core(_core), sources, dtype, threads)
        self._template: ChatTemplate | None = None

    @staticmethod
    def _generation_defaults(path: str, cfg: ConfigReader) -> dict:
        """Decoding defaults from generation_config.json (as transformers applies them)."""
        gen = read_json(os.path.join(path, "generation_config.json"), required=False) or {}
        out = {k: gen[k] for k in ("do_sample", "temperature", "top_k", "top_p", "max_new_tokens") if gen.get(k) is not None}
        eos = gen.get("eos_token_id", cfg.raw("eos_token_id"))
        if eos is not None:
            out["eos_token_id"] = eos
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
                f"dtype={self.dtype} threads={self.threads} isa={self.isa} path={self.path!r}>")

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

    def _options(self, ids: list[int], kwargs: dict) -> SamplingOptions:
        explicit_max = kwargs.get("max_new_tokens") is not None
        opts = normalize_options(self.generation_defaults, kwargs, self.config.vocab_size)
        room = self.config.max_position_embeddings - len(ids)
        if opts.max_new_tokens > room:
            if explicit_max:
                raise ContextLengthError(
                    f"max_new_tokens: prompt of {len(ids)} tokens plus {opts.max_new_tokens} new tokens exceeds "
                    f"the model's context of {self.config.max_position_embeddings} tokens", field="max_new_tokens")
            opts.max_new_tokens = room  # a default limit shrinks to what fits
        return opts

    # ---- API --------------------------------------------------------------------------

    def logits(self, token_ids) -> np.ndarray:
        """[n_tokens, vocab] float32 logits for every position, computed in a fresh context."""
        ids = self._ids(token_ids, field="token_ids")
        return self._core.logits(np.asarray(ids, dtype=np.int64))

    def generate(self, prompt, **options) -> Generation | list[Generation]:
        """Continues `prompt` (a string or token ids; a list of them gives a list of results).

        Options: max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop (string or
        list), eos_token_id (id or list; [] disables EOS; default: the checkpoint's).
        Unset options take the checkpoint's generation_config.json values.
        """
        if _is_batch(prompt):
            return [self.generate(p, **options) for p in prompt]
        ids = self._ids(prompt)
        opts = self._options(ids, options)
        if not opts.stop:
            tokens, finish = self._run(ids, opts, None)
            return self._result(ids, tokens, finish, self.tokenizer.decode(_drop_eos(tokens, opts, finish)))
        pieces: list[str] = []
        tokens, finish = self._run(ids, opts, self._text_callback(ids, opts, pieces.append, lambda: False))
        return self._result(ids, tokens, finish, "".join(pieces))

    def stream(self, prompt, **options) -> Iterator[str]:
        """Yields the new text piece by piece as tokens are produced. Every piece is valid
        UTF-8, nothing yielded is later cut by a stop string, and the pieces join into the
        `.text` that generate() returns for the same options and seed."""
        if _is_batch(prompt):
            raise InvalidInputError("stream: takes one prompt, not a list", field="prompt")
        ids = self._ids(prompt)
        opts = self._options(ids, options)
        return self._stream(ids, opts)

    def chat(self, messages, *, add_generation_prompt: bool = True, stream: bool = False, **options):
        """Renders `messages` with the checkpoint's chat template and generates the reply."""
        ids = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
        return self.stream(ids, **options) if stream else self.generate(ids, **options)

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = True, tokenize: bool = False, **extra):
        """The prompt text (or ids with tokenize=True) for `messages`, as transformers renders it."""
        if self._template is None:
            source = self.tokenizer.chat_template
            if not source:
                raise ChatTemplateError(f"{self.path}: the checkpoint has no chat template "
                                        "(tokenizer_config.json 'chat_template' or chat_template.jinja)",
                                        file=self.path, field="chat_template")
            self._template = ChatTemplate(source, bos_token=self.tokenizer.bos_token, eos_token=self.tokenizer.eos_token,
                                          origin=self.tokenizer.chat_template_origin)
        text = self._template.render(messages, add_generation_prompt=add_generation_prompt, **extra)
        return self.tokenizer.encode(text, add_special_tokens=False) if tokenize else text

    # ---- internals --------------------------------------------------------------------

    def _run(self, ids, opts: SamplingOptions, on_token):
        return self._core.generate(np.asarray(ids, dtype=np.int64), opts.max_new_tokens, opts.eos_token_ids,
                                   opts.do_sample, opts.temperature, opts.top_k, opts.top_p, opts.seed, on_token)

    def _result(self, ids, tokens, finish, text) -> Generation:
        return Generation(text=text, token_ids=list(tokens), finish_reason=finish, prompt_token_ids=list(ids))

    def _text_callback(self, ids, opts: SamplingOptions, emit, cancelled):
        """A per-token callback for the core: detokenizes incrementally, finds stop strings
        across token boundaries, and emits only text that is final."""
        decoder = IncrementalDecoder(self.tokenizer, skip_special_tokens=True, prefix_ids=ids)
        matcher = StopMatcher(opts.stop) if opts.stop else None
        eos = set(opts.eos_token_ids)
        remaining = [opts.max_new_tokens]

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

    def _stream(self, ids, opts: SamplingOptions) -> Iterator[str]:
        # The decode loop runs in a worker thread (the core releases the GIL); pieces come
        # back through a queue. Closing the iterator early stops the loop at the next token.
        q: queue.Queue = queue.Queue()
        cancel = threading.Event()
        done = object()

        def work():
            try:
                self._run(ids, opts, self._text_callback(ids, opts, q.put, cancel.is_set))
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


def _is_batch(prompt) -> bool:
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(
        isinstance(p, str) or (isinstance(p, (list, tuple, np.ndarray)) and not isinstance(p, str)) for p in prompt)


def _drop_eos(tokens, opts: SamplingOptions, finish: str):
    return tokens[:-1] if finish == "eos" else tokens


def load(path: str, dtype: str | None = None, threads: int | None = None) -> Model:
    """Loads a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json).

    dtype: "float32", "bfloat16" or "float16" for the weights (default: the checkpoint's).
    threads: compute threads (default: the number of physical cores).
    """
    return Model(path, dtype=dtype, threads=threads)
