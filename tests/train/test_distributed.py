"""Two gloo processes, each with half of every batch, train exactly like one process with the whole batch."""

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from grit import GritModel
from grit.formats import PromptFormat
from grit.train import distributed
from grit.train.collate import collate_embedding, collate_generative
from grit.train.config import DataConfig, TrainConfig
from grit.train.data import EmbeddingGroup, parse_embedding, parse_generative
from grit.train.distributed import Dist, all_reduce_grads, all_sum, shard
from grit.train.step import micro_step
from grit.train.trainer import train

from .trainutil import EMBEDDING_ROWS, GENERATIVE_ROWS, read_log, tiny_config

SCENARIOS = {  # the loss options each process and the single process run with
    "mixed": {"loss_gen_type": "mixed"},
    "token+gradcache+symmetric": {"loss_gen_type": "token", "gradcache_chunk_size": 3, "symmetric": True},
}
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_step(model_path: Path, d: Dist) -> dict[str, dict]:
    """Losses and averaged gradients of one unified micro-step on this process's shard of a fixed global batch:
    8 queries with 16 passages, and 8 conversations of different lengths (so 'mixed' needs the global count)."""
    model = GritModel.load(model_path, dtype="float32", device="cpu")
    lm = model.lm.train()
    examples = [parse_embedding(row) for row in EMBEDDING_ROWS[:8]]
    groups = shard([EmbeddingGroup(ex.query, [ex.pos[0], ex.neg[0]]) for ex in examples], d, "groups")
    chats = shard([parse_generative(row) for row in GENERATIVE_ROWS], d, "chats")
    emb = collate_embedding(model.tokenizer, groups, PromptFormat(), 64, 64)
    gen = collate_generative(model.tokenizer, chats, PromptFormat(), 96)
    results = {}
    for name, options in SCENARIOS.items():
        data = DataConfig(["e.jsonl"], ["g.jsonl"], embedding_batch_size=8, generative_batch_size=8)
        m = micro_step(lm, emb, gen, TrainConfig(data=data, **options), d)
        params = [p for p in lm.parameters() if p.requires_grad]
        all_reduce_grads(params, d)
        emb_loss, gen_loss = (all_sum(torch.tensor([m.emb, m.gen], dtype=torch.float64), d) / d.world).tolist()
        grads = {n: p.grad.clone() for n, p in lm.named_parameters()}
        lm.zero_grad(set_to_none=True)
        results[name] = {"emb": emb_loss, "gen": gen_loss, "grads": grads}
    return results


def worker(rank: int, port: int, model_path: Path, data: tuple[Path, Path], out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))  # fmt: skip
    torch.set_num_threads(1)  # two processes on two cores
    d = distributed.setup(torch.device("cpu"))
    try:
        results = one_step(model_path, d)
        if d.main:
            torch.save(results, out / "one_step.pt")
        train(tiny_config(model_path, data, out / "run", max_steps=3, save_every=2))  # joins the open group
    finally:
        distributed.teardown(d)


def spawn(fn, args: tuple, timeout: float = 240) -> None:
    context = mp.spawn(fn, args=args, nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"{WORLD} processes did not finish in {timeout} s")


@pytest.fixture(scope="module")
def two_processes(tiny_model_path, train_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two-processes")
    spawn(worker, (free_port(), tiny_model_path, train_data, out))
    return out


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_two_processes_give_the_losses_and_gradients_of_the_whole_batch(tiny_model_path, two_processes, scenario):
    got = torch.load(two_processes / "one_step.pt", weights_only=True)[scenario]
    expected = one_step(tiny_model_path, Dist())[scenario]
    assert got["emb"] == pytest.approx(expected["emb"], rel=1e-5)
    assert got["gen"] == pytest.approx(expected["gen"], rel=1e-5)
    assert got["grads"].keys() == expected["grads"].keys()
    for name, grad in expected["grads"].items():
        diff = (got["grads"][name] - grad).abs().max().item()
        assert diff <= 1e-5 * max(grad.abs().max().item(), 1.0), f"{name}: max_diff {diff:.2e}"


def test_two_processes_train_like_one(tiny_model_path, train_data, two_processes, tmp_path):
    train(tiny_config(tiny_model_path, train_data, tmp_path, max_steps=3, save_every=2))
    got, expected = read_log(two_processes / "run"), read_log(tmp_path)
    for key in ("loss", "loss_emb", "loss_gen", "lr", "tokens"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in expected], rel=1e-5), key
    # rank 0 wrote the checkpoints and the final model; the RNG states of both processes are in each checkpoint
    assert sorted(p.name for p in (two_processes / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert len(torch.load(two_processes / "run" / "checkpoint-3" / "rng.pt", weights_only=False)) == WORLD
    model = GritModel.load(two_processes / "run" / "final", dtype="float32", device="cpu")
    reference = GritModel.load(tmp_path / "final", dtype="float32", device="cpu")
    for (name, a), b in zip(model.lm.state_dict().items(), reference.lm.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
