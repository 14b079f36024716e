"""The transformers renames grit straddles, in one place.

transformers 5.24 renamed the key/value cache of ``forward`` and ``generate`` (argument and output field) from
``past_key_values`` to ``cache``, warns on the old name, and drops it in 5.40. grit accepts transformers from 5.2,
so it must use whichever name the installed release knows.
"""

from __future__ import annotations

import transformers
from packaging.version import Version

CACHE_ARGUMENT = "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"


def cache_argument(cache) -> dict:
    """Keyword arguments that hand ``cache`` (a transformers Cache, or None) to a model's forward or generate."""
    return {CACHE_ARGUMENT: cache}


def returned_cache(outputs):
    """The Cache a forward with ``use_cache=True`` returned."""
    return getattr(outputs, CACHE_ARGUMENT)


def crop_cache(cache, length: int) -> None:
    """Cut a DynamicCache back to its first ``length`` tokens. ``crop`` took the length to keep up to 5.23; from
    5.24 a positive argument raises and a negative one counts the tokens to remove, which every release reads."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
