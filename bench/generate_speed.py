"""Generation throughput: tinytales.generate against transformers' generate (KV cache) on the same weights,
and the time to first token of the `tinytales generate` command started cold.

Both sides get the same network (the transformers twin has the TinyTales weights, see
bench.common.transformers_twin), float32, the same 10-token prompt and exactly 200 new tokens: the
tokenizer used here has no end-of-story id, so no story stops early. Cases: greedy, sampling
(temperature 0.8, top-k 50, top-p 0.95) and beam search (4 beams) at batch 1, and sampling of 8
stories at once (batch 8). New tokens/s counts the tokens of every returned row (beam search: the
best story's). One process per configuration holds both models and alternates them, and TinyTales
with its PyTorch step instead of the C one (`fast_paths(c_step=False)`, the lever); the first round is
warm-up, then the median of `reps` rounds.
"""
from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO, Clock, median, ratio, run_worker, say, thread_env, worker_main
from .train_speed import CONFIGS

PROMPT_TOKENS = 10
NEW_TOKENS = 200
SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}
CASES: dict[str, dict] = {  # name: (batch, method, settings)
    "greedy": {"batch": 1, "method": "greedy"},
    "sample": {"batch": 1, "method": "sample", **SAMPLING},
    "beam4": {"batch": 1, "method": "beam", "num_beams": 4},
    "sample-batch8": {"batch": 8, "method": "sample", **SAMPLING},
}
DEFAULT_CONFIGS = ["seed", "4k-d128"]
TARGETS = {"greedy": 5.0, "sample": 5.0, "beam4": 3.0}
ISSUE_BASELINE = {("seed", "greedy"): 88, ("4k-d128", "greedy"): 531}
TTFT_TARGET_S = 1.5


class BenchTokenizer:
    """The tokenizer surface tinytales.generate reads, with a fixed prompt and no end-of-story id.

    The prompt's first id plays the story-start token (BOS), so the model reads exactly `prompt_ids`.
    """

    eot_id = -1  # never produced: every story runs to max_new_tokens

    def __init__(self, vocab_size: int, prompt_ids: list[int]):
        self.vocab_size, self.prompt_ids = vocab_size, prompt_ids
        self.bos_id = prompt_ids[0]

    def encode(self, text: str) -> list[int]:
        return list(self.prompt_ids[1:])

    def decode(self, ids, skip_special: bool = False) -> str:
        return " ".join(map(str, ids))


# ----------------------------------------------------------------------------- one configuration (a worker)

def measure(spec: dict) -> dict:
    import torch

    from tinytales import decoding
    from tinytales.generate import GenerationConfig, generate
    from tinytales.kernels import fast_paths
    from tinytales.model import GPT, GPTConfig

    from .common import transformers_twin

    shape = CONFIGS[spec["config"]]
    vocab = shape["vocab"]
    config = GPTConfig(vocab_size=64 * math.ceil(vocab / 64), context_length=shape["context"],
                       n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"])
    torch.manual_seed(0)
    model = GPT(config).eval()
    hf_model = transformers_twin(model, vocab).eval()
    prompt_ids = torch.randint(0, vocab, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(2)).tolist()
    tokenizer = BenchTokenizer(vocab, prompt_ids)
    new_tokens = spec.get("new_tokens", NEW_TOKENS)

    def ours(case: dict, c_step: bool = True) -> tuple[float, int]:
        settings = {k: v for k, v in case.items() if k not in ("batch",)}
        if case["method"] == "sample":
            settings["num_samples"] = case["batch"]
        gen = GenerationConfig(max_new_tokens=new_tokens, seed=0, **settings)
        with fast_paths(c_step=c_step):
            started = time.perf_counter()
            stories = generate(model, tokenizer, "prompt", gen)
            seconds = time.perf_counter() - started
        counted = stories[:1] if case["method"] == "beam" else stories
        return seconds, sum(s.new_tokens for s in counted)

    def theirs(case: dict) -> tuple[float, int]:
        ids = torch.tensor([prompt_ids])
        settings = {"max_new_tokens": new_tokens, "min_new_tokens": None, "use_cache": True, "pad_token_id": 0,
                    "eos_token_id": None}
        if case["method"] == "greedy":
            settings.update(do_sample=False, num_beams=1)
        elif case["method"] == "beam":
            settings.update(do_sample=False, num_beams=case["num_beams"], early_stopping=True)
        else:
            settings.update(do_sample=True, num_return_sequences=case["batch"],
                            **{k: case[k] for k in ("temperature", "top_k", "top_p")})
        torch.manual_seed(0)
        started = time.perf_counter()
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), **settings)
        seconds = time.perf_counter() - started
        rows = 1 if case["method"] == "beam" else out.size(0)
        return seconds, rows * (out.size(1) - PROMPT_TOKENS)

    results = {}
    for name in spec.get("cases", list(CASES)):
        case = CASES[name]
        timings = {"tinytales": [], "transformers": []}
        timings["tinytales_pytorch_step"] = []
        for round_ in range(spec["reps"] + spec.get("warmup", 1)):
            order = [("tinytales", ours), ("transformers", theirs),
                     ("tinytales_pytorch_step", lambda case: ours(case, c_step=False))]  # the lever: no C step
            for impl, run in order if round_ % 2 == 0 else order[::-1]:
                seconds, tokens = run(case)
                if round_ >= spec.get("warmup", 1):
                    timings[impl].append((seconds, tokens))
        results[name] = {impl: {"tokens_per_s": median(t / s for s, t in values),
                                "new_tokens": values[0][1], "runs_seconds": [round(s, 4) for s, _ in values]}
                         for impl, values in timings.items()}
    return {"config": spec["config"], "threads": torch.get_num_threads(), "cases": results,
            "params": model.num_params(), "c_step": decoding.available()}


