"""Which rows of a data file are held out of training, so that evaluation scores examples the model never saw.

Some shared files serve both sides (GSM8K and the P3 mix train the generative loss and are scored for perplexity
and instruction following; the NLI triplets and AdversarialQA may train the contrastive loss). Training with
``data.exclude_heldout`` skips the held-out rows; the evaluation tasks on those files score only them.

A row is held out when a hash of its identity falls in the first ``HELDOUT_FRACTION`` of the hash space. No list of
ids is shipped or kept in step, and the split does not depend on file order, on which other rows a file holds, or on
how a tool sampled it. The identity is the row's ``id`` field when it has one (so a converted copy of a row, e.g. a
QA row rewritten as a contrastive pair that keeps the ``id``, falls on the same side), else the whole row as
canonical JSON.

    >>> is_held_out({"text": ["What is 2 + 2?", "4"]}) in (True, False)
    True
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

HELDOUT_FRACTION = 0.2  # 120 of AdversarialQA's 600 rows, ~1,500 of GSM8K's 7,473: enough for the eval samples


def row_identity(row: dict[str, Any]) -> str:
    """The text the split hashes: ``id`` if the row has one, else the row as canonical JSON."""
    if "id" in row and isinstance(row["id"], str | int) and not isinstance(row["id"], bool):
        return f"id:{row['id']}"
    return "row:" + json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def is_held_out(row: dict[str, Any], fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether ``row`` (a parsed JSON-lines object) belongs to the evaluation side of the split."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    digest = hashlib.sha256(row_identity(row).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64
