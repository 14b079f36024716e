"""grit report: several eval runs side by side, with the embedding and generative averages."""

import json
import math

import pytest

from grit.cli import main
from grit.eval.report import (
    EMBEDDING_AVERAGE,
    add_means,
    columns,
    differing_settings,
    markdown,
    parse_windows,
    read_train_log,
    training_summary,
)

EMBEDDING = {"stsb": ("spearman", 0.5), "cranfield": ("ndcg@10", 0.3), "msmarco-dl19-5k": ("ndcg@10", 0.4),
             "banking77": ("accuracy", 0.6), "sst2": ("accuracy", 0.7)}  # fmt: skip


def write_run(folder, model, scores, baselines=(), limit=None):
    rows = [
        {"model": model, "task": t, "metric": m, "value": v, "n": 10, "seconds": 2.0} for t, (m, v) in scores.items()
    ]
    for name in baselines:
        rows.append({"model": name, "task": "stsb", "metric": "spearman", "value": 0.87, "n": 10, "seconds": 1.0})
    folder.mkdir(parents=True)
    tasks = [{"name": t, "limit": limit} for t in scores]
    (folder / "results.json").write_text(json.dumps({"models": [model, *baselines], "rows": rows, "tasks": tasks}))
    return folder


def test_columns_averages_and_baselines_once(tmp_path):
    generative = {"adversarialqa": ("f1", 0.2), "p3-instructions": ("rouge_l", 0.1), "gsm8k-ppl": ("perplexity", 4.0)}
    base = write_run(tmp_path / "base", "SmolLM2", {**EMBEDDING, **generative}, baselines=["all-MiniLM-L6-v2"])
    tuned = write_run(tmp_path / "tuned", "final", EMBEDDING, baselines=["all-MiniLM-L6-v2"])
    # gsm8k's average term comes from nll_per_token, which write_run did not give the base run: add it.
    data = json.loads((base / "results.json").read_text())
    data["rows"].append({"model": "SmolLM2", "task": "gsm8k-ppl", "metric": "nll_per_token", "value": math.log(4.0),
                         "n": 10, "seconds": 2.0})  # fmt: skip
    (base / "results.json").write_text(json.dumps(data))

    cols = columns([("base", base), ("unified", tuned)])
    assert [c.label for c in cols] == ["base", "all-MiniLM-L6-v2", "unified"]
    assert cols[0].average(EMBEDDING_AVERAGE) == pytest.approx(0.5)
    assert cols[0].average(("adversarialqa", "p3-instructions", "gsm8k-ppl")) == pytest.approx((0.2 + 0.1 + 0.25) / 3)
    assert cols[2].average(("adversarialqa",)) is None  # a missing term: no average
    table = markdown(cols)
    assert "| **embedding average** | | **0.5000** | **–** | **0.5000** |" in table
    assert "| stsb | spearman | 0.5000 | 0.8700 | 0.5000 |" in table
    assert "Not comparable" not in table

    sampled = write_run(tmp_path / "sampled", "final", EMBEDDING, limit=10)
    table = markdown(columns([("base", base), ("sampled", sampled)]))
    assert "Not comparable across columns (the runs used different settings): stsb, cranfield" in table


