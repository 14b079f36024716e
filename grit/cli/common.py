"""What every `grit` command shares: the model and placement options, and loading the model they name."""

from __future__ import annotations

import argparse

MODEL_HELP = (
    "HF folder, .gguf file or LoRA adapter folder; 'default' (also when left out): SmolLM2-135M-Instruct with "
    "grit's GRIT adapter; 'base': SmolLM2-135M-Instruct alone"
)


def model_source(name: str | None) -> dict:
    """``GritModel.load`` arguments for a model named on the command line: a path, or 'default' / 'base'."""
    if name in (None, "default"):
        return {"path": None}
    if name == "base":
        return {"path": None, "base_only": True}
    return {"path": name}


def add_model_options(parser: argparse.ArgumentParser, model_help: str = MODEL_HELP) -> None:
    parser.add_argument("--model", default=None, help=model_help)
    add_placement_options(parser)


def add_placement_options(parser: argparse.ArgumentParser) -> None:
    auto = "auto: $GRIT_{} when set, else"
    parser.add_argument(
        "--dtype",
        default="auto",
        help=f"auto | float32 | bfloat16 | float16 ({auto.format('DTYPE')} "
        "the fastest native dtype: bfloat16 on GPUs and AMX/AVX512-BF16 CPUs, float32 elsewhere)",
    )
    parser.add_argument("--device", default="auto", help=f"auto | cpu | cuda[:N] ({auto.format('DEVICE')} the first "
                        "GPU if any)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: $GRIT_THREADS, else torch's)")
    parser.add_argument("--weights", default="auto", help=f"auto | plain | float16: linear weights in the compute "
                        f"dtype, or stored in float16 for float32 compute on a CPU (fbgemm; decoding 1.4-2x faster on "
                        f"AVX2) ({auto.format('WEIGHTS')} float16 for float32 on a CPU, else plain)")  # fmt: skip


def placement(args: argparse.Namespace):
    """The command's device, dtype, threads and weights, resolved once (``grit.hardware``); a bad value is a
    ValueError."""
    from grit import hardware

    return hardware.resolve_placement(args.device, args.dtype, getattr(args, "threads", None), args.weights)


def load_model(args: argparse.Namespace, name: str | None = None):
    """The model named by ``name`` (default ``--model``), on the command's placement."""
    from grit import GritModel

    return GritModel.load(**model_source(name if name is not None else args.model), placement=placement(args))
