"""Loss curves of a run: ``plot_loss("runs/x")`` reads runs/x/log.jsonl and writes runs/x/loss.png.

    python -m grit.train.plot runs/x          # or: grit plot-loss runs/x

One panel per loss the run has (contrastive, next-token), each with the raw per-step values and a moving average,
since per-step losses of small batches are noisy.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grit.jsonl import read_jsonl

PANELS = (("loss_emb", "contrastive loss (embedding)"), ("loss_gen", "next-token loss (generative)"))


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {str(run_dir)!r} a training output_dir?")
    records = [record for _, record in read_jsonl(path)]
    if not records:
        raise ValueError(f"{path} has no steps yet")
    return records


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_loss(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a PNG of the embedding and generative loss curves (``run_dir/loss.png`` unless ``out``)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, and safe in a headless job
    import matplotlib.pyplot as plt

    records = read_log(run_dir)
    panels = [(key, title) for key, title in PANELS if any(r.get(key) is not None for r in records)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        steps, values = [s for s, _ in points], [v for _, v in points]
        window = max(1, len(values) // 20)
        ax.plot(steps, values, alpha=0.35 if window > 1 else 1.0, label="per step")
        if window > 1:
            ax.plot(steps, moving_average(values, window), label=f"mean of {window} steps")
        ax.set(title=title, xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(Path(run_dir).resolve().name)
    fig.tight_layout()
    path = Path(out) if out else Path(run_dir) / "loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(plot_loss(sys.argv[1]))
