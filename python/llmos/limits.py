"""Every resource limit llmos enforces on caller input, in one place.

The server will put llmos in front of strangers, so work a caller asks for (beams, returned
sequences, batch size, stop strings, threads, chat-template rendering, hub downloads...) is
checked against these bounds *before* any of it is spent, and refused with an error naming
the argument, the value and the limit.

Each limit is a field of :class:`Limits`. The process-wide values are ``llmos.limits.LIMITS``;
change them for the whole process with :func:`configure` (``llmos.limits.configure(max_beams=64)``)
or with an environment variable ``LLMOS_LIMIT_<FIELD>`` (``LLMOS_LIMIT_MAX_BEAMS=64``), read
once at import. docs/architecture.md lists each limit and where it is enforced.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields

from llmos.errors import InvalidInputError


@dataclass(frozen=True)
class Limits:
    """Upper bounds on caller-supplied work. Add a field here (with a comment saying what it
    bounds and where it is checked) rather than a constant in the module that checks it."""

    # --- generation (runtime/generation.py) -------------------------------------------------
    # num_beams.
    max_beams: int = 256
    # num_return_sequences (per prompt) and num_beams * num_return_sequences together.
    max_return_sequences: int = 256
    # prompts in one generate() call.
    max_batch: int = 4096
    # number of stop strings, and the characters of all of them together.
    max_stop_strings: int = 256
    max_stop_chars: int = 65536

    # --- generation requests (runtime/model.py) ---------------------------------------------
    # sequences decoded together by one generate() call: prompts x max(num_beams, num_return_sequences).
    max_sequences: int = 4096

    # --- chat templates (text/chat_template.py), per rendering --------------------------------
    # characters produced (every output piece, also into {% set %} blocks and macro bodies), and
    # the length of any one string or list the template builds.
    max_template_chars: int = 1 << 23
    # loop iterations, all loops together.
    max_template_loop_iterations: int = 1_000_000
    # wall-clock seconds, checked at every loop iteration, output piece and call.
    max_template_seconds: float = 10.0
    # bits of any integer the template computes (`**`, `*`).
    max_template_int_bits: int = 1 << 16

    # --- the serving engine (runtime/engine.py, Engine.__init__) ----------------------------
    # max_batch_tokens: tokens stacked in one step (the step's scratch grows to fit them).
    max_engine_batch_tokens: int = 65536
    # kv_memory in bytes: the KV pool is allocated whole when the engine starts.
    max_engine_kv_bytes: int = 1 << 40

    # --- threads (backends/base.py) ---------------------------------------------------------
    # threads= for a model: more than this is refused (the pool is also capped by the host).
    max_threads: int = 1024

    # --- checkpoint files (io/config.py, arch/families.py) ----------------------------------
    # Bytes of a JSON side file read whole into memory (io/config.py read_side_file):
    # config.json and generation_config.json; model.safetensors.index.json (one entry per
    # tensor, so larger); tokenizer_config.json (may carry chat templates and added tokens).
    max_config_bytes: int = 4 << 20
    max_index_bytes: int = 64 << 20
    max_tokenizer_config_bytes: int = 16 << 20
    # num_hidden_layers of a config.json, before the checkpoint's tensors are even looked at
    # (per-layer tables are built from it); the tensors then bound it exactly.
    max_layers: int = 4096
    # Any one dimension of a config.json (hidden_size, intermediate_size, vocab_size, head_dim,
    # attention heads): the rope tables are built from them before the tensors are read.
    max_model_dim: int = 1 << 22

    # --- Hugging Face Hub downloads (registry/hub.py) ---------------------------------------
    # seconds one request may wait to connect, or for its next bytes.
    hub_timeout_s: float = 30.0
    # longest Retry-After waited for; a server asking for more is refused, not slept on.
    hub_max_retry_after_s: float = 60.0
    # tries of one request after a 429, a 5xx, a timeout or a dropped connection.
    hub_max_retries: int = 5
    # pages of a repository's file listing followed (Link: rel="next").
    hub_max_pages: int = 1000
    # files in a repository's listing.
    hub_max_files: int = 100_000
    # bytes of one JSON answer (model info, one page of the listing).
    hub_max_json_bytes: int = 64 << 20
    # a transfer averaging fewer bytes per second than this over hub_rate_window_s is abandoned.
    hub_min_rate_bytes_s: float = 1024.0
    hub_rate_window_s: float = 30.0

    # --- the HTTP server (serve/) -----------------------------------------------------------
    # bytes of one request body (serve/app.py's body cap: Content-Length, then the bytes read).
    serve_max_body_bytes: int = 8 << 20
    # prompts in one /v1/completions request (serve/protocol.py).
    serve_max_prompts: int = 256
    # messages in one /v1/chat/completions request, and tools declared in it (serve/protocol.py).
    serve_max_messages: int = 4096
    serve_max_tools: int = 256

    # --- structured output (text/structured.py) ---------------------------------------------
    # characters of a response_format / guided_json schema, guided_regex or guided_grammar,
    # checked before the grammar is compiled (llguidance's own parser limits bound the rest).
    max_grammar_chars: int = 1 << 20

    # --- apps (apps/) -------------------------------------------------------------------------
    # bytes of an app file (NAME.app.md), checked before it is parsed (apps/spec.py).
    max_app_file_bytes: int = 1 << 20
    # bytes of a json:<schema file> that an app's output names (apps/spec.py).
    max_app_schema_bytes: int = 1 << 20
    # characters of one string input of an app (apps/inputs.py, after a `max:` the app sets).
    max_app_input_chars: int = 1 << 16
    # model replies that may call tools before the app's answer must be text (apps/tools.py).
    max_tool_rounds: int = 4
    # characters of one tool result put back into the conversation (apps/tools.py).
    max_tool_result_chars: int = 8192
    # messages of a chat history passed to an app, before `memory` trims it (apps/app.py).
    max_app_history_messages: int = 1024
    # tests of one app file (apps/spec.py).
    max_app_tests: int = 256

    # --- an app's knowledge (apps/knowledge.py, KnowledgeIndex.build) ------------------------
    # files indexed (a folder is walked only until this is passed).
    knowledge_max_files: int = 10_000
    # bytes read, all files together; a PDF's extracted text counts on top of the file itself.
    knowledge_max_bytes: int = 64 << 20
    # chunks indexed (about 400 characters each).
    knowledge_max_chunks: int = 250_000

    # --- benchmarks (runtime/benchmark.py) --------------------------------------------------
    # reps of `llmos bench` / llmos.runtime.benchmark.bench (the sizes are bounded by the context).
    max_bench_reps: int = 1000

    # --- batch jobs (batch/, `llmos batch`) ----------------------------------------------------
    # bytes of one JSONL input row, checked as the line is read (batch/rows.py); a longer row is an
    # error record, not a failed job.
    max_batch_row_bytes: int = 1 << 20
    # rows decoding at once per engine (--in-flight), rows per output shard (--shard-rows) and
    # Ray actors (--actors), checked before the job starts (cli/batch.py).
    max_batch_in_flight: int = 1024
    max_batch_shard_rows: int = 100_000
    max_batch_actors: int = 1024
    # --- GGUF files (io/gguf.py, GgufFile) --------------------------------------------------
    # tensors in one file's header (checked before the reader maps them).
    gguf_max_tensors: int = 65_536
    # metadata key/value pairs in one file's header.
    gguf_max_metadata: int = 65_536
    # elements of one tensor (1 << 34: a 128k x 128k matrix fits).
    gguf_max_tensor_elements: int = 1 << 34
    # tokens of the vocabulary in tokenizer.ggml.tokens.
    gguf_max_vocab: int = 1 << 21
    # --- speculative decoding (runtime/speculative.py) --------------------------------------
    # drafted tokens verified per target forward (prompt_lookup_num_tokens, num_assistant_tokens).
    # With at most 6, the verifying forward carries at most 7 tokens, under the core's
    # kMinPrefillTokens (8): every token keeps the row kernels plain decoding uses, which is
    # what makes greedy output token-identical.
    max_speculative_tokens: int = 6


def _from_env(base: Limits) -> Limits:
    changes = {}
    for f in fields(base):
        raw = os.environ.get(f"LLMOS_LIMIT_{f.name.upper()}")
        if raw is None:
            continue
        try:
            value = type(getattr(base, f.name))(raw)
        except ValueError:
            raise InvalidInputError(f"LLMOS_LIMIT_{f.name.upper()}={raw!r} is not a number",
                                    field=f.name) from None
        if value <= 0:
            raise InvalidInputError(f"LLMOS_LIMIT_{f.name.upper()} must be positive, got {raw}", field=f.name)
        changes[f.name] = value
    return dataclasses.replace(base, **changes)


LIMITS = _from_env(Limits())


def configure(**changes) -> Limits:
    """Change the process-wide limits (unknown names and non-positive values are refused);
    returns the new :data:`LIMITS`."""
    global LIMITS
    known = {f.name for f in fields(Limits)}
    for name, value in changes.items():
        if name not in known:
            raise InvalidInputError(f"unknown limit {name!r}; known: {', '.join(sorted(known))}", field=name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise InvalidInputError(f"limit {name} must be a positive number, got {value!r}", field=name)
    LIMITS = dataclasses.replace(LIMITS, **changes)
    return LIMITS


def current() -> Limits:
    """The limits in force now (read this at check time, not at import, so configure() applies)."""
    return LIMITS


def check(name: str, value: int, *, what: str | None = None) -> None:
    """Refuse ``value`` above the limit ``name`` with an error naming the argument and the limit."""
    limit = getattr(LIMITS, name)
    if value > limit:
        label = what or name
        raise InvalidInputError(
            f"{label}={value} is over the limit of {limit} (llmos.limits.{name}; raise it with "
            f"llmos.limits.configure({name}=...) or LLMOS_LIMIT_{name.upper()})", field=what or name)
