"""grit: one language model for text embedding and text generation (GRIT), with KV-cache reuse for fast RAG.

The names below are imported when first used (``grit.lazy``), so ``import grit`` and ``grit --help`` stay light:
torch and transformers load with the model.
"""

from grit.lazy import lazy_exports

__version__ = "0.1.0"
_EXPORTS = {
    "GritModel": "grit.model",
    "PromptFormat": "grit.formats",
    "ModelNotFoundError": "grit.loading",
    "UnsupportedModelError": "grit.loading",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
