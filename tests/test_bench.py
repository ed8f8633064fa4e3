"""The benchmarks (bench/): each runs for one tiny iteration and writes its JSON; the CLI delegates to them.
(The fast paths they measure are checked against the plain computations in tests/test_fast_paths.py.)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tinytales.cli import app
from tinytales.model import GPT, GPTConfig

from conftest import needs_shared

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ lives beside the package, not inside it
    sys.path.insert(0, str(REPO))
MACHINE_KEYS = {"cpu", "cores", "torch", "threads", "bf16_native", "transformers", "training_job_running"}


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


# ----------------------------------------------------------------------------- pieces of the benchmarks

def test_transformers_twin_computes_the_same_logits():
    from bench.common import transformers_twin

    torch.manual_seed(0)
    for options in ({}, {"position": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False}):
        model = GPT(GPTConfig(vocab_size=128, context_length=32, n_layer=2, n_head=2, n_embd=16, **options)).eval()
        twin = transformers_twin(model, vocab_size=120).eval()
        idx = torch.randint(0, 120, (2, 12))
        assert twin.config.vocab_size == 120
        torch.testing.assert_close(twin(idx).logits, model(idx)[0][..., :120], atol=1e-5, rtol=1e-5)


def test_bench_tokenizer_makes_every_story_run_to_max_new_tokens(tiny_model):
    from bench.generate_speed import BenchTokenizer
    from tinytales.generate import GenerationConfig, generate

    tokenizer = BenchTokenizer(300, [5, 6, 7])
    for method in ("greedy", "beam"):
        stories = generate(tiny_model, tokenizer, "ignored", GenerationConfig(method=method, max_new_tokens=12))
        assert stories[0].new_tokens == 12 and not stories[0].finished


# ----------------------------------------------------------------------------- each benchmark, one tiny iteration

def read_result(folder: Path, name: str) -> dict:
    data = json.loads((folder / f"{name}.json").read_text())
    assert MACHINE_KEYS <= set(data["machine"]) and data["machine"]["threads"] == 1
    assert data["benchmark"] == name and data["quick"] is True
    return data


@pytest.mark.slow
def test_train_benchmark_quick_run_writes_both_implementations(tmp_path):
    done = run_bench("train", "--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    row, = read_result(tmp_path, "train")["configs"]
    assert row["config"] == "tiny"
    for impl in ("tinytales", "transformers", "reference"):  # the two baselines
        assert row[impl]["tokens_per_s"] > 0 and row[impl]["gflops_per_s"] > 0 and row[impl]["peak_rss_mb"] > 100
    # the same weights: the first losses differ only by the 12 padding ids of TinyTales' vocabulary
    assert row["tinytales"]["first_loss"] == pytest.approx(row["transformers"]["first_loss"], abs=0.05)
    curves = row["loss_curves"]
    assert len(curves["tinytales"]) == len(curves["transformers"]) >= 1
    assert curves["max_difference"] == pytest.approx(
        max(abs(a - b) for a, b in zip(curves["tinytales"], curves["transformers"])), abs=1e-5)
    assert curves["max_difference"] < 0.05
    assert row["ratio"] == pytest.approx(row["tinytales"]["tokens_per_s"] / row["transformers"]["tokens_per_s"],
                                         abs=0.01)
    assert row["reference"]["first_loss"] == pytest.approx(row["tinytales"]["first_loss"], abs=1e-3)  # same network
    assert row["ratio_vs_reference"] == pytest.approx(
        row["tinytales"]["tokens_per_s"] / row["reference"]["tokens_per_s"], abs=0.01)
    assert "tok/s" in done.stdout


@pytest.mark.slow
@needs_shared("data", "tinystories", "valid.jsonl")
def test_quality_benchmark_quick_run_trains_both_sides_for_each_budget_and_reports_the_crossing(tmp_path):
    done = run_bench("quality", "--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    data = read_result(tmp_path, "quality")
    assert data["budgets"] == [0.04, 0.08]
    for side in ("tinytales", "transformers"):
        for budget in data["budgets"]:
            run, = [r for r in data["runs"] if r["side"] == side and r["minutes"] == budget]
            assert run["steps"] > 0 and 0 < run["bits_per_byte"] < 10 and run["valid_documents"] == 40
            assert run["train_seconds"] >= budget * 60  # trained for the whole budget
    sizes = {r["parameters"] for r in data["runs"]}
    assert len(sizes) == 1  # the same network on both sides
    assert data["baseline_bpb"] == next(r["bits_per_byte"] for r in data["runs"]
                                        if r["side"] == "transformers" and r["minutes"] == 0.08)
    from bench.quality import minutes_to_reach

    tt = sorted((r for r in data["runs"] if r["side"] == "tinytales"), key=lambda r: r["minutes"])
    assert data["tinytales_minutes_to_baseline"] == minutes_to_reach(tt, data["baseline_bpb"])


def test_minutes_to_reach_interpolates_in_log_minutes():
    from bench.quality import minutes_to_reach

    points = [{"minutes": 1, "bits_per_byte": 1.4}, {"minutes": 4, "bits_per_byte": 1.2},
              {"minutes": 16, "bits_per_byte": 1.0}]
    assert minutes_to_reach(points, 1.3) == pytest.approx(2.0)  # halfway between 1 and 4 in log(minutes)
    assert minutes_to_reach(points, 1.0) == pytest.approx(16.0)
    assert minutes_to_reach(points, 0.9) is None  # never reached
    assert minutes_to_reach(points, 1.5) == 1  # reached by the shortest run already


@pytest.mark.slow
def test_generate_benchmark_quick_run_writes_every_case_and_first_token_time(tmp_path):
    done = run_bench("generate", "--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    data = read_result(tmp_path, "generate")
    assert {row["case"] for row in data["results"]} == {"greedy", "sample", "beam4", "sample-batch8"}
    for row in data["results"]:
        rows = 8 if row["case"] == "sample-batch8" else 1
        assert row["new_tokens"] == row["transformers_new_tokens"] == 5 * rows  # the same work on both sides
        assert row["tinytales_tokens_per_s"] > 0 and row["transformers_tokens_per_s"] > 0
        assert row["pytorch_step_tokens_per_s"] > 0  # the C step's lever, measured in the same run
        assert row["c_step_vs_pytorch_step"] == round(row["tinytales_tokens_per_s"] / row["pytorch_step_tokens_per_s"], 2)
    assert data["time_to_first_token"]["median_first_token_s"] > 0


def test_bench_rejects_bad_arguments():
    done = run_bench("train", "--reps", "0")
    assert done.returncode == 2 and "--reps must be >= 1" in done.stderr
    done = run_bench("train", "--quick", "--configs", "huge")
    assert done.returncode != 0 and "unknown config" in done.stderr


# ----------------------------------------------------------------------------- the CLI

runner = CliRunner()


def test_cli_bench_help_has_an_example():
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0 and "tinytales bench --quick" in result.output


def test_cli_bench_errors_are_one_line_and_exit_1():
    result = runner.invoke(app, ["bench", "everything"])
    assert result.exit_code == 1 and "unknown benchmark 'everything'" in result.output
    result = runner.invoke(app, ["bench", "--steps", "0"])
    assert result.exit_code == 1 and "--steps must be >= 1" in result.output


def test_cli_bench_without_a_checkout_says_where_benchmarks_live(monkeypatch, tmp_path):
    import tinytales.cli.bench as cli_bench

    monkeypatch.setattr(cli_bench, "__file__", str(tmp_path / "tinytales" / "cli" / "bench.py"))
    result = runner.invoke(app, ["bench", "data", "--quick"])
    assert result.exit_code == 1 and "git checkout" in result.output


@pytest.mark.slow
@needs_shared("data", "tinystories", "valid.jsonl")
def test_cli_bench_runs_python_m_bench_and_streams_its_output(tmp_path):
    result = runner.invoke(app, ["bench", "data", "--quick", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert "prepare valid" in result.output
    printed = json.loads(result.output[result.output.index("{"):])
    assert printed["data"] == read_result(tmp_path, "data")
    row, = printed["data"]["results"]
    assert row["source"] == "valid" and row["tokenizer"] == "4k"
    assert row["documents"] > 800 and row["tokens"] > row["documents"]
    assert 0 < row["prepare_mb_per_s"] <= row["read_clean_mb_per_s"]


