"""Training throughput: TinyTales against transformers' GPT2LMHeadModel, same network and step.

A step is what `tinytales.train` does: forward + backward over `grad_accum` micro-batches under
the trainer's autocast (`resolve_precision`: bf16 on CPUs with native bf16), each loss weighted by
its share of tokens, gradient clipping, fused AdamW from `make_optimizer`, zero_grad. The
transformers model gets the same weights (copied from the TinyTales one), the same optimizer
settings, autocast and clipping; its loss is its own (`labels=`, `shift_labels=` so that both
models score the same tokens). TinyTales' vocabulary is padded to a multiple of 64 as the trainer
does; transformers gets the tokenizer's size, as a transformers user would configure it.

The issue's second baseline, a compact hand-written PyTorch GPT-2 (bench/reference_gpt.py, the
loss through full float32 logits), gets the same weights, step and settings too. Each measurement
is a fresh process (see bench.common); the implementations alternate and the median of `reps`
processes is reported, with model FLOP/s (6 x parameters + attention per token)
and peak RSS.
"""
from __future__ import annotations

import math
import time

from .common import Clock, median, ratio, run_worker, say, worker_main

# The issue's three configurations, and a tiny one for smoke tests.
CONFIGS: dict[str, dict] = {
    "seed": {"vocab": 50257, "context": 512, "n_embd": 256, "n_layer": 4, "n_head": 4, "batch": 8, "seq": 512},
    "4k-d256": {"vocab": 4096, "context": 256, "n_embd": 256, "n_layer": 4, "n_head": 4, "batch": 16, "seq": 256},
    "4k-d128": {"vocab": 4096, "context": 256, "n_embd": 128, "n_layer": 4, "n_head": 4, "batch": 32, "seq": 256},
    "tiny": {"vocab": 500, "context": 64, "n_embd": 32, "n_layer": 2, "n_head": 2, "batch": 2, "seq": 64},
}
DEFAULT_CONFIGS = ["seed", "4k-d256", "4k-d128"]
# transformers' GPT2LMHeadModel, and a compact hand-written PyTorch GPT (bench/reference_gpt.py): the issue's two baselines
IMPLEMENTATIONS = ["tinytales", "transformers", "reference"]
# transformers 5.23, bf16 autocast, 2 threads, measured before this benchmark existed (the issue's figures)
ISSUE_BASELINE = {"seed": 1366, "4k-d256": 5514, "4k-d128": 10701}
TARGET_RATIO = 1.5

# What else was tried, one process each: (name, settings changed, configs it is measured on); the ratio is
# against the same implementation's default (TinyTales unless the settings name transformers).
LEVERS: list[tuple[str, dict, list[str]]] = [
    ("plain loss: full float32 logits (loss_chunk_rows=0)", {"loss_chunk_rows": 0}, ["seed", "4k-d256", "4k-d128"]),
    ("loss chunks of 1024 rows (default 128)", {"loss_chunk_rows": 1024}, ["seed", "4k-d128"]),
    ("fp32, no autocast", {"precision": "fp32"}, ["seed", "4k-d128"]),
    ("1 thread", {"threads": 1}, ["4k-d128"]),
    ("torch.compile", {"compile": True, "warmup": 3}, ["4k-d128"]),
    ("malloc not tuned (glibc defaults)", {"allocator": False}, ["seed", "4k-d256", "4k-d128"]),
    ("SDPA's attention kernel instead of the CPU causal path", {"cpu_causal_path": False},
     ["seed", "4k-d256", "4k-d128"]),
    ("transformers with TinyTales' malloc tuning", {"impl": "transformers", "allocator": True},
     ["seed", "4k-d256", "4k-d128"]),
]


def step_counts(config: str) -> tuple[int, int]:
    """(warmup, timed) steps: about 10-15 s of timed work per process on a 2-core CPU."""
    return {"seed": (2, 5), "4k-d256": (2, 10), "4k-d128": (2, 10)}.get(config, (0, 1))


# ----------------------------------------------------------------------------- one measurement (a worker)

