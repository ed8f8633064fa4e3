"""What the benchmarks share: machine facts, fresh worker processes, medians, result files.

Every measurement runs in a fresh Python process (`python -m bench.<module> --worker SPEC`) so that
allocator state, autocast weight caches and imported libraries of one measurement never touch the
next, and so that `resource.getrusage(...).ru_maxrss` is that measurement's own peak memory. A worker
prints one JSON object as its last stdout line.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
SHARED = REPO.parent / "shared"
TRAINING_JOB = "tinytales train --config"  # a long job some engineers run on this machine


def thread_env(threads: int) -> dict:
    """Environment for a worker: one thread count for torch, OpenMP, MKL and tokenizers; no hub."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_worker(module: str, spec: dict, timeout: float = 600) -> dict:
    """Run `python -m bench.<module> --worker SPEC` in a fresh process; its last stdout line is JSON."""
    command = [sys.executable, "-m", f"bench.{module}", "--worker", json.dumps(spec)]
    done = subprocess.run(command, cwd=REPO, env=thread_env(spec.get("threads", 2)), capture_output=True,
                          text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker bench.{module} failed (exit {done.returncode}) for {spec}:\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def worker_main(measure) -> None:
    """Entry point of a worker module: `python -m bench.x --worker SPEC` prints measure(spec) as JSON."""
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit(f"usage: python -m {measure.__module__} --worker SPEC_JSON (normally started by python -m bench)")
    spec = json.loads(sys.argv[2])
    import torch

    torch.set_num_threads(spec.get("threads", 2))
    result = measure(spec)
    result["peak_rss_mb"] = peak_rss_mb()
    result["load_1min"] = round(os.getloadavg()[0], 2)  # well above the thread count: someone else was busy
    print(json.dumps(result), flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values) -> float:
    return float(statistics.median(values))


def training_job_running() -> bool:
    """True while a `tinytales train --config` job shares the CPU (timings would be disturbed)."""
    done = subprocess.run(["pgrep", "-f", TRAINING_JOB], capture_output=True, text=True)
    mine = {str(os.getpid()), str(os.getppid())}
    return any(pid not in mine for pid in done.stdout.split())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    except OSError:
        pass
    return []


def machine_info(threads: int) -> dict:
    import torch

    info = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
        "torch": torch.__version__, "threads": threads, "python": platform.python_version(),
        "bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "training_job_running": training_job_running(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    try:
        import tokenizers

        info["tokenizers"] = tokenizers.__version__
    except ImportError:
        pass
    return info


def _git_commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or None


def write_results(name: str, data: dict, out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


class Clock:
    """Seconds since creation, for progress lines."""

    def __init__(self):
        self.start = time.perf_counter()

    def __str__(self) -> str:
        return f"{time.perf_counter() - self.start:6.1f}s"


def say(message: str) -> None:
    print(message, flush=True)


def ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 2) if theirs else None


def transformers_twin(model, vocab_size: int | None = None):
    """The same network as a transformers model (GPT2LMHeadModel or LlamaForCausalLM) with the same weights.

    `vocab_size` below the model's keeps only the first rows of the embedding: the vocabulary a
    transformers user would configure for the tokenizer (TinyTales pads it to a multiple of 64).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tinytales.formats.hf import hf_architecture, hf_config_dict, to_hf_state

    config = model.config
    vocab_size = vocab_size or config.vocab_size
    arch = hf_architecture(config)
    settings = hf_config_dict(config, arch, eot_id=0, bos_id=0, dtype=torch.float32)
    settings.update(vocab_size=vocab_size, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    settings.pop("torch_dtype", None)
    settings["loss_type"] = "ForCausalLM"
    hf_config = AutoConfig.for_model(**{k: v for k, v in settings.items() if k != "architectures"})
    hf_config._attn_implementation = "sdpa"
    hf_config.loss_type = "ForCausalLM"
    hf_model = AutoModelForCausalLM.from_config(hf_config)
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    hf_state = to_hf_state(state, config, arch)
    for name, tensor in hf_state.items():
        vocab_rows = name.endswith(("wte.weight", "embed_tokens.weight", "lm_head.weight"))
        if vocab_rows and tensor.size(0) == config.vocab_size:
            hf_state[name] = tensor[:vocab_size]
    missing, unexpected = hf_model.load_state_dict(hf_state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto {type(hf_model).__name__}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    if config.tie_embeddings:
        hf_model.tie_weights()
    hf_model.generation_config.eos_token_id = None
    hf_model.generation_config.pad_token_id = 0
    return hf_model
