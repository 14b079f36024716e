"""Everything `grit serve` can be told, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """Server settings (the command line fills these; ``create_app`` reads only this).

    Limits exist so one client cannot take the server down: each is checked before any model work, and a request
    over a limit gets a 4xx error that names the limit.
    """

    host: str = "127.0.0.1"  # loopback by default: exposing a model to a network is a decision, not a default
    port: int = 8000
    model_name: str = ""  # the id clients pass as `model`; "" = the model folder's name
    api_key: str | None = None  # when set, every /v1 route needs `Authorization: Bearer <key>`
    max_pending: int = 64  # requests inside at once; the next gets 503 + Retry-After
    retry_after_s: int = 1
    max_inputs: int = 2048  # texts per embeddings request (OpenAI's limit)
    max_input_tokens: int = 0  # tokens per embedding input; 0 = the model's context length
    max_tokens_cap: int = 2048  # the largest max_tokens a generation request may ask for
    max_prompts: int = 64  # prompts per text completions request (answered together, see generate_batch_size)
    generate_batch_size: int = 8  # prompts decoded together: ~2x the prompts/s of one at a time on a 2-core CPU
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch_texts: int = 256  # texts one embedding batch may gather from queued requests
    batch_wait_ms: float = 10.0  # how long a batch that has the model waits for more requests
    embed_batch_size: int = 32  # texts per forward pass inside a batch
    default_instruction: str = ""  # embedding instruction when a request names none
    rag_cache: str = "doc"  # cache mode of the RAG route when a request names none
    log_requests: bool = True
    # Connections (grit.serve.connections): a request must arrive whole (headers and body) within
    # request_timeout_s; an idle kept-alive connection is closed after keep_alive_s; past max_connections open
    # connections, a new request gets 503.
    request_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int = 256

    def __post_init__(self) -> None:
        for name in ("max_pending", "max_inputs", "max_tokens_cap", "max_prompts", "generate_batch_size",
                     "max_body_bytes", "max_batch_texts", "embed_batch_size"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.request_timeout_s > 0 or self.keep_alive_s < 1 or self.max_connections < 1:
            raise ValueError(
                f"request_timeout_s must be > 0, keep_alive_s and max_connections >= 1; got {self.request_timeout_s}, "
                f"{self.keep_alive_s}, {self.max_connections}"
            )
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.max_input_tokens < 0:
            raise ValueError(f"max_input_tokens must be >= 0, got {self.max_input_tokens}")
        if self.api_key == "":
            raise ValueError("api_key is empty; leave it unset to serve without a key")
