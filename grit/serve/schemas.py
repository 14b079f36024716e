"""Request bodies of the OpenAI API routes grit serves, as pydantic models (validation errors become 400s).

Fields OpenAI defines that grit cannot honour (``n > 1``, logprobs, penalties, logit bias, tools and functions, a
JSON response format, audio) are refused with a message rather than ignored: a client that asks for them would
otherwise get silently different output. Each is accepted at its neutral value (``logprobs: false``, ``tools: []``,
``response_format: {"type": "text"}``...), which some clients send by default. Any other field is a 400 naming it
(``extra="forbid"``): a field grit does not know is one it does not honour. Numbers are bounded (a seed to what the
sampler takes, stop strings in count and length) before any model code runs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grit.generation import SEED_MAX, SEED_MIN
from grit.rag.modes import CACHE_MODES

MAX_STOPS = 4  # OpenAI's limit
MAX_STOP_CHARS = 64  # a stop string longer than this is a prompt, not a delimiter (and costs the matcher per char)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_stops(value: str | list[str] | None) -> str | list[str] | None:
    stops = [value] if isinstance(value, str) else (value or [])
    if len(stops) > MAX_STOPS:
        raise ValueError(f"at most {MAX_STOPS} stop sequences are allowed, got {len(stops)}")
    for i, stop in enumerate(stops):
        if len(stop) > MAX_STOP_CHARS:
            raise ValueError(f"stop[{i}] has {len(stop)} characters; at most {MAX_STOP_CHARS} are allowed")
    return value


def refuse_unless(value: Any, neutral: tuple, message: str) -> Any:
    """``value`` if it is one of the ``neutral`` values (what asking for nothing looks like), else a ValueError."""
    if value not in neutral:
        raise ValueError(message)
    return value


class EmbeddingRequest(Strict):
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    # grit extension: the embedding instruction (GritLM format); the server's default when absent
    instruction: str | None = None


class TextPart(BaseModel):
    # Other part types carry their own fields (image_url, input_audio, file): allowed here so the validator below
    # can say what is wrong ("only text"), instead of naming a field.
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def only_text(self) -> TextPart:
        if self.type != "text" or self.text is None:
            raise ValueError(f"only text content is supported, got a {self.type!r} part")
        return self


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # a participant's name: OpenAI's field, which grit's chat templates do not render

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content)
        return self.content or ""


class StreamOptions(Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # padding against length side channels; grit's stream has none


class Sampling(Strict):
    """What chat and text completions share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    n: int = 1
    user: str | None = None
    # OpenAI's fields grit does not honour, accepted only at their neutral values (see the module docstring)
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None

    @field_validator("stop")
    @classmethod
    def bounded_stops(cls, v):
        return check_stops(v)

    @model_validator(mode="after")
    def supported(self) -> Sampling:
        if self.n != 1:
            raise ValueError("n must be 1: grit returns one choice per request")
        refuse_unless(self.logprobs, (None, False, 0), "logprobs are not supported")
        refuse_unless(self.top_logprobs, (None, 0), "top_logprobs is not supported (grit returns no logprobs)")
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty and frequency_penalty are not supported (leave them at 0)")
        refuse_unless(self.logit_bias or None, (None,), "logit_bias is not supported")
        refuse_unless(self.store, (None, False), "store is not supported: grit keeps no completions")
        refuse_unless(self.service_tier, (None, "auto", "default"), "service_tier: grit has one tier, 'default'")
        return self


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    functions: list | None = None  # the legacy form of tools
    function_call: str | dict | None = None
    response_format: dict | None = None
    modalities: list[str] | None = None
    audio: dict | None = None
    reasoning_effort: str | None = None
    prediction: dict | None = None
    web_search_options: dict | None = None

    @model_validator(mode="after")
    def no_tools(self) -> ChatRequest:
        refuse_unless(self.tools or None, (None,), "tools are not supported")
        refuse_unless(self.functions or None, (None,), "functions are not supported")
        refuse_unless(self.tool_choice, (None, "none", "auto"), "tool_choice: grit calls no tools")
        refuse_unless(self.function_call, (None, "none", "auto"), "function_call: grit calls no functions")
        kind = (self.response_format or {}).get("type", "text")
        refuse_unless(kind, ("text",), f"response_format {kind!r} is not supported: grit answers in plain text")
        refuse_unless(self.modalities or ["text"], (["text"],), "modalities: grit answers with text only")
        refuse_unless(self.audio, (None,), "audio output is not supported")
        refuse_unless(self.reasoning_effort, (None,), "reasoning_effort is not supported")
        refuse_unless(self.prediction, (None,), "prediction (predicted outputs) is not supported")
        refuse_unless(self.web_search_options, (None,), "web search is not supported")
        return self


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]  # one or several prompts, as text or token ids
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def plain(self) -> CompletionRequest:
        if self.echo or self.suffix:
            raise ValueError("echo and suffix are not supported")
        refuse_unless(self.best_of, (None, 1), "best_of must be 1: grit returns one choice per request")
        return self


class RagRequest(Strict):
    """grit's RAG route: retrieve ``k`` chunks from the served index and answer with the cache mode."""

    question: str
    k: int = Field(1, ge=1, le=20)
    cache: str | None = None
    recompute_ratio: float = Field(0.0, ge=0, le=1)  # share of cached tokens recomputed across documents
    model: str | None = None
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False

    @field_validator("stop")
    @classmethod
    def bounded_stops(cls, v):
        return check_stops(v)

    @field_validator("cache")
    @classmethod
    def known_mode(cls, v):
        if v is not None and v not in CACHE_MODES:
            raise ValueError(f"unknown cache mode {v!r}; expected one of {', '.join(CACHE_MODES)}")
        return v