def measure(spec: dict) -> dict:
    import torch

    from tinytales.kernels import FAST
    from tinytales.model import GPT, GPTConfig
    from tinytales.allocator import tune_allocator
    from tinytales.config import TrainConfig
    from tinytales.train import autocast_context, make_optimizer, resolve_precision

    from .common import peak_rss_mb, transformers_twin

    shape = CONFIGS[spec["config"]]
    vocab = shape["vocab"]
    model_vocab = 64 * math.ceil(vocab / 64) if spec.get("pad_vocab", True) else vocab  # as tinytales.train pads
    config = GPTConfig(vocab_size=model_vocab, context_length=shape["context"], n_layer=shape["n_layer"],
                       n_head=shape["n_head"], n_embd=shape["n_embd"])
    batch, seq, accum = shape["batch"], shape["seq"], spec.get("grad_accum", 1)
    device = torch.device("cpu")
    train_config = TrainConfig(data="bench", batch_size=batch, grad_accum=accum,
                               precision=spec.get("precision", "auto"))
    precision = resolve_precision(train_config, device)

    torch.manual_seed(0)
    gpt = GPT(config)
    useful_params = gpt.num_params() - config.context_length * config.n_embd - (model_vocab - vocab) * config.n_embd
    if spec["impl"] == "reference":  # the compact hand-written GPT (bench/reference_gpt.py)
        from .reference_gpt import from_tinytales

        model = from_tinytales(gpt)
        del gpt

        def loss_of(inputs, targets):
            return forward(inputs, targets)
    elif spec["impl"] == "transformers":
        model = transformers_twin(gpt, vocab)
        del gpt
        model.param_groups = GPT.param_groups.__get__(model)  # make_optimizer's decay / no-decay split

        def loss_of(inputs, targets):
            return model(input_ids=inputs, labels=targets, shift_labels=targets).loss
    else:
        model = gpt
        if not spec.get("cpu_causal_path", True):
            FAST.cpu_attention = False  # a worker process measures one configuration
        if spec.get("loss_chunk_rows") is not None:
            FAST.loss_chunk_rows = spec["loss_chunk_rows"]

        def loss_of(inputs, targets):
            return forward(inputs, targets)[1]
    if spec.get("allocator", spec["impl"] == "tinytales"):
        tune_allocator()  # as tinytales.train does
    model.train()
    forward = torch.compile(model) if spec.get("compile") else model
    optimizer = make_optimizer(model, train_config, device)

    warmup, steps = spec["warmup"], spec["steps"]
    generator = torch.Generator().manual_seed(1)
    data = torch.randint(0, vocab, ((warmup + steps) * accum, batch, seq + 1), generator=generator)
    rss_before = peak_rss_mb()
    step_seconds, losses = [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        micro = data[step * accum:(step + 1) * accum]
        loss_sum = torch.zeros(())
        for tokens in micro:  # the trainer's step (tinytales.train.train), fp32/bf16: no grad scaler
            inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # as the loaders give them
            with autocast_context(precision, device):
                weighted = loss_of(inputs, targets) * (1 / accum)
            weighted.backward()
            loss_sum += weighted.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss_sum.item())
        if step >= warmup:
            step_seconds.append(time.perf_counter() - t0)
    tokens_per_step = batch * seq * accum
    tokens_per_s = tokens_per_step * len(step_seconds) / sum(step_seconds)
    flops_per_token = 6 * useful_params + 12 * config.n_layer * config.n_embd * seq
    return {"impl": spec["impl"], "config": spec["config"], "precision": precision, "model_vocab": model_vocab,
            "vocab": vocab, "batch": batch, "seq": seq, "grad_accum": accum, "threads": torch.get_num_threads(),
            "tokens_per_s": tokens_per_s, "gflops_per_s": tokens_per_s * flops_per_token / 1e9,
            "step_seconds": [round(s, 4) for s in step_seconds], "first_loss": losses[0], "last_loss": losses[-1],
            "losses": [round(loss, 5) for loss in losses],
            "params": useful_params, "rss_before_training_mb": rss_before}


# ----------------------------------------------------------------------------- the benchmark

