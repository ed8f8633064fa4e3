"""Training curves: loss (train and validation), gradient norm and learning rate against steps, as a PNG."""
from __future__ import annotations

import json
from pathlib import Path


def read_history(run_dir) -> dict:
    path = Path(run_dir) / "history.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory (tinytales train --out)?")
    return json.loads(path.read_text(encoding="utf-8"))


def plot_run(run_dir, out: str | Path | None = None) -> Path:
    """Write the loss, grad-norm and learning-rate curves of a run to `out` (default RUN/loss.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(run_dir)
    steps = history.get("steps", [])
    if not steps:
        raise ValueError(f"{run_dir}/history.json has no logged steps yet; train longer or lower --log-every")
    out = Path(out) if out else Path(run_dir) / "loss.png"
    x = [r["step"] for r in steps]
    fig, (ax_loss, ax_grad, ax_lr) = plt.subplots(1, 3, figsize=(15, 4), dpi=110)
    ax_loss.plot(x, [r["loss"] for r in steps], label="train loss", color="#3b6ea8", linewidth=1.2)
    evals = history.get("evals", [])
    if evals:
        ax_loss.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", label="validation loss",
                     color="#d9822b", markersize=3)
    ax_loss.set(xlabel="step", ylabel="loss (nats per token)", title="Loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_grad.plot(x, [r["grad_norm"] for r in steps], color="#5a9e5a", linewidth=1.0)
    ax_grad.set(xlabel="step", ylabel="gradient norm (before clipping)", title="Gradient norm")
    ax_grad.grid(alpha=0.3)
    ax_lr.plot(x, [r["lr"] for r in steps], color="#8a5aa8", linewidth=1.0)
    ax_lr.set(xlabel="step", ylabel="peak learning rate of the step (AdamW's)", title="Learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
