"""One process serving a GRIT model's embeddings and generation over an OpenAI-compatible HTTP API."""

from grit.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(*args, **kwargs):
    """See ``grit.serve.app.create_app`` (imported on use: FastAPI is only needed by the server)."""
    from grit.serve.app import create_app as create

    return create(*args, **kwargs)
