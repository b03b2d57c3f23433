"""The request bodies the server accepts, as pydantic models: OpenAI's field names, types and
ranges (a few of vLLM's sampling extensions too). A field outside them, or one OpenAI has and
llmos does not, is a 400 naming it (serve/api_errors.py), before any work is queued.

What these models cannot know (the prompt's length against the model's context, token ids
against its vocabulary) is checked in serve/options.py once the model is known."""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, conlist, field_validator

from llmos.limits import current as current_limits


class _Strict(BaseModel):
    # An unknown field is a typo or an option llmos does not have: refused, never ignored.
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: Optional[StrictBool] = None
    continuous_usage_stats: Optional[StrictBool] = None


_Stop = Union[StrictStr, conlist(StrictStr, max_length=256), None]
_Number = StrictFloat  # accepts integers too, never strings


class _Sampling(_Strict):
    """The decoding fields both endpoints share."""

    model: StrictStr
    max_tokens: Optional[StrictInt] = Field(default=None, ge=0)
    temperature: Optional[_Number] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[_Number] = Field(default=None, gt=0.0, le=1.0)
    n: StrictInt = Field(default=1, ge=1)
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    stop: _Stop = None
    presence_penalty: Optional[_Number] = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[_Number] = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: Optional[Dict[StrictStr, _Number]] = None
    seed: Optional[StrictInt] = Field(default=None, ge=0, le=2**63 - 1)
    user: Optional[StrictStr] = None
    # vLLM's extensions, under the names its clients send.
    top_k: Optional[StrictInt] = Field(default=None, ge=-1)
    min_p: Optional[_Number] = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: Optional[_Number] = Field(default=None, gt=0.0, le=10.0)
    # vLLM's structured output for both routes (the model's constrained decoding checks them).
    guided_json: Union[Dict[str, Any], StrictStr, None] = None
    guided_regex: Optional[StrictStr] = None
    guided_grammar: Optional[StrictStr] = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, v):
        if v is not None:
            for key, bias in v.items():
                if not key.lstrip("-").isdigit():
                    raise ValueError(f"logit_bias keys are token ids, got {key!r}")
                if not -100.0 <= bias <= 100.0:
                    raise ValueError(f"logit_bias[{key}]={bias} is outside [-100, 100]")
        return v


class CompletionRequest(_Sampling):
    prompt: Union[StrictStr, List[StrictStr], List[StrictInt], List[List[StrictInt]]]
    echo: StrictBool = False
    logprobs: Optional[StrictInt] = Field(default=None, ge=0, le=20)
    best_of: Optional[StrictInt] = Field(default=None, ge=1)
    suffix: Optional[StrictStr] = None

    @field_validator("prompt")
    @classmethod
    def _prompt_count(cls, v):
        if isinstance(v, list) and v and not isinstance(v[0], int):
            limit = current_limits().serve_max_prompts
            if len(v) > limit:
                raise ValueError(f"{len(v)} prompts are over the limit of {limit} (llmos.limits.serve_max_prompts)")
        return v


class FunctionCall(_Strict):
    name: StrictStr
    arguments: StrictStr


class ToolCall(_Strict):
    id: Optional[StrictStr] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(BaseModel):
    # Only text parts exist for a text model; other part types are refused by chat.py by name.
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: Optional[StrictStr] = None


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[StrictStr, List[ContentPart], None] = None
    name: Optional[StrictStr] = None
    tool_calls: Optional[List[ToolCall]] = None
    tool_call_id: Optional[StrictStr] = None


class FunctionDefinition(_Strict):
    name: StrictStr = Field(min_length=1, max_length=256)
    description: Optional[StrictStr] = None
    parameters: Optional[Dict[str, Any]] = None
    strict: Optional[StrictBool] = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: StrictStr


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(BaseModel):
    # Passed on whole to the model's constrained decoding, which checks the schema itself.
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]


class ChatRequest(_Sampling):
    messages: List[Message] = Field(min_length=1)
    max_completion_tokens: Optional[StrictInt] = Field(default=None, ge=0)
    logprobs: StrictBool = False
    top_logprobs: Optional[StrictInt] = Field(default=None, ge=0, le=20)
    tools: Optional[List[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[StrictBool] = None
    response_format: Optional[ResponseFormat] = None

    @field_validator("messages")
    @classmethod
    def _message_count(cls, v):
        limit = current_limits().serve_max_messages
        if len(v) > limit:
            raise ValueError(f"{len(v)} messages are over the limit of {limit} (llmos.limits.serve_max_messages)")
        return v

    @field_validator("tools")
    @classmethod
    def _tool_count(cls, v):
        limit = current_limits().serve_max_tools
        if v is not None and len(v) > limit:
            raise ValueError(f"{len(v)} tools are over the limit of {limit} (llmos.limits.serve_max_tools)")
        return v


class TokenizeRequest(_Strict):
    model: StrictStr
    prompt: Optional[StrictStr] = None
    messages: Optional[List[Message]] = None
    add_special_tokens: StrictBool = True
    add_generation_prompt: StrictBool = True


class DetokenizeRequest(_Strict):
    model: StrictStr
    tokens: List[StrictInt]
