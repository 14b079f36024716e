"""grit: one language model for text embedding and text generation (GRIT), with KV-cache reuse for fast RAG."""

from grit.formats import PromptFormat
from grit.loading import ModelNotFoundError, UnsupportedModelError
from grit.model import GritModel

__all__ = ["GritModel", "ModelNotFoundError", "PromptFormat", "UnsupportedModelError"]
__version__ = "0.1.0"
