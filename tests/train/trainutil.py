"""Small real-looking training data and configs for training the tiny random model in tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grit.train.config import TrainConfig

EMBEDDING_ROWS = [
    {"query": "A man is playing a guitar on stage.", "pos": ["A musician performs with a guitar."],
     "neg": ["A man is asleep in his bed."]},
    {"query": "Two dogs run across a snowy field.", "pos": ["Animals are running outside in the snow."],
     "neg": ["Two cats sleep on a warm sofa."]},
    {"query": "A woman is slicing onions in a kitchen.", "pos": ["Someone is cooking with vegetables."],
     "neg": ["A woman is swimming in the sea."]},
    {"query": "Children are building a sand castle.", "pos": ["Kids play on the beach."],
     "neg": ["Children are sitting in a classroom."]},
    {"query": ["Retrieve a passage that answers the question", "Who wrote the letter?"],
     "pos": [["Represent the passage", "The letter was written by the mayor."]],
     "neg": [["Represent the passage", "The letter arrived on Monday."]]},
    {"query": "The stock market fell sharply today.", "pos": ["Shares dropped at the close of trading."],
     "neg": ["The market square was full of flowers."]},
    {"query": "A boy is riding a red bicycle.", "pos": ["A child rides a bike."],
     "neg": ["A boy is reading a book indoors."]},
    {"query": "An old man feeds pigeons in the park.", "pos": ["Birds are being fed outdoors."],
     "neg": ["An old man is driving a truck."]},
    {"query": "The train to the city is late again.", "pos": ["The city train is delayed."],
     "neg": ["The train left exactly on time."]},
    {"query": "A chef is plating a dessert.", "pos": ["Someone is serving a sweet dish."],
     "neg": ["A chef is repairing a car engine."]},
    {"query": ["Find a sentence with the same meaning", "It is raining heavily outside."],
     "pos": ["There is a strong rain storm."], "neg": ["The sun is shining brightly."]},
    {"query": "Students are taking an exam.", "pos": ["People are writing a test."],
     "neg": ["Students are dancing at a party."]},
    {"query": "A cat is chasing a small mouse.", "pos": ["An animal hunts another animal."],
     "neg": ["A cat is sleeping in the sun."]},
    {"query": "The team celebrated their victory.", "pos": ["The players were happy to win."],
     "neg": ["The team lost the final game."]},
    {"query": "A woman paints a portrait of her friend.", "pos": ["An artist is making a picture."],
     "neg": ["A woman is washing the dishes."]},
    {"query": "Workers are repairing the bridge.", "pos": ["People fix a structure over the river."],
     "neg": ["Workers are resting at home."]},
]  # fmt: skip

GENERATIVE_ROWS = [
    {"text": ["What is two plus three?", "Two plus three is five."]},
    {"text": ["Name a color of the sky.", "The sky is blue."]},
    {"text": ["What do cats say?", "Cats say meow."]},
    {"text": ["How many days are in a week?", "A week has seven days."]},
    {"text": ["What is the opposite of hot?", "The opposite of hot is cold."]},
    {"text": ["Say hello.", "Hello!", "Now say goodbye.", "Goodbye!"]},
    {"text": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Is ice cold?"},
              {"role": "assistant", "content": "Yes, ice is cold."}]},
    {"text": ["What is ten minus four?", "Ten minus four is six."]},
]  # fmt: skip


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_data(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return write_jsonl(folder / "emb.jsonl", EMBEDDING_ROWS), write_jsonl(folder / "gen.jsonl", GENERATIVE_ROWS)


def tiny_config(model: Path, data: tuple[Path, Path], out: Path, *overrides: str, **options: Any) -> TrainConfig:
    """A config for the tiny model: 4 queries x (1 + 1 hard negative) passages and 4 conversations per step,
    lr 3e-3, 30 steps, a checkpoint only at the end; keyword options and ``key=value`` overrides change it."""
    values = {
        "model": str(model),
        "mode": "unified",
        "output_dir": str(out),
        "lr": 3e-3,
        "warmup_steps": 1,  # linear warm-up starts at lr 0: one step of it
        "max_steps": 30,
        "save_every": 0,
        "log_every": 0,
        "data": {
            "embedding_files": [str(data[0])],
            "generative_files": [str(data[1])],
            "embedding_batch_size": 4,
            "generative_batch_size": 4,
            "query_max_length": 64,
            "passage_max_length": 64,
            "generative_max_length": 96,
        },
        **options,
    }
    return TrainConfig.from_dict(values, list(overrides))


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
