"""A second training stage and what a run records: ``lora.init_from`` continues a saved adapter (refusing one of
another shape or base), and ``grit_training.json`` says what a run trained on, so that a model trained on
cache-aware RAG rows makes RAG read the embedding pass's own (free) document caches by default."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from grit import GritModel
from grit.identity import TRAINING_RECORD, ModelIdentity, trained_cache_source
from grit.rag import RAG, Document, Index
from grit.train.trainer import train

from .trainutil import read_log, tiny_config, write_jsonl

LORA = ("lora.enabled=true", "lora.r=4")
RAG_ROWS = [
    {"question": "Which module logs events?", "answers": ["logging"], "passage": "The logging module logs events."},
    {"question": "What parses arguments?", "answers": ["argparse"], "passage": "argparse parses command lines."},
    {"question": "What encodes data?", "answers": ["json"], "passage": "The json module encodes data as text."},
]


@pytest.fixture(scope="module")
def first_stage(tiny_model_path, train_data, tmp_path_factory):
    """A 3-step LoRA run's output folder (no RAG rows)."""
    out = tmp_path_factory.mktemp("stage-1")
    torch.set_num_threads(1)
    train(tiny_config(tiny_model_path, train_data, out, *LORA, max_steps=3, lr=1e-2))
    return out


def adapter_weights(folder):
    return load_file(folder / "adapter_model.safetensors")


def test_a_second_stage_starts_from_the_saved_adapter(first_stage, tiny_model_path, train_data, tmp_path):
    # warmup_steps=1: the first step runs at lr 0, so after it the adapter is exactly where the run started.
    start = first_stage / "adapter"
    for init, out in ((start, tmp_path / "continued"), (None, tmp_path / "fresh")):
        options = [f"lora.init_from={init}"] if init else []
        train(tiny_config(tiny_model_path, train_data, out, *LORA, *options, max_steps=1, warmup_steps=1))
    saved, continued, fresh = (adapter_weights(f) for f in (start, tmp_path / "continued" / "adapter",
                                                                   tmp_path / "fresh" / "adapter"))  # fmt: skip
    assert saved.keys() == continued.keys() == fresh.keys()
    assert all(torch.equal(saved[k], continued[k]) for k in saved)
    assert not all(torch.equal(saved[k], fresh[k]) for k in saved)  # a fresh adapter starts elsewhere (B = 0)
    first = read_log(tmp_path / "continued")[0]
    assert first["init_from"]["digest"] == ModelIdentity.of(start).digest
    assert "init_from" not in read_log(tmp_path / "fresh")[0]


def test_a_second_stage_refuses_an_adapter_it_cannot_continue(first_stage, tiny_model_path, train_data, tmp_path):
    def start(init_from, *overrides):
        cfg = tiny_config(tiny_model_path, train_data, tmp_path / "out", *LORA, f"lora.init_from={init_from}",
                          *overrides, max_steps=1)  # fmt: skip
        train(cfg)

    with pytest.raises(ValueError, match="has r=4, this run lora.r=8"):
        start(first_stage / "adapter", "lora.r=8")
    with pytest.raises(ValueError, match="holds no LoRA adapter"):
        start(tmp_path)
    # An adapter of another base: its train_config.json names a different model folder.
    other_base = shutil.copytree(tiny_model_path, tmp_path / "other-base")
    moved = shutil.copytree(first_stage / "adapter", tmp_path / "moved")
    config = json.loads((moved / "train_config.json").read_text())
    (moved / "train_config.json").write_text(json.dumps({**config, "model": str(other_base)}))
    with pytest.raises(ValueError, match="adapts .*other-base"):
        start(moved)
    with pytest.raises(ValueError, match="lora.init_from needs lora.enabled=true"):
        tiny_config(tiny_model_path, train_data, tmp_path / "out", f"lora.init_from={moved}")


def test_a_run_records_what_it_trained_on(first_stage):
    for folder in (first_stage / "adapter", first_stage / "final"):
        record = json.loads((folder / TRAINING_RECORD).read_text())
        assert record == {"examples": {"contrastive": 16, "chat": 8, "cached_rag": 0}, "rag_cache_attention": None}
        assert GritModel.load(folder, dtype="float32", device="cpu").rag_cache_source == "causal"


@pytest.mark.parametrize("attention, source", [("bidirectional", "bidirectional"), ("mixed", "bidirectional"),
                                                ("causal", "causal")])  # fmt: skip
