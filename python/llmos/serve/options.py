"""From an OpenAI request to what the engine takes: token ids checked against the model
(vocabulary, context, max_tokens), and the decoding options under GenerationConfig's names.

A field the request leaves out takes the model's own default (generation_config.json, as
`Model.generate` does, and as vLLM serves by default), not OpenAI's: temperature 0 is greedy."""

from __future__ import annotations

from llmos.runtime.generation import GenerationConfig
from llmos.serve.api_errors import APIError, invalid

# The structured-output options of this build's GenerationConfig (constrained decoding adds
# them); a request for one it lacks is refused by name.
_STRUCTURED = {"response_format", "guided_json", "guided_regex", "guided_grammar"}
STRUCTURED_AVAILABLE = _STRUCTURED <= set(GenerationConfig.field_names())


def structured_option(o: dict, name: str, value) -> None:
    if value is None:
        return
    if not STRUCTURED_AVAILABLE:
        raise invalid(f"{name}: constrained decoding is not in this build of llmos", param=name, code="unsupported")
    o[name] = value


def sampling_options(req) -> dict:
    """GenerationConfig options for the decoding fields of a request (protocol._Sampling)."""
    o: dict = {}
    if req.temperature is not None:
        if req.temperature == 0:
            o["do_sample"] = False
        else:
            o.update(do_sample=True, temperature=float(req.temperature))
    if req.top_p is not None:
        o["top_p"] = float(req.top_p)
    if req.top_k is not None:
        o["top_k"] = max(0, req.top_k)  # vLLM's -1 and transformers' 0 both mean off
    if req.min_p is not None:
        o["min_p"] = float(req.min_p)
    if req.repetition_penalty is not None:
        o["repetition_penalty"] = float(req.repetition_penalty)
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(req, name)
        if value is not None:
            o[name] = float(value)
    if req.seed is not None:
        o["seed"] = req.seed
    if req.stop:
        o["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if req.logit_bias:
        o["logit_bias"] = {int(k): float(v) for k, v in req.logit_bias.items()}
    if req.n > 1:
        o["num_return_sequences"] = req.n
    for name in ("guided_json", "guided_regex", "guided_grammar"):
        structured_option(o, name, getattr(req, name))
    return o


def token_ids(model, prompt, *, param: str, add_special_tokens: bool = True) -> list[int]:
    """A prompt (text or token ids) as ids in the model's vocabulary, or a 400 naming `param`."""
    if isinstance(prompt, str):
        ids = model.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
    else:
        ids = list(prompt)
        vocab = model.config.vocab_size
        for i, t in enumerate(ids):
            if not 0 <= t < vocab:
                raise invalid(f"{param}: token id {t} at index {i} is outside the vocabulary [0, {vocab})",
                              param=param, code="invalid_value")
    if not ids:
        raise invalid(f"{param}: is empty (no tokens)", param=param, code="invalid_value")
    return ids


def check_context(model, n_prompt: int, max_tokens: int | None, *, param: str, max_param: str = "max_tokens") -> None:
    """The prompt, plus max_tokens when given (else one new token), must fit the context."""
    ctx = model.config.max_position_embeddings
    if n_prompt > ctx or (max_tokens is None and n_prompt >= ctx):
        raise APIError(400, f"{param}: {n_prompt} tokens leave no room in the model's context of {ctx} tokens",
                       param=param, code="context_length_exceeded")
    if max_tokens is not None and n_prompt + max_tokens > ctx:
        raise APIError(400, f"{max_param}: the prompt's {n_prompt} tokens plus {max_param}={max_tokens} exceed the "
                            f"model's context of {ctx} tokens (at most {ctx - n_prompt})",
                       param=max_param, code="context_length_exceeded")
