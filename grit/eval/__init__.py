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
    cli.py               ``grit eval MODEL --suite quick``

Example:
    >>> from grit import GritModel
    >>> from grit.eval import build_suite, run
    >>> run(GritModel.load(), build_suite("quick", limit=20), "runs/eval/try")["rows"][0]
    {'model': 'SmolLM2-135M-Instruct...', 'task': 'stsb', 'metric': 'spearman', 'value': 0.5..., ...}
"""

from grit.eval.data import DataFormatError
from grit.eval.embedding_tasks import ClassificationTask, RetrievalTask, STSTask
from grit.eval.encoders import BM25Retriever, SentenceTransformerEncoder, load_minilm
from grit.eval.generative_tasks import InstructionTask, PerplexityTask, ReadingQATask
from grit.eval.mteb_adapter import MtebEncoder
from grit.eval.run import SUITES, build_suite, default_baselines, run
from grit.eval.tasks import Scores, Task

__all__ = [
    "SUITES",
    "BM25Retriever",
    "ClassificationTask",
    "DataFormatError",
    "InstructionTask",
    "MtebEncoder",
    "PerplexityTask",
    "ReadingQATask",
    "RetrievalTask",
    "STSTask",
    "Scores",
    "SentenceTransformerEncoder",
    "Task",
    "build_suite",
    "default_baselines",
    "load_minilm",
    "run",
]
