"""Everything `grit serve` can be told, in one place: each field's type, default and help are written once, and the
command line is built from them (``grit.cli.serve``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from grit.rag.modes import CACHE_MODES, CacheMode

# grit.decode_step.step_for's kinds, named here so that `grit serve --help` needs no torch (a test checks both agree).
DecodeStep = Literal["auto", "llama", "transformers"]


def opt(default: Any, help: str, *, flag: str | None = None, cli: bool = True) -> Any:
    """A field with its command-line help (``grit serve --help`` is built from these); ``flag`` when the option's
    name is not the field's, ``cli=False`` for settings the command line does not offer as they are."""
    return field(default=default, metadata={"help": help, "flag": flag, "cli": cli})


def choices_of(tp: Any) -> tuple | None:
    """The choices of a ``Literal`` field type, else None."""
    return get_args(tp) or None


@dataclass
class ServeConfig:
    """Server settings (the command line fills these; ``create_app`` reads only this).

    Limits exist so one client cannot take the server down: each is checked before any model work, and a request
    over a limit gets a 4xx error that names the limit.
    """

    host: str = opt("127.0.0.1", "address to bind (default: loopback only; a network address needs an API key)")
    port: int = opt(8000, "port to listen on")
    model_name: str = opt("", "the model id clients send (default: the model folder's name)")
    api_key: str | None = opt(None, "", cli=False)  # from --api-key, --api-key-file or $GRIT_API_KEY (grit.cli.serve)
    max_pending: int = opt(64, "requests in progress at once; more get 503 with Retry-After")
    retry_after_s: int = opt(1, "the Retry-After of a 503", cli=False)
    admission_wait_s: float = opt(
        10.0, "seconds a request waits in line (first come, first served) when max-pending are in; then 503"
    )
    max_inputs: int = opt(2048, "texts per embeddings request (OpenAI's limit)")
    # One embedding input is one bidirectional forward pass under the model lock, which cannot be split; measured on
    # 2 vCPUs of an AVX-512 BF16 AMD EPYC (SmolLM2-135M, float32; bench/long_input.py): 2,048 tokens 6 s, 4,096
    # 19 s, 8,000 55 s.
    max_input_tokens: int = opt(
        2048, "tokens per embedding input; one input holds the model for its whole pass (0: the context length)"
    )
    max_tokens_cap: int = opt(2048, "the largest max_tokens a generation request may ask for")
    max_prompts: int = opt(64, "prompts per completions request (decoded together)")
    max_decode_batch: int = opt(
        32, "generations decoded together, one forward pass per token for all (continuous batching); 1: in turn"
    )
    decode_threads: int = opt(
        0,
        "CPU threads per decoding step (0: grit.hardware.decode_threads, 1 on up to 4 CPUs: robust beside other "
        "busy processes; all threads are ~1.2x faster on a machine of its own)",
    )
    decode_step: DecodeStep = opt(
        "auto",
        "how a decoding step is computed: llama (grit's step for Llama-family models: the model's own modules "
        "without transformers' per-token machinery), transformers (the model's forward), auto (llama where it can)",
    )
    generate_batch_size: int = opt(8, "prompts of one request decoded together where continuous batching is off")
    metrics: bool = opt(True, "serve GET /metrics (Prometheus text format, behind the API key)")
    max_body_bytes: int = opt(16 * 1024 * 1024, "the largest request body, in bytes")
    max_batch_texts: int = opt(256, "texts one embedding batch gathers from queued requests")
    batch_wait_ms: float = opt(10.0, "how long a batch that has the model waits for more requests")
    embed_batch_size: int = opt(32, "texts per forward pass inside an embedding batch")
    default_instruction: str = opt("", "embedding instruction when a request names none", flag="--instruction")
    rag_cache: CacheMode = opt("doc", "RAG cache mode when a request names none")
    log_requests: bool = opt(True, "one log line per request", cli=False)
    # Connections (grit.serve.connections): a request must arrive whole (headers and body) within
    # request_timeout_s; an idle kept-alive connection is closed after keep_alive_s; past max_connections open
    # connections, a new request gets 503.
    request_timeout_s: float = opt(10.0, "seconds a request may take to arrive whole (headers and body); then "
                                   "the connection closes", flag="--request-timeout")  # fmt: skip
    keep_alive_s: int = opt(5, "seconds an idle kept-alive connection stays open", flag="--keep-alive")
    max_connections: int = opt(256, "open connections at once; a request past them gets 503")

    def __post_init__(self) -> None:
        for name in ("max_pending", "max_inputs", "max_tokens_cap", "max_prompts", "generate_batch_size",
                     "max_decode_batch", "max_body_bytes", "max_batch_texts", "embed_batch_size"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.request_timeout_s > 0 or self.keep_alive_s < 1 or self.max_connections < 1:
            raise ValueError(
                f"request_timeout_s must be > 0, keep_alive_s and max_connections >= 1; got {self.request_timeout_s}, "
                f"{self.keep_alive_s}, {self.max_connections}"
            )
        if self.admission_wait_s < 0:
            raise ValueError(f"admission_wait_s must be >= 0, got {self.admission_wait_s}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.decode_threads < 0:
            raise ValueError(f"decode_threads must be >= 0 (0: the default for this CPU), got {self.decode_threads}")
        steps = choices_of(DecodeStep)
        if self.decode_step not in steps:
            raise ValueError(f"decode_step must be one of {', '.join(steps)}, got {self.decode_step!r}")
        if self.max_input_tokens < 0:
            raise ValueError(f"max_input_tokens must be >= 0, got {self.max_input_tokens}")
        if self.rag_cache not in CACHE_MODES:
            raise ValueError(f"rag_cache must be one of {', '.join(CACHE_MODES)}, got {self.rag_cache!r}")
        if self.api_key == "":
            raise ValueError("api_key is empty; leave it unset to serve without a key")