# ----------------------------------------------------------------------------- time to first token

def tinytales_command() -> list[str]:
    script = Path(sys.executable).with_name("tinytales")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tinytales"]


def ttft_model() -> tuple[Path, str]:
    """The bundled model when it is there; else a saved model of the same architecture (random weights)."""
    from tinytales.formats import bundled_model_path

    bundled = bundled_model_path()
    if (bundled / "config.json").exists():
        return bundled, "bundled model (tinytales/pretrained/tinytales-stories)"
    directory = Path(tempfile.gettempdir()) / "tinytales-bench" / "bundled-like"
    if not (directory / "config.json").exists():
        _save_bundled_like(directory)
    return directory, "stand-in for the bundled model: same architecture and 4K tokenizer, random weights, float16"


def _save_bundled_like(directory: Path) -> None:
    import torch
    import yaml

    from tinytales.model import GPT, GPTConfig
    from tinytales.formats import save_model

    from .data_speed import tokenizer_4k

    tokenizer = tokenizer_4k()
    settings = yaml.safe_load((REPO / "configs" / "bundled.yaml").read_text())["model"]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64 * math.ceil(tokenizer.vocab_size / 64), **settings))
    save_model(model, tokenizer, directory, card={"note": "benchmark stand-in, random weights"},
               dtype=torch.float16)


def time_to_first_token(model_dir: Path, runs: int = 3, threads: int | None = None,
                        prompt: str = "Once upon a time") -> dict:
    """Start `tinytales generate` `runs` times; seconds until the first story text reaches stdout."""
    command = [*tinytales_command(), "generate", prompt, "--model", str(model_dir), "--stream",
               "--max-new-tokens", "20", "--seed", "0"]
    env = thread_env(threads or os.cpu_count() or 1)
    if threads is None:  # what a user gets: no thread settings
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
            env.pop(key, None)
    first, total = [], []
    for _ in range(runs):
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
        seen, first_at = b"", None
        while chunk := os.read(process.stdout.fileno(), 4096):
            seen += chunk
            if first_at is None and len(seen) > len(prompt.encode()):
                first_at = time.perf_counter() - started
        error = process.stderr.read()
        if process.wait() != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {error.decode(errors='replace')[-2000:]}")
        total.append(time.perf_counter() - started)
        first.append(first_at if first_at is not None else total[-1])
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
    import_torch = time.perf_counter() - started
    return {"command": " ".join(command[len(tinytales_command()):]), "first_token_s": [round(s, 3) for s in first],
            "median_first_token_s": round(statistics.median(first), 3), "first_run_s": round(first[0], 3),
            "median_total_s": round(statistics.median(total), 3), "import_torch_s": round(import_torch, 3)}


# ----------------------------------------------------------------------------- the benchmark

def run(configs: list[str] | None = None, reps: int = 3, threads: int = 2, new_tokens: int = NEW_TOKENS,
        cases: list[str] | None = None, ttft_runs: int = 3) -> dict:
    clock = Clock()
    rows = []
    for name in configs or DEFAULT_CONFIGS:
        result = run_worker("generate_speed", {"config": name, "threads": threads, "reps": reps,
                                               "new_tokens": new_tokens, "cases": cases or list(CASES)}, timeout=900)
        for case, figures in result["cases"].items():
            ours, theirs = figures["tinytales"]["tokens_per_s"], figures["transformers"]["tokens_per_s"]
            torch_step = figures["tinytales_pytorch_step"]["tokens_per_s"]
            row = {"config": name, "case": case, **{k: v for k, v in CASES[case].items() if k != "method"},
                   "method": CASES[case]["method"], "tinytales_tokens_per_s": round(ours, 1),
                   "transformers_tokens_per_s": round(theirs, 1), "ratio": ratio(ours, theirs),
                   "c_step": result["c_step"], "pytorch_step_tokens_per_s": round(torch_step, 1),
                   "c_step_vs_pytorch_step": ratio(ours, torch_step),
                   "target_ratio": TARGETS.get(case),
                   "issue_transformers_tokens_per_s": ISSUE_BASELINE.get((name, case)),
                   "new_tokens": figures["tinytales"]["new_tokens"],
                   "transformers_new_tokens": figures["transformers"]["new_tokens"],
                   "runs_seconds": {k: v["runs_seconds"] for k, v in figures.items()}}
            row["meets_target"] = None if row["target_ratio"] is None else row["ratio"] >= row["target_ratio"]
            rows.append(row)
            say(f"[{clock}] generate {name:8s} {case:14s} TinyTales {ours:8,.0f} tok/s, transformers "
                f"{theirs:8,.0f} tok/s -> {row['ratio']}x (PyTorch step {torch_step:,.0f} tok/s)")
    ttft = None
    if ttft_runs:
        model_dir, what = ttft_model()
        ttft = {"model": what, **time_to_first_token(model_dir, ttft_runs), "target_s": TTFT_TARGET_S}
        ttft["meets_target"] = ttft["median_first_token_s"] < TTFT_TARGET_S
        say(f"[{clock}] tinytales generate, time to first token: median {ttft['median_first_token_s']} s "
            f"(first run {ttft['first_run_s']} s; `import torch` alone {ttft['import_torch_s']} s) with the {what}")
    return {"benchmark": "generate", "reps": reps, "prompt_tokens": PROMPT_TOKENS, "new_tokens": new_tokens,
            "sampling": SAMPLING, "dtype": "float32", "results": rows, "time_to_first_token": ttft,
            "method": "one process per config holding both models, alternating; first round warm-up, then the "
                      "median of reps rounds; no end-of-story id so every row runs to new_tokens"}


if __name__ == "__main__":
    worker_main(measure)