def test_cache_aware_training_sets_the_cache_rag_reads(tiny_model_path, train_data, tmp_path, attention, source):
    rag_file = write_jsonl(tmp_path / "rag.jsonl", RAG_ROWS)
    files = "data.generative_files=" + json.dumps([str(train_data[1]), str(rag_file)])
    distill = 1.0 if attention == "bidirectional" else 0.0  # and the log shows the distillation KL when it is on
    cfg = tiny_config(tiny_model_path, train_data, tmp_path / "out", *LORA, f"data.rag_cache_attention={attention}",
                      files, f"data.rag_distill={distill}", max_steps=3)  # fmt: skip
    final = train(cfg)
    kls = [line["kl_rag"] for line in read_log(tmp_path / "out")]
    assert any(kl is not None and kl > 0 for kl in kls) if distill else kls == [None] * 3
    for folder in (final, tmp_path / "out" / "adapter"):
        record = json.loads((folder / TRAINING_RECORD).read_text())
        assert record["examples"]["cached_rag"] == 3 and record["rag_cache_attention"] == attention
        model = GritModel.load(folder, dtype="float32", device="cpu")
        assert model.rag_cache_source == source
        index = Index.build([Document("a", "The logging module logs events.", "")], model)
        assert RAG(model, index).cache_source == source
        assert RAG(model, index, cache_source="causal").cache_source == "causal"  # an explicit choice wins
    # save_pretrained keeps it
    saved = GritModel.load(final, dtype="float32", device="cpu").save_pretrained(tmp_path / "saved")
    assert GritModel.load(saved, dtype="float32", device="cpu").rag_cache_source == source


@pytest.mark.parametrize("record, source", [
    ({"rag_cache_attention": "bidirectional", "rag_cache_source": "causal"}, "causal"),
    ({"rag_cache_attention": "causal", "rag_cache_source": "bidirectional"}, "bidirectional"),
    ({"rag_cache_attention": "bidirectional", "rag_cache_source": None}, "bidirectional"),
])  # fmt: skip
def test_a_record_that_names_the_rag_default_wins_over_what_was_trained(tmp_path, record, source):
    path = tmp_path / TRAINING_RECORD
    path.write_text(json.dumps({"examples": {"cached_rag": 5}, **record}))
    assert trained_cache_source(path) == source


@pytest.mark.parametrize("content, match", [
    ({"rag_cache_attention": "sideways"}, "rag_cache_attention must be"),
    ({"rag_cache_attention": "bidirectional", "rag_cache_source": "mixed"}, "rag_cache_source must be"),
    ([1, 2], "does not hold grit's settings"),
])  # fmt: skip
def test_a_bad_training_record_is_an_error(tmp_path, content, match):
    path = tmp_path / TRAINING_RECORD
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        trained_cache_source(path)
    assert trained_cache_source(tmp_path / "absent.json") is None


def test_a_saved_model_with_a_bad_cache_source_is_refused(tiny_grit, tmp_path):
    saved = tiny_grit.save_pretrained(tmp_path / "saved")
    config = json.loads((saved / "grit_config.json").read_text())
    (saved / "grit_config.json").write_text(json.dumps({**config, "rag_cache_source": "both"}))
    with pytest.raises(ValueError, match="rag_cache_source must be 'bidirectional' or 'causal'"):
        GritModel.load(saved, dtype="float32", device="cpu")


def test_a_start_teacher_is_the_adapter_the_run_began_with_and_stays_so(first_stage, tiny_model_path, train_data,
                                                                         tmp_path):  # fmt: skip
    """data.rag_teacher=start distils from a frozen copy of lora.init_from's adapter. Step 1 runs at lr 0, so at step
    2 the trained adapter still equals it: the same KL as distilling from the model itself. From step 3 on the
    trained adapter has moved and the frozen teacher has not. Only the trained adapter is saved. (LoRA dropout 0:
    the "self" teacher reads in training mode, with the trained adapter's dropout; the frozen one has none.)"""
    rag_file = write_jsonl(tmp_path / "rag.jsonl", RAG_ROWS)
    kls = {}
    for teacher in ("self", "start"):
        out = tmp_path / teacher
        train(tiny_config(tiny_model_path, train_data, out, *LORA, f"lora.init_from={first_stage / 'adapter'}",
                          "data.generative_files=" + json.dumps([str(rag_file)]), "data.rag_distill=1.0",
                          f"data.rag_teacher={teacher}", "data.generative_batch_size=3", "lora.dropout=0", max_steps=3,
                          warmup_steps=1, lr=1e-2))  # fmt: skip
        kls[teacher] = [line["kl_rag"] for line in read_log(out)]
        assert adapter_weights(out / "adapter").keys() == adapter_weights(first_stage / "adapter").keys()
        assert GritModel.load(out / "final", dtype="float32", device="cpu").generate("Hi", max_new_tokens=2)
    assert all(kl is not None and kl > 0 for kl in kls["self"] + kls["start"])
    assert kls["start"][:2] == pytest.approx(kls["self"][:2], rel=1e-5)
    assert kls["start"][2] != pytest.approx(kls["self"][2], rel=1e-3)


