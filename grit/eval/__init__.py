"""Evaluation of a GRIT model: embedding, retrieval, classification and generation quality, offline, in one command.

    metrics.py           Spearman, nDCG/MRR/recall@k, SQuAD EM/F1, ROUGE-L, accuracy, macro-F1 (plain functions)
    data.py              readers for the shared data formats; DataFormatError names file and line
    encoders.py          Encoder / Generator / Retriever protocols; MiniLM and BM25 baselines; model fingerprints
    cache.py             corpus embeddings cached under $GRIT_CACHE/embeddings
    tasks.py             the Task protocol, Scores, shared helpers
    embedding_tasks.py   STSTask, RetrievalTask, ClassificationTask
    generative_tasks.py  PerplexityTask, ReadingQATask, InstructionTask
    mteb_adapter.py      MtebEncoder: run the mteb benchmark on a GritModel
    run.py               run(model, tasks, out_dir), the quick / full suites, results.json + results.md

Example:
    >>> from grit import GritModel
    >>> from grit.eval import build_suite, run
    >>> run(GritModel.load(), build_suite("quick", limit=20), "runs/eval/try")["rows"][0]
    {'model': 'SmolLM2-135M-Instruct...', 'task': 'stsb', 'metric': 'spearman', 'value': 0.5..., ...}
"""

from grit.lazy import lazy_exports

_EXPORTS = {
    "DataFormatError": "grit.eval.data",
    "ClassificationTask": "grit.eval.embedding_tasks",
    "RetrievalTask": "grit.eval.embedding_tasks",
    "STSTask": "grit.eval.embedding_tasks",
    "BM25Retriever": "grit.eval.encoders",
    "SentenceTransformerEncoder": "grit.eval.encoders",
    "load_minilm": "grit.eval.encoders",
    "InstructionTask": "grit.eval.generative_tasks",
    "PerplexityTask": "grit.eval.generative_tasks",
    "ReadingQATask": "grit.eval.generative_tasks",
    "MtebEncoder": "grit.eval.mteb_adapter",
    "SUITES": "grit.eval.run",
    "build_suite": "grit.eval.run",
    "default_baselines": "grit.eval.run",
    "run": "grit.eval.run",
    "Scores": "grit.eval.tasks",
    "Task": "grit.eval.tasks",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