def test_training_summary_and_command(tmp_path, capsys):
    run = write_run(tmp_path / "e", "m", EMBEDDING)
    train = tmp_path / "train"
    train.mkdir()
    log = [{"step": 1, "tokens": 100, "seconds": 2.0}, {"step": 2, "tokens": 150, "seconds": 3.0}]
    (train / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    assert training_summary(read_train_log(train)) == {"steps": 2, "tokens": 250, "seconds": 5.0}
    assert read_train_log(train / "log.jsonl") == read_train_log(train)  # a committed copy of the log reads too
    out = tmp_path / "claims.md"
    assert main(["report", f"tuned={run}", "--train", f"tuned={train}", "--out", str(out)]) == 0
    assert "| tuned | 2 | 250 | 5 |" in out.read_text() and "| tuned |" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["report", str(run)]) == 2
    assert "must look like LABEL=PATH" in capsys.readouterr().err
    assert main(["report", f"x={tmp_path / 'nothing'}"]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_average_of_chosen_tasks(tmp_path, capsys):
    full = write_run(tmp_path / "full", "a", EMBEDDING)
    part = write_run(tmp_path / "part", "b", {t: EMBEDDING[t] for t in ("stsb", "sst2")})
    assert main(["report", f"full={full}", f"part={part}", "--average", "stsb,sst2"]) == 0
    table = capsys.readouterr().out
    assert "| **embedding average** | | **0.5000** | **–** |" in table  # part lacks three tasks
    assert "| **average of stsb, sst2** | | **0.6000** | **0.6000** |" in table
    assert main(["report", f"full={full}", "--average", "stsb,nope"]) == 2
    assert "unknown task(s) ['nope']" in capsys.readouterr().err


def test_runs_of_one_model_join_with_plus(tmp_path):
    first = write_run(tmp_path / "a", "m", {"stsb": ("spearman", 0.5), "sst2": ("accuracy", 0.6)})
    second = write_run(tmp_path / "b", "m", {"sst2": ("accuracy", 0.7), "banking77": ("accuracy", 0.4)})
    [col] = columns([("m", f"{first}+{second}")])
    assert col.get("stsb", "spearman") == 0.5 and col.get("banking77", "accuracy") == 0.4
    assert col.get("sst2", "accuracy") == 0.7  # the later run wins
    other = write_run(tmp_path / "c", "other", {"stsb": ("spearman", 0.1)})
    with pytest.raises(ValueError, match="is a run of other"):
        columns([("m", f"{first}+{other}")])


def test_a_later_run_replaces_the_settings_of_its_tasks(tmp_path):
    first = write_run(tmp_path / "a", "m", {"stsb": ("spearman", 0.5)}, limit=10)
    results = json.loads((first / "results.json").read_text())
    results["task_settings"] = {"m/stsb": {"name": "stsb", "limit": 10}}  # per-model record of the older run
    (first / "results.json").write_text(json.dumps(results))
    second = write_run(tmp_path / "b", "m", {"stsb": ("spearman", 0.6)}, limit=20)  # a file without that record
    peer = write_run(tmp_path / "c", "peer", {"stsb": ("spearman", 0.7)}, limit=20)
    cols = columns([("m", f"{first}+{second}"), ("peer", str(peer))])
    assert cols[0].settings["stsb"] == {"name": "stsb", "limit": 20}
    assert differing_settings(cols) == []


def test_a_mean_column_averages_seeds_and_shows_their_spread(tmp_path, capsys):
    seed0 = write_run(tmp_path / "s0", "peer", {**EMBEDDING, "gsm8k-ppl": ("nll_per_token", math.log(2.0))})
    shifted = {t: (m, v + 0.1) for t, (m, v) in EMBEDDING.items()}
    seed1 = write_run(tmp_path / "s1", "peer", {**shifted, "gsm8k-ppl": ("nll_per_token", math.log(4.0))})
    cols = add_means(columns([("s0", seed0), ("s1", seed1)]), [("mean", "s0,s1")])
    mean = cols[-1]
    assert mean.label == "mean" and mean.get("stsb", "spearman") == pytest.approx(0.55)
    assert mean.average(EMBEDDING_AVERAGE) == pytest.approx(0.55)
    assert mean.spread(EMBEDDING_AVERAGE) == pytest.approx((0.5, 0.6))
    # GSM8K's term is the mean of the seeds' likelihoods (1/2 and 1/4), not that of the mean NLL (1/sqrt(8))
    assert mean.term("gsm8k-ppl") == pytest.approx(0.375)
    assert cols[0].spread(EMBEDDING_AVERAGE) is None  # a plain column has no spread

    assert main(["report", f"s0={seed0}", f"s1={seed1}", "--mean", "peer=s0,s1"]) == 0
    row = "| **embedding average** | | **0.5000** | **0.6000** | **0.5500** (0.5000–0.6000) |"
    assert row in capsys.readouterr().out
    assert main(["report", f"s0={seed0}", "--mean", "peer=s0,s9"]) == 2
    assert "no column ['s9']; the columns are s0" in capsys.readouterr().err
    assert main(["report", f"s0={seed0}", "--mean", "peer=s0"]) == 2
    assert "name two or more columns" in capsys.readouterr().err
    assert main(["report", f"s0={seed0}", f"s1={seed1}", "--mean", "s0=s0,s1"]) == 2
    assert "s0 is a column already" in capsys.readouterr().err


def test_loss_windows_average_each_loss_over_step_ranges(tmp_path, capsys):
    run = write_run(tmp_path / "e", "m", EMBEDDING)
    unified = [{"step": n, "loss_emb": float(n), "loss_gen": 10.0 + n, "tokens": 1} for n in range(1, 7)]
    embedding = [{"step": n, "loss_emb": 2.0 * n, "loss_gen": None, "tokens": 1} for n in range(1, 4)]
    for name, log in (("unified.jsonl", unified), ("embedding.jsonl", embedding)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in log))
    args = ["report", f"u={run}", "--train", f"u={tmp_path / 'unified.jsonl'}", f"e={tmp_path / 'embedding.jsonl'}"]
    assert main([*args, "--loss-windows", "1-2,3-6"]) == 0
    out = capsys.readouterr().out
    assert "| model | contrastive 1–2 | contrastive 3–6 | next-token 1–2 | next-token 3–6 |" in out
    assert "| u | 1.500 | 4.500 | 11.500 | 14.500 |" in out
    assert "| e | 3.000 | 6.000 | – | – |" in out  # its log ends at step 3; it has no next-token loss

    assert parse_windows("1-25, 26-100") == [(1, 25), (26, 100)]
    for bad in ("1-", "5-2", "0-3", "a-b", "3"):
        with pytest.raises(ValueError, match="not a step range"):
            parse_windows(bad)
    assert main(["report", f"u={run}", "--loss-windows", "1-2"]) == 2
    assert "--loss-windows needs --train" in capsys.readouterr().err
