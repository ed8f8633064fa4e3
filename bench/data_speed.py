"""Data preparation throughput: MB/s of story text into token shards with tinytales.batches.prepare.

Sources: ../shared/data/tinystories/valid.jsonl (0.76 MB) and the first `part_mb` MB of
train.jsonl (copied to a temporary file, never into the repository). Tokenizers: GPT-2's (50,257
ids) and a 4,096-id BPE (data/tok4k when present, else one trained on valid.jsonl). Besides the
whole of `prepare` (read, clean, encode, write), each worker times reading + cleaning alone
(`iter_documents`) and encoding alone (`encode_batch`), so the figures show where the time goes.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from .common import REPO, SHARED, Clock, median, run_worker, say, worker_main

TINYSTORIES = SHARED / "data" / "tinystories"
GPT2_DIR = SHARED / "tokenizers" / "gpt2"
BENCH_TMP = Path(tempfile.gettempdir()) / "tinytales-bench"


def tokenizer_4k():
    """A 4,096-id BPE: data/tok4k (the bundled model's) when present, else trained on valid.jsonl (cached)."""
    from tinytales.stories import train_tokenizer
    from tinytales.tokenizer import load_tokenizer

    for folder in (REPO / "data" / "tok4k", BENCH_TMP / "tok4k"):
        if (folder / "tokenizer.json").exists():
            return load_tokenizer(folder)
    valid = TINYSTORIES / "valid.jsonl"
    if not valid.exists():
        raise FileNotFoundError(f"{valid} not found: the data benchmark needs ../shared beside the repository")
    return train_tokenizer(valid, 4096, BENCH_TMP / "tok4k")


def resolve(name: str):
    from tinytales.tokenizer import gpt2_tokenizer

    return gpt2_tokenizer(GPT2_DIR) if name == "gpt2" else tokenizer_4k()


def source_path(source: str, part_mb: float) -> Path:
    """valid.jsonl itself, or a file of the first part_mb MB of train.jsonl (whole lines)."""
    if source == "valid":
        return TINYSTORIES / "valid.jsonl"
    part = BENCH_TMP / f"train-first-{part_mb:g}MB.jsonl"
    if not part.exists():
        BENCH_TMP.mkdir(parents=True, exist_ok=True)
        limit, written = part_mb * 1e6, 0
        tmp = part.with_suffix(".tmp")
        with open(TINYSTORIES / "train.jsonl", "rb") as src, open(tmp, "wb") as dst:
            for line in src:
                if written >= limit:
                    break
                dst.write(line)
                written += len(line)
        tmp.replace(part)
    return part


# ----------------------------------------------------------------------------- one measurement (a worker)

def measure(spec: dict) -> dict:
    from tinytales.batches import prepare
    from tinytales.stories import iter_documents

    tokenizer = resolve(spec["tokenizer"])
    path = source_path(spec["source"], spec.get("part_mb", 8))
    out = Path(tempfile.mkdtemp(prefix="prepare-", dir=BENCH_TMP))
    try:
        started = time.perf_counter()
        meta = prepare(path, tokenizer, out / "tokens", progress=False)
        prepare_s = time.perf_counter() - started

        started = time.perf_counter()
        texts = list(iter_documents(path))
        read_clean_s = time.perf_counter() - started

        started = time.perf_counter()
        for i in range(0, len(texts), 512):  # prepare's chunks of stories
            tokenizer.encode_batch(texts[i:i + 512])
        encode_s = time.perf_counter() - started
    finally:
        shutil.rmtree(out, ignore_errors=True)
    megabytes = meta["bytes"] / 1e6
    return {"source": spec["source"], "tokenizer": spec["tokenizer"], "file_mb": round(path.stat().st_size / 1e6, 2),
            "text_mb": round(megabytes, 2), "documents": meta["documents"], "tokens": meta["tokens"],
            "prepare_mb_per_s": megabytes / prepare_s, "read_clean_mb_per_s": megabytes / read_clean_s,
            "encode_mb_per_s": megabytes / encode_s, "tokens_per_s": meta["tokens"] / prepare_s,
            "prepare_s": prepare_s}


# ----------------------------------------------------------------------------- the benchmark

def run(reps: int = 3, threads: int = 2, sources: list[str] | None = None, tokenizers: list[str] | None = None,
        part_mb: float = 8) -> dict:
    clock = Clock()
    if not (TINYSTORIES / "valid.jsonl").exists():
        raise FileNotFoundError(f"{TINYSTORIES} not found: the data benchmark reads ../shared's TinyStories")
    tokenizer_4k()  # trained once here, not inside a timed worker
    rows = []
    for source in sources or ["valid", "train-part"]:
        for name in tokenizers or ["4k", "gpt2"]:
            results = [run_worker("data_speed", {"source": source, "tokenizer": name, "threads": threads,
                                                 "part_mb": part_mb}) for _ in range(reps)]
            row = {"source": source, "tokenizer": name, **{k: results[0][k] for k in
                                                          ("file_mb", "text_mb", "documents", "tokens")}}
            for key in ("prepare_mb_per_s", "read_clean_mb_per_s", "encode_mb_per_s", "tokens_per_s"):
                row[key] = round(median(r[key] for r in results), 2)
            row["peak_rss_mb"] = round(median(r["peak_rss_mb"] for r in results), 1)
            rows.append(row)
            say(f"[{clock}] prepare {source:10s} {name:4s}: {row['prepare_mb_per_s']:.2f} MB/s "
                f"(read+clean {row['read_clean_mb_per_s']:.1f} MB/s, encode {row['encode_mb_per_s']:.2f} MB/s), "
                f"{row['tokens_per_s']:,.0f} tokens/s")
    return {"benchmark": "data", "reps": reps, "part_mb": part_mb, "results": rows,
            "method": "tinytales.batches.prepare into a temporary folder, fresh process per run, median; MB = "
                      "UTF-8 MB of story text; encode = encode_batch in prepare's chunks of 512 stories"}


if __name__ == "__main__":
    worker_main(measure)
