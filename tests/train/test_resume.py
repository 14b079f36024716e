"""A run killed after a checkpoint and restarted with the same config ends exactly where an uninterrupted one does."""

import pytest
import torch
from safetensors.torch import load_file

from grit.train import trainer
from grit.train.checkpoint import checkpoints

from .trainutil import read_log, tiny_config

CASES = {
    "full": (),
    # LoRA dropout draws random numbers every step, so the RNG state must come back too; GradCache replays it.
    "lora+gradcache": ("lora.enabled=true", "lora.r=4", "lora.dropout=0.2", "gradcache_chunk_size=3"),
}


class Killed(Exception):
    pass


def kill_at(step: int):
    def on_step(record: dict) -> None:
        if record["step"] == step:
            raise Killed(f"killed after step {step}")

    return on_step


@pytest.mark.parametrize("case", list(CASES))
def test_kill_and_resume_reproduces_the_uninterrupted_run(tiny_model_path, train_data, tmp_path, case):
    def config(out):
        return tiny_config(tiny_model_path, train_data, out, *CASES[case], max_steps=7, save_every=2)

    whole = trainer.train(config(tmp_path / "whole"))
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        trainer.train(config(out), on_step=kill_at(5))  # after checkpoint-4; step 5 is logged, then lost
    assert [p.name for p in checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    assert len(read_log(out)) == 5
    resumed = trainer.train(config(out))
    expected, got = read_log(tmp_path / "whole"), read_log(out)
    assert [r["step"] for r in got] == list(range(1, 8))  # step 5 is not logged twice
    for key in ("loss", "loss_emb", "loss_gen", "lr", "grad_norm", "tokens"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in expected], rel=1e-5, abs=1e-6), key
    before, after = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    # keep_checkpoints=2: the oldest went; no temporary folder was left behind
    assert [p.name for p in checkpoints(out)] == ["checkpoint-6", "checkpoint-7"]
    assert not list(out.glob(".tmp-*"))


class RunsAShellCommand:
    """What an attacker would put in a checkpoint: unpickling it runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_in_a_checkpoint_is_refused_not_run(tiny_model_path, train_data, tmp_path, caplog):
    out = tmp_path / "run"
    with pytest.raises(Killed):
        trainer.train(tiny_config(tiny_model_path, train_data, out, max_steps=4, save_every=2), on_step=kill_at(3))
    marker = tmp_path / "pwned"
    torch.save([RunsAShellCommand(marker)], out / "checkpoint-2" / "rng.pt")
    with caplog.at_level("WARNING"):
        trainer.train(tiny_config(tiny_model_path, train_data, out, max_steps=4, save_every=2))
    assert not marker.exists(), "unpickling the checkpoint ran a shell command"
    assert "refusing to unpickle" in caplog.text and "RNG not restored" in caplog.text
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]  # the run resumed and finished all the same
