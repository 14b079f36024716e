"""Every task end to end on the tiny random model and a few real rows of each shared data set."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from grit import instructions
from grit.eval.cache import EmbeddingCache
from grit.eval.embedding_tasks import ClassificationTask, RetrievalTask, STSTask
from grit.eval.encoders import BM25Retriever, fingerprint
from grit.eval.generative_tasks import InstructionTask, PerplexityTask, ReadingQATask
from grit.eval.run import build_suite, run


def test_sts(tiny_grit, eval_data):
    scores = STSTask("stsb", eval_data / "sts" / "stsb-test.jsonl").evaluate(tiny_grit)
    assert scores.n == 8
    assert -1 <= scores.metrics["spearman"] <= 1 and -1 <= scores.metrics["pearson"] <= 1


def test_retrieval_dense_and_cached(tiny_grit, eval_data, tmp_path):
    task = RetrievalTask("cranfield", eval_data / "retrieval" / "cranfield", instructions.CRANFIELD, limit=2)
    cache = EmbeddingCache(fingerprint(tiny_grit), root=tmp_path)
    first = task.evaluate(tiny_grit, cache)
    assert first.n == 2 and set(first.metrics) == {"ndcg@10", "recall@100", "mrr@10"}
    assert all(0 <= v <= 1 for v in first.metrics.values())
    assert first.metrics["recall@100"] == 1.0  # the corpus is smaller than 100 documents
    (stored,) = tmp_path.glob("*.npy")  # the corpus only (queries are cheap), no temporary file left over
    _, _, _, docs, _ = task.load()
    np.testing.assert_allclose(np.load(stored), tiny_grit.encode(docs), atol=1e-5)
    np.save(stored, np.zeros_like(np.load(stored)))  # a poisoned cache proves the second run reads it
    assert task.evaluate(tiny_grit, cache).metrics != first.metrics
    assert task.evaluate(tiny_grit).metrics == first.metrics  # no cache: recomputed, deterministic


def test_cache_key_covers_model_texts_and_instruction(tmp_path):
    cache = EmbeddingCache("model-a", root=tmp_path)
    keys = {
        cache.key(["a", "b"], ""),
        cache.key(["a", "b"], "Given a query"),
        cache.key(["ab"], ""),
        cache.key(["b", "a"], ""),
        EmbeddingCache("model-b", root=tmp_path).key(["a", "b"], ""),
    }
    assert len(keys) == 5
    calls = []
    compute = lambda texts, instr: calls.append(texts) or np.ones((len(texts), 3))  # noqa: E731
    cache.get_or_compute(["a", "b"], "", compute)
    cache.get_or_compute(["a", "b"], "", compute)
    assert len(calls) == 1 and [p.name.startswith(".tmp") for p in tmp_path.iterdir()] == [False]


def test_fingerprint_follows_the_model_files_settings_and_dtype(tiny_model_path, tmp_path):
    """The eval cache key: the same files give the same key (a copy too), changed weights or embedding settings or
    another dtype give another, so cached vectors of one are never read for the other."""
    import shutil

    from safetensors.torch import load_file, save_file

    from grit import GritModel

    model = GritModel.load(tiny_model_path, dtype="float32", device="cpu")
    before = fingerprint(model)
    copy = shutil.copytree(tiny_model_path, tmp_path / tiny_model_path.name)
    assert fingerprint(GritModel.load(copy)) == before
    assert fingerprint(GritModel.load(copy, pooling="last")) != before
    assert fingerprint(GritModel.load(copy, dtype="bfloat16")) != before
    weights = load_file(copy / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] + 1
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert fingerprint(GritModel.load(copy)) != before


def test_retrieval_bm25(eval_data):
    pytest.importorskip("bm25s")
    task = RetrievalTask("msmarco", eval_data / "retrieval" / "msmarco-dl19-5k", instructions.GRITLM_E5["MSMARCO"])
    scores = task.evaluate(BM25Retriever())
    assert scores.n == 3 and scores.metrics["ndcg@10"] > 0.3  # lexical overlap finds judged passages


def test_bm25_scores_and_stopword_only_query():
    pytest.importorskip("bm25s")
    bm25 = BM25Retriever()
    bm25.index(["the cat sat", "a dog barked", "cats and dogs"])
    scores = bm25.score(["the a", "cat", "dog"])
    assert scores.shape == (3, 3) and not scores[0].any()  # no terms left: every document scores 0
    assert scores[1].argmax() == 0 and scores[2].argmax() == 1  # no stemming: "cats" is not "cat"


def test_retrieval_corpus_limit_keeps_judged_documents(eval_data):
    task = RetrievalTask("c", eval_data / "retrieval" / "cranfield", instructions.CRANFIELD, limit=2, corpus_limit=3)
    qids, _, doc_ids, _, qrels = task.load()
    assert len(qids) == 2 and {d for q in qrels for d in q} <= set(doc_ids)


def test_classification(tiny_grit, eval_data):
    folder = eval_data / "classification" / "banking77"
    task = ClassificationTask(
        "banking77", folder / "train.jsonl", folder / "test.jsonl", "Given a online banking query"
    )
    first = task.evaluate(tiny_grit)
    assert first.n == 12 and first.details == {"train_encoded": 12, "train_per_run": 12, "labels": 3}
    assert all(0 <= v <= 1 for v in first.metrics.values())
    assert task.evaluate(tiny_grit).metrics == first.metrics  # deterministic


def test_classification_undersampling_follows_mteb(tmp_path):
    task = ClassificationTask("c", tmp_path, tmp_path, samples_per_label=2, n_experiments=3)
    labels = ["a"] * 5 + ["b"] * 5 + ["c"]
    runs = task.experiments(labels)
    assert runs == task.experiments(labels)  # seeded
    assert all(sorted(labels[i] for i in run) == ["a", "a", "b", "b", "c"] for run in runs)
    assert len({tuple(sorted(run)) for run in runs}) > 1  # each experiment draws anew
    everything = ClassificationTask("c", tmp_path, tmp_path, samples_per_label=None).experiments(labels)
    assert everything == [list(range(11))]


def test_perplexity(tiny_grit, eval_data):
    scores = PerplexityTask("gsm8k", eval_data / "generative" / "gsm8k_train.jsonl").evaluate(tiny_grit)
    assert scores.n == 4 and scores.details["cut_to_context"] == 0
    # a random model is about as unsure as uniform over its 512-token vocabulary
    assert 100 < scores.metrics["perplexity"] < 2000
    assert scores.metrics["perplexity"] == pytest.approx(math.exp(scores.metrics["nll_per_token"]))


def test_perplexity_batching_does_not_change_the_result(tiny_grit, eval_data):
    path = eval_data / "generative" / "gsm8k_train.jsonl"
    one = PerplexityTask("g", path, limit=3, batch_size=1).evaluate(tiny_grit).metrics["nll_per_token"]
    three = PerplexityTask("g", path, limit=3, batch_size=3).evaluate(tiny_grit).metrics["nll_per_token"]
    assert one == pytest.approx(three, abs=1e-4), f"max_diff {abs(one - three)}"


def test_generative_tasks(tiny_grit, eval_data):
    qa = ReadingQATask("aqa", eval_data / "rag" / "adversarialqa.jsonl", limit=2, max_new_tokens=4).evaluate(tiny_grit)
    assert qa.n + qa.skipped == 2 and set(qa.metrics) == {"exact_match", "f1"}
    task = InstructionTask("p3", eval_data / "generative" / "p3_t0_mix.jsonl.gz", limit=2, max_new_tokens=4)
    ins = task.evaluate(tiny_grit)
    assert ins.n + ins.skipped == 2 and set(ins.metrics) == {"token_f1", "rouge_l", "exact_match"}


def test_generate_all_batches_when_the_model_can_and_answers_the_same(tiny_grit):
    from grit.eval.generative_tasks import generate_all

    class OneAtATime:  # a generator without generate_batch: the plain path
        def generate(self, prompt, **kwargs):
            return tiny_grit.generate(prompt, **kwargs)

    prompts = ["Hi", "word " * 600, "Tell me about the json module.", [{"role": "user", "content": "2+2?"}]]
    batched = generate_all(tiny_grit, prompts, 6, "t")
    assert batched[1] is None and all(isinstance(batched[i], str) for i in (0, 2, 3))  # the long one does not fit
    one = generate_all(OneAtATime(), [p for i, p in enumerate(prompts) if i != 1], 6, "t")
    assert one == [batched[i] for i in (0, 2, 3)]


def test_tasks_support_only_what_a_model_can_do(tiny_grit, eval_data):
    bm25 = BM25Retriever()
    assert not STSTask("s", eval_data).supports(bm25) and RetrievalTask("r", eval_data, "").supports(bm25)
    assert not PerplexityTask("p", eval_data).supports(bm25) and PerplexityTask("p", eval_data).supports(tiny_grit)


def test_quick_suite_runs_every_task_and_writes_results(tiny_grit, eval_data, tmp_path):
    tasks = build_suite("quick", eval_data, limit=2)
    assert [t.name for t in tasks] == [
        "stsb", "cranfield", "msmarco-dl19-5k", "banking77", "sst2", "gsm8k-ppl", "adversarialqa", "p3-instructions",
        "self-instruct", "adversarialqa-rag", "hotpotqa-rag",
    ]  # fmt: skip
    assert all(t.limit == 2 for t in tasks)
    for t in tasks:  # keep the generative tasks short: this test checks wiring, not quality
        if hasattr(t, "max_new_tokens"):
            t.max_new_tokens = 4
    pytest.importorskip("bm25s")
    results = run(tiny_grit, tasks, tmp_path / "out", baselines=[BM25Retriever()])
    assert {r["task"] for r in results["rows"] if r["model"] == tiny_grit.path.name} == {t.name for t in tasks}
    assert {r["task"] for r in results["rows"] if r["model"] == "bm25"} == {"cranfield", "msmarco-dl19-5k"}
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["rows"] == results["rows"] and on_disk["tasks"][0]["type"] == "STSTask"
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| model | task | metric | value | n | seconds |" in table and "| bm25 | cranfield | ndcg@10 |" in table


def test_missing_data_is_reported_not_fatal(tiny_grit, tmp_path):
    results = run(tiny_grit, [STSTask("gone", tmp_path / "nope.jsonl")], tmp_path / "out")
    assert results["rows"] == [] and results["skipped"][0]["task"] == "gone"
    assert "skipped" in (tmp_path / "out" / "results.md").read_text()


def test_unknown_suite_and_bad_limit(tmp_path):
    with pytest.raises(ValueError, match="unknown suite 'huge'"):
        build_suite("huge", tmp_path)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        STSTask("s", tmp_path, limit=0)


def test_resume_keeps_finished_tasks_and_redoes_changed_ones(tiny_grit, eval_data, tmp_path):
    sts = STSTask("stsb", eval_data / "sts" / "stsb-test.jsonl", limit=4)
    ppl = PerplexityTask("gsm8k-ppl", eval_data / "generative" / "gsm8k_train.jsonl", limit=2)
    out = tmp_path / "out"
    first = run(tiny_grit, [sts], out)
    assert (out / "results.json").is_file()  # written as each task finishes

    # A second run of another task into the same folder adds to the table and keeps the first task's row as it was.
    second = run(tiny_grit, [sts, ppl], out, resume=True)
    assert {r["task"] for r in second["rows"]} == {"stsb", "gsm8k-ppl"}
    stsb = [r for r in second["rows"] if r["task"] == "stsb"]
    assert stsb == [r for r in first["rows"] if r["task"] == "stsb"]
    assert [t["name"] for t in second["tasks"]] == ["stsb", "gsm8k-ppl"]

    # Changed settings are not reused: the task runs again and its rows are replaced, not duplicated.
    third = run(tiny_grit, [STSTask("stsb", eval_data / "sts" / "stsb-test.jsonl", limit=3)], out, resume=True)
    assert [r["n"] for r in third["rows"] if r["task"] == "stsb"] == [3, 3]
    assert {r["task"] for r in third["rows"]} == {"stsb", "gsm8k-ppl"}

    # A task rerun with new settings for one model does not pass off another model's old rows as the new setting.
    twin = dataclasses.replace(tiny_grit, path=tiny_grit.path.parent / "twin")  # a second fingerprinted model
    cranfield = RetrievalTask("cranfield", eval_data / "retrieval" / "cranfield", instructions.CRANFIELD, limit=2)
    run(tiny_grit, [cranfield], out, baselines=[twin], resume=True)
    fourth = run(tiny_grit, [dataclasses.replace(cranfield, limit=1)], out, baselines=[twin], resume=True)
    n_by_model = {r["model"]: r["n"] for r in fourth["rows"] if r["task"] == "cranfield"}
    assert n_by_model == {tiny_grit.path.name: 1, "twin": 1}

    # Without resume the folder starts over.
    assert {r["task"] for r in run(tiny_grit, [sts], out)["rows"]} == {"stsb"}


def test_resume_refuses_a_corrupt_results_file(tiny_grit, eval_data, tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot resume"):
        run(tiny_grit, [STSTask("stsb", eval_data / "sts" / "stsb-test.jsonl", limit=2)], tmp_path, resume=True)


def test_suite_generative_tasks_score_only_held_out_rows(shared_data):
    from grit.eval import data
    from grit.splits import is_held_out

    for suite in ("quick", "compare", "standard", "full"):
        tasks = {t.name: t for t in build_suite(suite, shared_data)}
        for name in ("gsm8k-ppl", "adversarialqa", "p3-instructions", "adversarialqa-rag", "hotpotqa-rag"):
            assert tasks[name].heldout_only, (suite, name)
    compare = {t.name: t for t in build_suite("compare", shared_data)}
    assert compare["adversarialqa-rag"].modes == ("none", "doc") and compare["stsb"].limit is None
    rows = [r for _, r in data.read_jsonl(shared_data / "rag" / "adversarialqa.jsonl")]
    held = {r["question"] for r in rows if is_held_out(r)}
    assert {q.question for q in data.read_rag(shared_data / "rag" / "adversarialqa.jsonl", heldout_only=True)} == held