def test_a_start_teacher_needs_lora(tiny_model_path, train_data, tmp_path):
    with pytest.raises(ValueError, match="data.rag_teacher=start needs lora.enabled=true"):
        tiny_config(tiny_model_path, train_data, tmp_path / "out", "data.rag_distill=1.0", "data.rag_teacher=start")


def test_chat_distillation_holds_chats_at_the_starting_adapter(first_stage, tiny_model_path, train_data, tmp_path):
    """data.chat_distill: the chats' KL from the frozen starting adapter to the trained one. Step 1 runs at lr 0
    and step 2 starts from the same weights, so there the two readings are the same (KL 0 to round-off); from step
    3 on the trained adapter has moved. With data.chat_answer_loss=false the KL is the whole generative loss."""
    out = tmp_path / "out"
    train(tiny_config(tiny_model_path, train_data, out, *LORA, f"lora.init_from={first_stage / 'adapter'}",
                      "data.chat_distill=2.0", "data.chat_answer_loss=false", "lora.dropout=0", max_steps=3,
                      warmup_steps=1, lr=1e-2))  # fmt: skip
    log = read_log(out)
    kls = [line["kl_chat"] for line in log]
    assert all(line["kl_rag"] is None for line in log)  # no cache-aware rows in this mix
    assert kls[0] == pytest.approx(0, abs=1e-6) and kls[1] == pytest.approx(0, abs=1e-6) and kls[2] > 1e-5
    assert [line["loss_gen"] for line in log] == pytest.approx([2.0 * kl for kl in kls], rel=1e-5, abs=1e-9)
    assert adapter_weights(out / "adapter").keys() == adapter_weights(first_stage / "adapter").keys()


def test_the_anchor_holds_the_full_reading_of_rag_rows_at_the_starting_adapter(first_stage, tiny_model_path,
                                                                                 train_data, tmp_path):  # fmt: skip
    """data.rag_anchor: the KL from the frozen starting adapter's full causal reading of the cache-aware rows to the
    trained adapter's (a pass with gradient of its own). Equal weights at steps 1-2 (lr 0 at step 1): KL 0 to
    round-off; from step 3 the trained adapter has moved. Without it the log has no such KL."""
    rag_file = write_jsonl(tmp_path / "rag.jsonl", RAG_ROWS)
    logs = {}
    for anchor in (0.0, 2.0):
        out = tmp_path / f"anchor-{anchor}"
        train(tiny_config(tiny_model_path, train_data, out, *LORA, f"lora.init_from={first_stage / 'adapter'}",
                          "data.generative_files=" + json.dumps([str(rag_file)]), f"data.rag_anchor={anchor}",
                          "data.generative_batch_size=3", "lora.dropout=0", max_steps=3, warmup_steps=1,
                          lr=1e-2))  # fmt: skip
        logs[anchor] = read_log(out)
    kls = [line["kl_anchor"] for line in logs[2.0]]
    assert kls[0] == pytest.approx(0, abs=1e-6) and kls[1] == pytest.approx(0, abs=1e-6) and kls[2] > 1e-5
    assert all(line["kl_anchor"] is None for line in logs[0.0])
    assert logs[2.0][2]["loss_gen"] != pytest.approx(logs[0.0][2]["loss_gen"], rel=1e-4)  # it trained the model


@pytest.mark.parametrize(("overrides", "match"), [
    (("data.rag_anchor=-1",), "rag_anchor must be >= 0"),
    (("lora.enabled=false", "data.rag_anchor=1"), "data.rag_anchor needs lora.enabled=true"),
    (("data.chat_distill=-1",), "chat_distill must be >= 0"),
    (("data.chat_answer_loss=false",), "chat_answer_loss=false needs data.chat_distill > 0"),
    (("lora.enabled=false", "data.chat_distill=1"), "data.chat_distill needs lora.enabled=true"),
])  # fmt: skip
def test_chat_distillation_settings_that_cannot_run_are_refused(tiny_model_path, train_data, tmp_path, overrides,
                                                                match):  # fmt: skip
    with pytest.raises(ValueError, match=match):
        tiny_config(tiny_model_path, train_data, tmp_path / "out", *overrides)