def run(configs: list[str] | None = None, reps: int = 3, threads: int = 2, levers: bool = True,
        steps: int | None = None, warmup: int | None = None, lever_reps: int = 2) -> dict:
    """Alternate TinyTales and transformers processes per config; medians, ratios, then the levers."""
    clock = Clock()
    rows, lever_rows = [], []
    for name in configs or DEFAULT_CONFIGS:
        default_warmup, default_steps = step_counts(name)
        base = {"config": name, "threads": threads, "steps": steps or default_steps,
                "warmup": default_warmup if warmup is None else warmup}
        runs = {impl: [] for impl in IMPLEMENTATIONS}
        for rep in range(reps):
            for impl in IMPLEMENTATIONS if rep % 2 == 0 else IMPLEMENTATIONS[::-1]:
                result = run_worker("train_speed", {**base, "impl": impl})
                runs[impl].append(result)
                say(f"[{clock}] train {name:8s} {impl:12s} run {rep + 1}/{reps}: "
                    f"{result['tokens_per_s']:8,.0f} tok/s  peak {result['peak_rss_mb']:6,.0f} MB  "
                    f"loss {result['first_loss']:.4f}")
        row = summarize(name, runs)
        rows.append(row)
        say(f"[{clock}] train {name}: TinyTales {row['tinytales']['tokens_per_s']:,.0f} tok/s, transformers "
            f"{row['transformers']['tokens_per_s']:,.0f} tok/s -> {row['ratio']}x, reference GPT "
            f"{row['reference']['tokens_per_s']:,.0f} tok/s -> {row['ratio_vs_reference']}x; peak memory "
            f"{row['tinytales']['peak_rss_mb']:,.0f} vs {row['transformers']['peak_rss_mb']:,.0f} MB")
    if levers:
        done = {row["config"]: row for row in rows}
        for label, change, names in LEVERS:
            for name in names:
                if name not in done:
                    continue
                default_warmup, default_steps = step_counts(name)
                default_spec = {"config": name, "threads": threads, "steps": steps or default_steps,
                                "warmup": default_warmup if warmup is None else warmup,
                                "impl": change.get("impl", "tinytales")}
                spec = {**default_spec, **change}
                # each lever process is paired with a default process started right after it: on a shared
                # machine whose speed drifts, the ratio within a pair is what holds
                pairs = []
                for _ in range(lever_reps):
                    result = run_worker("train_speed", spec, timeout=900)
                    default = run_worker("train_speed", {**default_spec, "warmup": spec["warmup"]}, timeout=900)
                    pairs.append((result, default))
                result = pairs[len(pairs) // 2][0]
                lever_rows.append({"lever": label, "config": name, "impl": spec["impl"], "settings": change,
                                   "tokens_per_s": round(median(r["tokens_per_s"] for r, _ in pairs), 1),
                                   "default_tokens_per_s": round(median(d["tokens_per_s"] for _, d in pairs), 1),
                                   "vs_default": round(median(r["tokens_per_s"] / d["tokens_per_s"] for r, d in pairs), 2),
                                   "pair_ratios": [round(r["tokens_per_s"] / d["tokens_per_s"], 3) for r, d in pairs],
                                   "peak_rss_mb": round(median(r["peak_rss_mb"] for r, _ in pairs), 1),
                                   "first_loss": result["first_loss"]})
                row = lever_rows[-1]
                say(f"[{clock}] lever {label} ({name}): {row['tokens_per_s']:,.0f} tok/s against "
                    f"{row['default_tokens_per_s']:,.0f} -> {row['vs_default']}x (pairs {row['pair_ratios']}), "
                    f"peak {row['peak_rss_mb']:,.0f} MB")
    return {"benchmark": "train", "reps": reps, "target_ratio": TARGET_RATIO, "configs": rows, "levers": lever_rows,
            "method": "median of fresh processes per implementation, alternating; tokens/s over the timed steps "
                      "after warmup; FLOPs = 6 x parameters (real vocabulary, no position table) + "
                      "12 x layers x n_embd x seq per token; peak = ru_maxrss of the process"}


def summarize(name: str, runs: dict) -> dict:
    row = {"config": name, **{k: CONFIGS[name][k] for k in ("vocab", "n_embd", "n_layer", "n_head", "batch", "seq")}}
    for impl, results in runs.items():
        row[impl] = {
            "tokens_per_s": round(median(r["tokens_per_s"] for r in results), 1),
            "gflops_per_s": round(median(r["gflops_per_s"] for r in results), 2),
            "peak_rss_mb": round(median(r["peak_rss_mb"] for r in results), 1),
            "training_memory_mb": round(median(r["peak_rss_mb"] - r["rss_before_training_mb"] for r in results), 1),
            "first_loss": results[0]["first_loss"], "precision": results[0]["precision"],
            "model_vocab": results[0]["model_vocab"],
            "runs_tokens_per_s": [round(r["tokens_per_s"], 1) for r in results],
            "runs_load_1min": [r["load_1min"] for r in results],
        }
    # the same weights, data and optimizer on both sides: the loss curves should agree to bf16 rounding
    curves = [runs[impl][0].get("losses") for impl in ("tinytales", "transformers")]
    if all(curves):
        row["loss_curves"] = {"tinytales": curves[0], "transformers": curves[1],
                              "max_difference": round(max(abs(a - b) for a, b in zip(*curves)), 5)}
    row["ratio"] = ratio(row["tinytales"]["tokens_per_s"], row["transformers"]["tokens_per_s"])
    row["ratio_vs_reference"] = ratio(row["tinytales"]["tokens_per_s"], row["reference"]["tokens_per_s"])
    row["meets_target"] = row["ratio"] is not None and row["ratio"] >= TARGET_RATIO
    row["memory_at_most_transformers"] = row["tinytales"]["peak_rss_mb"] <= row["transformers"]["peak_rss_mb"]
    row["issue_transformers_tokens_per_s"] = ISSUE_BASELINE.get(name)
    return row


if __name__ == "__main__":
    worker_main(measure)
