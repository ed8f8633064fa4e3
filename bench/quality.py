"""Story quality per CPU-minute: TinyTales' recipe against a transformers baseline, for the same wall-clock budgets.

For each budget (default 5 and 10 minutes, 2 threads) both train from scratch on the TinyStories training
stories with the same 4K BPE (the bundled model's, trained on those stories by `tinytales train-tokenizer`),
the same data order (TinyTales' packed batches, same seed) and the same tokens per step:
  - TinyTales: `tinytales train --preset story --minutes M` (the recipe the README recommends);
  - transformers: the same network as LlamaForCausalLM, the same parameter count and initial weights
    (`transformers_twin`), trained with fused AdamW (decay on matrices), a warmup + cosine schedule over the
    budget, gradient clipping and the trainer's autocast (bf16 where the CPU has it, else fp32).
Both are scored by `tinytales eval` bits per byte on the 902 validation stories. The runs alternate
(TinyTales, transformers, transformers, TinyTales, ...), each a fresh process.

The time-to-equal-quality ratio: the minutes TinyTales needs to reach the baseline's bpb at the largest
budget. TinyTales runs at shorter budgets (halving, down to `MIN_MINUTES`) until one does worse than that
bpb; the crossing is interpolated linearly in log(minutes) between the two budgets around it.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path

from .common import REPO, SHARED, Clock, run_worker, say, worker_main

DEFAULT_MINUTES = (5.0, 10.0)
MIN_MINUTES = 0.5
BUNDLED = REPO / "tinytales" / "pretrained" / "tinytales-stories"


def sources(quick: bool) -> dict:
    stories = SHARED / "data" / "tinystories"
    if quick:
        return {"train": str(stories / "valid.jsonl"), "valid": str(stories / "valid.jsonl"), "max_documents": 40}
    return {"train": str(stories / "train.jsonl"), "valid": str(stories / "valid.jsonl"), "max_documents": None}


# ----------------------------------------------------------------------------- one run (a worker)

def measure(spec: dict) -> dict:
    import torch

    from tinytales.evaluate import evaluate
    from tinytales.formats import load_model, resolve_tokenizer
    from tinytales.config import TrainConfig
    from tinytales.train import train

    tokenizer = resolve_tokenizer(spec["tokenizer"])
    config = TrainConfig.from_sources(
        preset=spec["preset"], data=spec["data"], tokenizer=spec["tokenizer"], out=spec["out"],
        minutes=spec["minutes"], epochs=None, threads=spec["threads"], seed=spec["seed"],
        eval_every=10**9, checkpoint_every=10**9, keep_last=1, log_every=10, model=spec.get("model"),
        **spec.get("train", {}))
    config.progress, config.plot = False, False
    started = time.perf_counter()
    if spec["side"] == "tinytales":
        result = train(config)
        steps, loss = result.steps, result.final_loss
        model = load_model(result.model_dir).model.float()
    else:
        model, steps, loss = train_transformers(config, tokenizer)
    seconds = time.perf_counter() - started
    scores = evaluate(model, tokenizer, spec["valid"], max_documents=spec.get("max_documents"), progress=False)
    tokens_per_step = config.batch_size * model.config.context_length
    return {"side": spec["side"], "minutes": spec["minutes"], "steps": steps, "tokens": steps * tokens_per_step,
            "train_seconds": round(seconds, 1), "final_train_loss": loss, "bits_per_byte": scores.bits_per_byte,
            "valid_loss": scores.loss, "valid_documents": scores.documents,
            "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}


def train_transformers(config, tokenizer):
    """The baseline: LlamaForCausalLM of the preset's shape, AdamW + warmup/cosine over the time budget."""
    import torch

    from tinytales.batches import make_batches
    from tinytales.formats.transformers_lm import TransformersLM
    from tinytales.model import GPT, GPTConfig
    from tinytales.config import learning_rate
    from tinytales.train import autocast_context, resolve_precision

    from .common import transformers_twin

    torch.manual_seed(config.seed)
    settings = dict(config.model)
    settings.setdefault("vocab_size", 64 * math.ceil(tokenizer.vocab_size / 64))
    hf_model = transformers_twin(GPT(GPTConfig(**settings)))  # the same initial weights as TinyTales' model
    hf_model.train()
    device = torch.device("cpu")
    precision = resolve_precision(config, device)
    decay = [p for p in hf_model.parameters() if p.dim() >= 2]
    no_decay = [p for p in hf_model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.lr, betas=(config.beta1, config.beta2), fused=True)
    schedule = dataclasses.replace(config, schedule="cosine")  # cosine over the budget, same warmup
    batches = iter(make_batches(config.data, tokenizer, batch_size=config.batch_size, seq_len=settings.get(
        "context_length", 256), seed=config.seed))
    budget, start, step, loss = config.minutes * 60, time.perf_counter(), 0, float("nan")
    while time.perf_counter() - start < budget:
        lr = learning_rate(step, None, schedule, (time.perf_counter() - start) / budget)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = next(batches)
        with autocast_context(precision, device):
            out = hf_model(input_ids=batch.inputs, labels=batch.targets, shift_labels=batch.targets)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf_model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step, loss = step + 1, out.loss.item()
    hf_model.eval()
    return TransformersLM(hf_model), step, loss


# ----------------------------------------------------------------------------- the benchmark

