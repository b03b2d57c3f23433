"""The public model object: logits / generate / stream / chat over a backend.

Everything per token runs in the backend (the C++ core, or onnxruntime for an ONNX model);
this file only prepares inputs once per call and turns token ids into text. Create a Model
with `llmos.load` (runtime/load.py).

Stopping: every call returns within milliseconds of Ctrl-C (KeyboardInterrupt) on the main
thread, and generate / stream / chat take `cancel=`, a CancelToken whose cancel() from any
thread ends the call with CancelledError. The model stays usable after either.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from typing import Iterator, Sequence

import numpy as np

from llmos import _core, limits
from llmos.arch.families import Architecture
from llmos.backends.base import Backend
from llmos.errors import BusyError, ChatTemplateError, ContextLengthError, InvalidInputError
from llmos.runtime.chat import fit_conversation
from llmos.runtime import speculative
from llmos.runtime.generation import Generation, GenerationConfig, to_core_options
from llmos.text.stream import IncrementalDecoder, StopMatcher
from llmos.text.structured import constraint_factory
from llmos.text.tokenizer import Tokenizer

# The token is the core's own, so the flag it sets is read by the decode loop without Python.
CancelToken = _core.CancelToken


class Model:
    """A loaded checkpoint. Create with `llmos.load(path)`.

    Thread-safety: calls may come from several threads. With the C++ core, generate / stream /
    chat (num_beams == 1) all go through one serving engine per model (`model.engine`), so
    calls from many threads are decoded together, one forward per step for all of them.
    """

    def __init__(self, backend: Backend, tokenizer: Tokenizer, config: Architecture,
                 generation_config: GenerationConfig, path: str):
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = config
        self.generation_config = generation_config
        self.path = path
        self._engine = None
        self._engine_lock = threading.Lock()

    # ---- properties -------------------------------------------------------------------

    @property
    def threads(self) -> int:
        return self.backend.threads

    @property
    def isa(self) -> str:
        """Where the kernels run: scalar, avx2, avx512, avx512_vnni, avx512_bf16 or amx for the core;
        onnxruntime:cpu or onnxruntime:cuda for an ONNX model."""
        return self.backend.isa

    @property
    def device(self) -> str:
        """Where the model runs: "cpu" or "cuda:N" (llmos.load's device=)."""
        return self.backend.device

    @property
    def dtype(self) -> str:
        return self.backend.dtype

    @property
    def quant(self):
        """The quantization of the matrices (`.name`, e.g. "int4"), or None for float."""
        return self.backend.quant

    @property
    def quant_method(self) -> str | None:
        """Where pre-quantized blocks came from: "llmos" (llmos.quantize), "awq", "gptq", or None."""
        return getattr(self.backend, "quant_method", None)

    @property
    def prequantized(self) -> bool:
        return getattr(self.backend, "prequantized", False)

    @property
    def engine(self):
        """The serving engine (llmos.Engine) that generate / stream / chat use, made on first
        use. Only for a model on the C++ core."""
        with self._engine_lock:
            if self._engine is None:
                from llmos.runtime.engine import Engine

                # Calls of generate wait rather than fail when many prompts are queued.
                self._engine = Engine(self, max_waiting=_MODEL_ENGINE_WAITING)
            return self._engine

    def use_engine(self, engine) -> None:
        """Makes `engine` (an llmos.Engine over this model, e.g. a server's) the one generate /
        stream / chat use, so that their calls batch with the engine's other requests."""
        if getattr(engine, "_model", None) is not self:
            raise InvalidInputError("use_engine: the engine serves another model", field="engine")
        with self._engine_lock:
            self._engine = engine

    def _uses_engine(self, core_opts) -> bool:
        return self.backend.name == "cpu" and core_opts.num_beams == 1

    def __repr__(self) -> str:
        c = self.config
        return (f"<llmos.Model {c.family} backend={self.backend.name} layers={c.num_layers} hidden={c.hidden_size} vocab={c.vocab_size} "
                f"dtype={self.dtype} quant={self.quant.name if self.quant else None} threads={self.threads} isa={self.isa} path={self.path!r}>")

    # ---- inputs -----------------------------------------------------------------------

    def _ids(self, prompt, *, field: str = "prompt") -> list[int]:
        if isinstance(prompt, (bytes, bytearray, memoryview)):
            # A bytes object is a sequence of ints, which would pass for token ids.
            raise InvalidInputError(f"{field}: bytes are not accepted; pass text (data.decode('utf-8')) or a list "
                                    "of token ids", field=field)
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
        cfg = self.generation_config.merged(user)
        if user.max_length is not None and cfg.max_new_tokens is not None:
            # transformers' rule, and its warning: max_new_tokens wins, even from generation_config.json.
            source = "" if user.max_new_tokens is not None else " (from generation_config.json)"
            warnings.warn(f"both max_new_tokens={cfg.max_new_tokens}{source} and max_length={user.max_length} are "
                          "set; max_new_tokens takes precedence, as in transformers", UserWarning, stacklevel=3)
        return cfg, explicit

    # ---- API --------------------------------------------------------------------------

    def logits(self, token_ids) -> np.ndarray:
        """[n_tokens, vocab] float32 logits for every position, computed in a fresh context."""
        ids = self._ids(token_ids, field="token_ids")
        return self.backend.logits(np.asarray(ids, dtype=np.int64))

    def generate(self, prompt, generation_config: GenerationConfig | None = None, *,
                 cancel: CancelToken | None = None, draft_model: "Model | None" = None, **options):
        """Continues `prompt`: a string or a list of token ids.

        Options: every field of llmos.GenerationConfig (transformers' names: max_new_tokens,
        do_sample, temperature, top_k, top_p, num_beams, repetition_penalty, ... plus
        OpenAI's presence_penalty, frequency_penalty, logit_bias, stop, logprobs, seed).
        Unset options take the checkpoint's generation_config.json, then transformers'
        defaults.

        Returns a Generation; a list of prompts gives a list, decoded together (one forward
        per step for all of them); num_return_sequences > 1 gives a list per prompt.
        cancel: a CancelToken; its cancel() from another thread ends the call (CancelledError).
        draft_model (another llmos.Model with the same tokenizer) or prompt_lookup_num_tokens=N:
        speculative decoding (llmos.runtime.speculative), same output, fewer target forwards.
        """
        _check_cancel(cancel)
        batch = _is_batch(prompt)
        if batch:
            limits.check("max_batch", len(prompt), what="number of prompts")
        cfg, explicit = self._config(generation_config, options)
        if batch:
            per = max(_int_or_1(cfg.get("num_beams")), _int_or_1(cfg.get("num_return_sequences")))
            limits.check("max_sequences", len(prompt) * per,
                         what="sequences (prompts x max(num_beams, num_return_sequences))")
        prompts = [self._ids(p) for p in prompt] if batch else [self._ids(prompt)]
        per_prompt = self._decode(prompts, cfg, explicit, cancel, speculative.speculation_for(self, draft_model, cfg))
        out = [r[0] if len(r) == 1 and (cfg.get("num_return_sequences") == 1) else r for r in per_prompt]
        return out if batch else out[0]

    def stream(self, prompt, generation_config: GenerationConfig | None = None, *,
               cancel: CancelToken | None = None, draft_model: "Model | None" = None, **options) -> Iterator[str]:
        """Yields the new text piece by piece as tokens are produced. Every piece is valid
        UTF-8, nothing yielded is later cut by a stop string, and the pieces join into the
        `.text` that generate() returns for the same options and seed. Closing the iterator
        stops the decode loop at once; cancel.cancel() makes the next piece a CancelledError."""
        _check_cancel(cancel)
        if _is_batch(prompt):
            raise InvalidInputError("stream: takes one prompt, not a list", field="prompt")
        ids = self._ids(prompt)
        cfg, explicit = self._config(generation_config, options)
        if cfg.get("num_beams") > 1 or cfg.get("num_return_sequences") > 1:
            raise InvalidInputError("stream: needs num_beams=1 and num_return_sequences=1", field="num_beams")
        core_opts, stop = to_core_options(_core, cfg, len(ids), self.config.vocab_size,
                                          self.config.max_position_embeddings, explicit_limit=explicit)
        spec = speculative.speculation_for(self, draft_model, cfg)
        if spec is not None:
            return self._stream_thread(ids, core_opts, stop, cancel, None, spec)
        return self._stream(ids, core_opts, stop, cancel, self._constraints(cfg, core_opts, 1))

    def chat(self, messages, *, add_generation_prompt: bool = True, stream: bool = False,
             truncate: str | None = None, **options):
        """Renders `messages` with the checkpoint's chat template and generates the reply.

        When the conversation (plus max_new_tokens if given, else one new token) does not fit
        the context: truncate=None or "error" raises ContextLengthError saying how many tokens
        over it is; truncate="oldest" drops the oldest turns (a user message and what follows
        it), keeping the leading system message and the last turn.
        """
        max_new = options.get("max_new_tokens")
        if max_new is None and isinstance(options.get("generation_config"), GenerationConfig):
            max_new = options["generation_config"].max_new_tokens
        reserve = max_new if isinstance(max_new, int) and not isinstance(max_new, bool) and max_new > 0 else 1
        ids, _ = self.fit_chat(messages, reserve=reserve, truncate=truncate,
                               add_generation_prompt=add_generation_prompt)
        return self.stream(ids, **options) if stream else self.generate(ids, **options)

    def fit_chat(self, messages, *, reserve: int, truncate: str | None, need: str | None = None,
                 add_generation_prompt: bool = True, **extra) -> tuple[list[int], list]:
        """(prompt ids, the messages kept) for `messages` rendered with the chat template so that
        `reserve` new tokens still fit the context; truncate as for chat(). `need` replaces the
        default " in the model's context of N with R new token(s)" of the error; `extra` goes to
        the template (tools, ...)."""
        ctx = self.config.max_position_embeddings

        def encode(msgs):
            return self.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=True, **extra)

        encoded = {}  # by length: each candidate history has a different one

        def n_tokens(msgs):
            encoded[len(msgs)] = encode(msgs)
            return len(encoded[len(msgs)])

        kept = fit_conversation(messages, n_tokens, ctx - reserve, truncate=truncate,
                                need=need or f" in the model's context of {ctx} with {reserve} new token(s)")
        return encoded.get(len(kept)) or encode(kept), kept

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = True, tokenize: bool = False, **extra):
        """The prompt text (or ids with tokenize=True) for `messages`, as transformers renders it."""
        if not self.tokenizer.chat_template:
            raise ChatTemplateError(f"{self.path}: the checkpoint has no chat template "
                                    "(tokenizer_config.json 'chat_template' or chat_template.jinja)",
                                    file=self.path, field="chat_template")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **extra)
        return self.tokenizer.encode(text, add_special_tokens=False) if tokenize else text

    # ---- internals --------------------------------------------------------------------

    def _decode(self, prompts: list[list[int]], cfg: GenerationConfig, explicit: bool,
                cancel: CancelToken | None = None, spec=None) -> list[list[Generation]]:
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
        if spec is None and self._uses_engine(next(iter(opts_by_len.values()))[0]):
            return self._decode_engine(prompts, cfg, groups, opts_by_len, cancel)
        results: list[list[Generation]] = [[] for _ in prompts]
        for key, members in groups.items():
            core_opts, stop = opts_by_len[key]
            group_prompts = [prompts[i] for i in members]
            texts: dict[int, list[str]] = {}
            callback = self._batch_stop_callback(group_prompts, core_opts, stop, texts) if stop else None
            constraints = self._constraints(cfg, core_opts, len(group_prompts) * core_opts.num_return_sequences)
            if spec is not None:
                raw = speculative.generate(self.backend.core, spec, group_prompts, core_opts, callback, cancel)
            else:
                raw = self.backend.generate(group_prompts, core_opts, callback, cancel, **constraints)
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
                    speculation=r.get("stats"),
                )
                results[members[r["prompt_index"]]].append(g)
        return results

    def _decode_engine(self, prompts, cfg, groups, opts_by_len, cancel) -> list[list[Generation]]:
        """Every prompt as its own request of the model's engine, all decoded together."""
        reqs: list = [None] * len(prompts)
        try:
            for key, members in groups.items():
                core_opts, stop = opts_by_len[key]
                for i in members:
                    constraints = self._constraints(cfg, core_opts, core_opts.num_return_sequences).get("constraints")
                    reqs[i] = self._submit(prompts[i], core_opts, stop, cancel, constraints, detok=bool(stop))
            results = []
            for ids, req in zip(prompts, reqs):
                gens = req.result()
                gens = gens if isinstance(gens, list) else [gens]
                if not req._stop:  # as the core's loop gives it: the whole text decoded at once
                    for g in gens:
                        g.text = self._new_text(ids, g.token_ids[:-1] if g.finish_reason == "eos" else g.token_ids)
                results.append(gens)
            return results
        except BaseException:
            for req in reqs:
                if req is not None:
                    req.cancel()
            raise

    def _submit(self, ids, core_opts, stop, cancel, constraints=None, *, detok: bool):
        """Submits to the model's engine, waiting while its queue is full."""
        while True:
            try:
                return self.engine._submit_ids(ids, core_opts, stop, cancel, constraints, detok=detok)
            except BusyError as e:
                if cancel is not None and cancel.cancelled():
                    raise
                time.sleep(min(0.05, e.retry_after))

    def _batch_stop_callback(self, prompts, core_opts, stop: list[str], texts: dict[int, list[str]]):
        """The core's callback for a batch with stop strings: sequence i continues prompt
        i // num_return_sequences; its final text pieces collect in texts[i]."""
        per_seq = {}

        def on_token(seq: int, token: int) -> bool:
            if seq not in per_seq:
                texts[seq] = []
                prompt = prompts[seq // core_opts.num_return_sequences]
                per_seq[seq] = self._text_callback(prompt, core_opts, stop, texts[seq].append)
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

    def _text_callback(self, ids, core_opts, stop: list[str], emit):
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
                    # A stop string held back while a longer one might still complete is final now.
                    text += matcher.flush()
                    stopped = matcher.stopped
            if text:
                emit(text)
            return stopped

        return on_token

    def _constraint_factory(self, cfg: GenerationConfig, core_opts):
        """Structured output's ConstraintFactory (one fresh constraint per sequence when
        called), or None when none is asked; every option is checked here."""
        factory = constraint_factory(self.tokenizer, cfg, vocab_size=self.config.vocab_size,
                                     eos_token_ids=core_opts.eos_token_ids)
        if factory is not None and core_opts.num_beams > 1:
            raise InvalidInputError(f"{factory.field}: structured output needs num_beams=1", field=factory.field)
        return factory

    def _constraints(self, cfg: GenerationConfig, core_opts, n_seq: int) -> dict:
        """The backend's `constraints` argument ({} without structured output)."""
        factory = self._constraint_factory(cfg, core_opts)
        return {} if factory is None else {"constraints": [factory() for _ in range(n_seq)]}

    def _stream(self, ids, core_opts, stop: list[str], cancel: CancelToken | None,
                constraints: dict | None = None) -> Iterator[str]:
        if self._uses_engine(core_opts):
            return self._stream_engine(ids, core_opts, stop, cancel, (constraints or {}).get("constraints"))
        return self._stream_thread(ids, core_opts, stop, cancel, constraints)

    def _stream_engine(self, ids, core_opts, stop, cancel, constraints) -> Iterator[str]:
        # Closing the iterator (or an exception in the consumer, Ctrl-C included) cancels the
        # request, which leaves the engine's batch before its next step.
        req = self._submit(ids, core_opts, stop, cancel, constraints, detok=True)
        try:
            for piece in req:
                if piece.text:
                    yield piece.text
        finally:
            req.cancel()

    def _stream_thread(self, ids, core_opts, stop: list[str], cancel: CancelToken | None,
                       constraints: dict | None = None, spec=None) -> Iterator[str]:
        # The decode loop runs in a worker thread (the core releases the GIL); pieces come
        # back through a queue. The loop's token is a child of the caller's, cancelled when
        # the iterator is closed or the consumer raises (Ctrl-C in q.get() included), so the
        # worker is done within milliseconds, even in the middle of a long prefill.
        q: queue.Queue = queue.Queue()
        own = CancelToken(cancel)
        done = object()
        on_token = self._text_callback(ids, core_opts, stop, q.put)

        def work():
            try:
                if spec is not None:
                    speculative.generate(self.backend.core, spec, [ids], core_opts, lambda seq, tok: on_token(tok), own)
                else:
                    self.backend.generate([ids], core_opts, lambda seq, tok: on_token(tok), own, **(constraints or {}))
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
            own.cancel()
            worker.join()


# Requests the model's own engine queues before generate() waits to submit more.
_MODEL_ENGINE_WAITING = 1 << 16


def _check_cancel(cancel) -> None:
    if cancel is not None and not isinstance(cancel, CancelToken):
        raise InvalidInputError(f"cancel: expected an llmos.CancelToken or None, got {type(cancel).__name__}",
                                field="cancel")


def _int_or_1(value) -> int:
    """An option's value for sizing before it is checked (to_core_options checks and names it)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _is_batch(prompt) -> bool:
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(
        isinstance(p, str) or (isinstance(p, (list, tuple, np.ndarray)) and not isinstance(p, str)) for p in prompt)
