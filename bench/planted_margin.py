"""How firmly a model answers from a document that contradicts its prior (issue 22): the replaced-document check of
tests/test_default_model.py as a number instead of a pass or fail.

    python bench/planted_margin.py default runs/staged/candidate ...

The slow test asks "Which city is the Zephyr lab in?" over a document saying Lisbon, and fails when the answer
without a cache says "Porto". A greedy answer flips on small changes of the model, so a run's checkpoints pass and
fail with no trend to read. Here, for the same prompt (``RAG`` in ``cache="none"``: the document inside the
question's turn, read in one causal pass), the teacher-forced log-probability of four answers: the bare city, right
and wrong, and a sentence naming each (``--layout blocks``: the same over the layout a cache-aware stage trains
on). The shipped v2 adapter prefers the sentence with the right city by ~7 nats, but its bare first token already
leans to the wrong one; a model that drifts towards bare answers then says "Porto". Plain weights, float32, on the
CPU: the numbers do not depend on the machine beyond round-off.
"""

from __future__ import annotations

import argparse

from grit import GritModel
from grit.rag import RAG, Document, Index

DOCUMENTS = [
    Document("bread", "Sourdough bread rises because wild yeast ferments the dough overnight.", ""),
    Document("lab", "The Zephyr lab is in the city of Lisbon, in Portugal.", ""),
]
QUESTION = "Which city is the Zephyr lab in?"
ANSWERS = ["Lisbon", "Porto", "The Zephyr lab is in Lisbon.", "The Zephyr lab is in Porto."]


def answer_log_prob(model: GritModel, prompt: list[int], answer: str) -> float:
    """Sum of log p(answer token | prompt and the answer's tokens before it)."""
    nll, _ = model.target_nll([(prompt, model.token_ids(answer))], desc=f"log p({answer!r})")
    return -nll


def margins(model: GritModel, layout_name: str) -> dict[str, float | str]:
    """Scores of ``ANSWERS`` and the greedy answer. "none": the prompt of ``cache="none"``; "blocks": the document
    laid out as its cached block then the question in RAG's doc-mode words, all read in one causal pass (the full
    reading a cache-aware stage distils from, and what ``data.rag_anchor`` holds); the greedy answer is then RAG's
    own from a causal document cache, which at k = 1 is that same reading."""
    rag = RAG(model, Index.build(DOCUMENTS, model), cache_source="causal")
    cache = "none" if layout_name == "none" else "doc"
    _, layout, _ = rag.prepare(QUESTION, 1, cache, 24)
    prompt = [i for span in layout.spans for i in span.ids] + list(layout.tail)
    scores: dict[str, float | str] = {a: answer_log_prob(model, prompt, a) for a in ANSWERS}
    scores["greedy"] = rag.answer(QUESTION, k=1, cache=cache, max_new_tokens=24).text
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="default, or a model / adapter folder")
    parser.add_argument("--layout", choices=["none", "blocks"], default="none", help="see margins()")
    args = parser.parse_args()
    print("| model | " + " | ".join(f"log p({a!r})" for a in ANSWERS) + f" | greedy answer ({args.layout}) |")
    print("|---|" + "---:|" * len(ANSWERS) + "---|")
    for name in args.models:
        model = GritModel.load(None if name == "default" else name, dtype="float32", weights="plain", device="cpu")
        scores = margins(model, args.layout)
        cells = " | ".join(f"{scores[a]:.2f}" for a in ANSWERS)
        print(f"| {name} | {cells} | {scores['greedy']!r} |", flush=True)


if __name__ == "__main__":
    main()