def run(minutes=DEFAULT_MINUTES, threads: int = 2, quick: bool = False, preset: str = "story") -> dict:
    clock = Clock()
    data = sources(quick)
    if not Path(data["train"]).exists():
        raise SystemExit(f"the quality benchmark needs the TinyStories stories in {Path(data['train']).parent} "
                         f"(../shared beside the repository)")
    budgets = sorted(minutes)
    work = Path(tempfile.mkdtemp(prefix="tinytales-quality-"))
    common = {"threads": threads, "seed": 1337, "valid": data["valid"], "max_documents": data["max_documents"],
              "preset": preset, "tokenizer": str(BUNDLED), "data": data["train"]}
    if quick:  # seconds: a tiny model, a few steps
        common.update(preset="tiny", train={"optimizer": "muon", "batch_size": 4})
        common["data"] = _tiny_tokens(work, data["train"], common["tokenizer"])
    else:
        common["data"] = _prepared(work, data["train"], common["tokenizer"])

    def one(side: str, budget: float) -> dict:
        result = run_worker("quality", {**common, "side": side, "minutes": budget, "out": str(work / f"{side}-{budget}")},
                            timeout=budget * 60 * 3 + 900)
        say(f"{clock}  {side:12s} {budget:5.2f} min: {result['steps']} steps, {result['tokens'] / 1e6:.2f}M tokens, "
            f"{result['bits_per_byte']:.4f} bpb")
        return result

    runs = []
    for i, budget in enumerate(budgets):  # alternate: TT HF, HF TT, ...
        order = ("tinytales", "transformers") if i % 2 == 0 else ("transformers", "tinytales")
        runs += [one(side, budget) for side in order]
    baseline = next(r for r in runs if r["side"] == "transformers" and r["minutes"] == budgets[-1])
    tt = sorted((r for r in runs if r["side"] == "tinytales"), key=lambda r: r["minutes"])
    shorter = budgets[0] / 2
    while tt[0]["bits_per_byte"] <= baseline["bits_per_byte"] and shorter >= (0.05 if quick else MIN_MINUTES):
        tt.insert(0, one("tinytales", shorter))
        runs.append(tt[0])
        shorter /= 2
    equal = minutes_to_reach(tt, baseline["bits_per_byte"])
    return {"benchmark": "quality", "preset": preset, "budgets": budgets, "runs": runs,
            "baseline_bpb": baseline["bits_per_byte"], "baseline_minutes": budgets[-1],
            "tinytales_minutes_to_baseline": equal,
            "time_to_equal_quality_ratio": round(budgets[-1] / equal, 2) if equal else None,
            "data": {k: str(v) for k, v in data.items()}}


def minutes_to_reach(points: list[dict], target: float) -> float | None:
    """Minutes at which bpb(minutes) reaches `target`, interpolated in log(minutes) between the runs around it."""
    for a, b in zip(points, points[1:]):
        if a["bits_per_byte"] > target >= b["bits_per_byte"]:
            t = (a["bits_per_byte"] - target) / (a["bits_per_byte"] - b["bits_per_byte"])
            return round(math.exp(math.log(a["minutes"]) + t * (math.log(b["minutes"]) - math.log(a["minutes"]))), 3)
    if points and points[0]["bits_per_byte"] <= target:
        return points[0]["minutes"]  # already there at the shortest budget tried: an upper bound
    return None


def _prepared(work: Path, source: str, tokenizer: str) -> str:
    """Token shards of the training stories, made once per run (a few seconds)."""
    from tinytales.batches import prepare

    out = work / "train-tokens"
    prepare(source, tokenizer, out, progress=False)
    return str(out)


def _tiny_tokens(work: Path, source: str, tokenizer: str) -> str:
    import itertools

    path = work / "tiny.jsonl"
    with open(source, encoding="utf-8") as f:
        path.write_text("".join(itertools.islice(f, 200)), encoding="utf-8")
    return _prepared(work, str(path), tokenizer)


def plot(result: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for side, label, style in (("tinytales", f"TinyTales (--preset {result['preset']})", "o-"),
                               ("transformers", "transformers Llama, AdamW + cosine", "s--")):
        points = sorted((r["minutes"], r["bits_per_byte"]) for r in result["runs"] if r["side"] == side)
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
    ax.axhline(result["baseline_bpb"], color="grey", lw=0.8, ls=":")
    if result["tinytales_minutes_to_baseline"]:
        ax.axvline(result["tinytales_minutes_to_baseline"], color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.xaxis.set_major_locator(FixedLocator(sorted({r["minutes"] for r in result["runs"]})))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("training minutes (wall clock, 2 threads)")
    ax.set_ylabel("bits per byte, 902 validation stories")
    ax.set_title("Story quality per CPU-minute (lower is better)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def report(result: dict) -> list[str]:
    lines = ["| minutes | TinyTales steps | TinyTales bpb | transformers steps | transformers bpb |",
             "|---:|---:|---:|---:|---:|"]
    for budget in sorted({r["minutes"] for r in result["runs"]}):
        tt = next((r for r in result["runs"] if r["side"] == "tinytales" and r["minutes"] == budget), None)
        hf = next((r for r in result["runs"] if r["side"] == "transformers" and r["minutes"] == budget), None)
        cell = lambda r, key, fmt: format(r[key], fmt) if r else "–"  # noqa: E731
        lines.append(f"| {budget:g} | {cell(tt, 'steps', ',')} | {cell(tt, 'bits_per_byte', '.4f')} | "
                     f"{cell(hf, 'steps', ',')} | {cell(hf, 'bits_per_byte', '.4f')} |")
    equal, ratio = result["tinytales_minutes_to_baseline"], result["time_to_equal_quality_ratio"]
    lines += ["", f"TinyTales reaches the baseline's {result['baseline_minutes']:g}-minute bpb "
                  f"({result['baseline_bpb']:.4f}) in {'–' if equal is None else f'{equal:.2f}'} minutes: "
                  f"{'–' if ratio is None else f'{ratio:.1f}x'} less time."]
    return lines


if __name__ == "__main__":
    worker_main(measure)
