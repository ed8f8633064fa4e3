"""Multi-process training with torchrun (gloo on CPU): the ranks stay in sync and a checkpoint resumes anywhere."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinytales.checkpoint import list_checkpoints
from tinytales.config import TrainConfig
from tinytales.train import rescale_data_state, train

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(nproc: int, *args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(WORKER), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture
def tokenizer_dir(tmp_path, tiny_tokenizer):
    folder = tmp_path / "tok"
    folder.mkdir()
    tiny_tokenizer.save(folder)
    return folder


@pytest.mark.slow
def test_two_processes_train_in_sync_and_resume_in_one(tmp_path, jsonl_file, tokenizer_dir):
    out, ranks = tmp_path / "run", tmp_path / "ranks"
    torchrun(2, jsonl_file, tokenizer_dir, out, 6, ranks)
    reports = [json.loads((ranks / f"report-{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2 and report["steps"] == 6
        # train() ended the process group it started: gloo's threads are gone before Python shuts down
        assert not report["group_initialized"]
        if report["threads"] is not None:
            assert not [name for name in report["threads"] if "gloo" in name], report["threads"]
    weights = [torch.load(ranks / f"weights-{rank}.pt") for rank in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name  # identical parameters on both ranks
    history = json.loads((out / "history.json").read_text())
    assert history["steps"][-1]["loss"] < history["steps"][0]["loss"]
    assert [p.name for p in list_checkpoints(out)][-1] == "step-00000006"
    assert not list(out.glob(".*tmp*"))  # rank 0 alone wrote; nothing half-written

    # the 2-process checkpoint resumes in a single process and goes on training
    config = TrainConfig.from_sources(preset="tiny", data=str(jsonl_file), tokenizer=str(tokenizer_dir), out=str(out),
                                      max_steps=9, checkpoint_every=3, log_every=1, progress=False, plot=False,
                                      precision="fp32", model={"dropout": 0.1}, resume="auto")
    resumed = train(config)
    assert resumed.steps == 9
    assert [r["step"] for r in resumed.history["steps"]] == list(range(1, 10))


def test_data_position_is_kept_across_process_counts():
    assert rescale_data_state({"epoch": 2, "batch": 10}, 2, 1) == {"epoch": 2, "batch": 20}
    assert rescale_data_state({"epoch": 0, "batch": 5}, 1, 2) == {"epoch": 0, "batch": 2}
    streamed = rescale_data_state({"epoch": 0, "documents": 40, "leftover": [1, 2]}, 4, 2)
    assert streamed == {"epoch": 0, "documents": 80, "leftover": []}
