"""OpenAI's wire format for grit's replies: model cards, embedding vectors, chat and text completions whole or as
server-sent event chunks, usage, and RAG documents. Only shapes: nothing here touches the model or a request."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass

import numpy as np

from grit.generation import Generation


def model_card(name: str, created: int, model, rag: bool) -> dict:
    """A ``/v1/models`` entry for ``model`` served as ``name``, with grit's metadata: which model exactly (its
    digest, not its path) and where it runs, resolved."""
    capabilities = ["embeddings", "chat.completions", "completions"] + (["rag"] if rag else [])
    identity = model.identity
    return {"id": name, "object": "model", "created": created, "owned_by": "grit", "capabilities": capabilities,
            "grit": {"model": identity.id, "base": identity.base, "placement": model.placement.as_dict(),
                     "embedding_dim": model.dim, "context_length": model.context_length}}  # fmt: skip


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32 bytes, what the openai client decodes
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.astype(np.float32).tolist()


@dataclass
class Reply:
    """Builds the response objects of one chat or text completion (whole, or chunk by chunk)."""

    model: str
    kind: str  # "chat.completion" or "text_completion"
    prompt_tokens: int

    def __post_init__(self) -> None:
        prefix = "chatcmpl" if self.kind == "chat.completion" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _envelope(self, object: str, choices: list, usage: dict | None = None) -> dict:
        body = {"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}  # fmt: skip

    def _choice(self, text: str | None, finish_reason: str | None, first: bool = False) -> dict:
        if self.kind == "chat.completion":
            delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    def whole(self, results: list[Generation]) -> dict:
        """The response with one choice per result, in order (several: a text completion of several prompts)."""
        choices = []
        for index, result in enumerate(results):
            reason = result.finish_reason if result.finish_reason in ("stop", "length") else "stop"
            if self.kind == "chat.completion":
                choices.append({"index": index, "message": {"role": "assistant", "content": result.text},
                                "logprobs": None, "finish_reason": reason})  # fmt: skip
            else:
                choices.append({"index": index, "text": result.text, "logprobs": None, "finish_reason": reason})
        return self._envelope(self.kind, choices, self.usage(sum(r.completion_tokens for r in results)))

    def chunk(self, text: str | None, finish_reason: str | None = None, first: bool = False) -> dict:
        object = "chat.completion.chunk" if self.kind == "chat.completion" else "text_completion"
        return self._envelope(object, [self._choice(text, finish_reason, first)])

    def usage_chunk(self, completion_tokens: int) -> dict:
        object = "chat.completion.chunk" if self.kind == "chat.completion" else "text_completion"
        return self._envelope(object, [], self.usage(completion_tokens))


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def hit_dict(hit) -> dict:
    return {"id": hit.doc_id, "chunk": hit.number, "score": round(float(hit.score), 6), "title": hit.title,
            "text": hit.text}  # fmt: skip
