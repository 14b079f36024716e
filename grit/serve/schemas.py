"""Request bodies of the OpenAI API routes grit serves, as pydantic models (validation errors become 400s).

Fields OpenAI defines that grit cannot honour (``n > 1``, ``logprobs``, penalties, tools, non-text content) are
refused with a message rather than ignored: a client that asks for them would otherwise get silently different
output. Unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grit.rag.answer import CACHE_MODES


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EmbeddingRequest(Lenient):
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    # grit extension: the embedding instruction (GritLM format); the server's default when absent
    instruction: str | None = None


class TextPart(Lenient):
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def only_text(self) -> TextPart:
        if self.type != "text" or self.text is None:
            raise ValueError(f"only text content is supported, got a {self.type!r} part")
        return self


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content)
        return self.content or ""


class StreamOptions(Lenient):
    include_usage: bool = False


class Sampling(Lenient):
    """What chat and text completions share."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    n: int = 1
    user: str | None = None
    logprobs: bool | int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @field_validator("stop")
    @classmethod
    def at_most_four_stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return v

    @model_validator(mode="after")
    def supported(self) -> Sampling:
        if self.n != 1:
            raise ValueError("n must be 1: grit returns one choice per request")
        if self.logprobs:
            raise ValueError("logprobs are not supported")
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty and frequency_penalty are not supported (leave them at 0)")
        return self


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list | None = None

    @model_validator(mode="after")
    def no_tools(self) -> ChatRequest:
        if self.tools:
            raise ValueError("tools are not supported")
        return self


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]  # one or several prompts, as text or token ids
    echo: bool = False
    suffix: str | None = None

    @model_validator(mode="after")
    def plain(self) -> CompletionRequest:
        if self.echo or self.suffix:
            raise ValueError("echo and suffix are not supported")
        return self


class RagRequest(Lenient):
    """grit's RAG route: retrieve ``k`` chunks from the served index and answer with the cache mode."""

    question: str
    k: int = Field(1, ge=1, le=20)
    cache: str | None = None
    model: str | None = None
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False

    @field_validator("cache")
    @classmethod
    def known_mode(cls, v):
        if v is not None and v not in CACHE_MODES:
            raise ValueError(f"unknown cache mode {v!r}; expected one of {', '.join(CACHE_MODES)}")
        return v
