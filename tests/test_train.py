import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinytales.checkpoint import list_checkpoints
from tinytales.config import TrainConfig, learning_rate
from tinytales.train import train


def tiny_config(tmp_path, data, **overrides) -> TrainConfig:
    settings = dict(data=str(data), val_data=str(data), out=str(tmp_path / "run"), vocab_size=300,
                    max_steps=12, checkpoint_every=4, eval_every=6, eval_batches=2, log_every=1,
                    progress=False, plot=False, precision="fp32", model={"dropout": 0.1})
    settings.update(overrides)
    return TrainConfig.from_sources(preset="tiny", **settings)


def losses(history: dict) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in history["steps"]]


def test_training_lowers_the_loss_and_writes_a_model(tmp_path, jsonl_file):
    result = train(tiny_config(tmp_path, jsonl_file, max_steps=40, plot=True))
    steps = result.history["steps"]
    assert steps[-1]["loss"] < steps[0]["loss"] - 1.0
    assert (result.model_dir / "model.safetensors").exists()
    assert (result.run_dir / "loss.png").stat().st_size > 1000
    assert result.history["evals"] and result.history["evals"][-1]["step"] == 40
    card = json.loads((result.model_dir / "card.json").read_text())
    assert card["training"]["steps"] == 40 and card["parameters"] > card["parameters_without_embeddings"]


def test_resume_continues_with_the_same_losses(tmp_path, jsonl_file):
    full = train(tiny_config(tmp_path / "a", jsonl_file))
    first = train(tiny_config(tmp_path / "b", jsonl_file, max_steps=12))
    # Drop the last checkpoints so that the run resumes from step 4, mid-way.
    for path in list_checkpoints(first.run_dir)[1:]:
        import shutil
        shutil.rmtree(path)
    resumed = train(tiny_config(tmp_path / "b", jsonl_file, resume="auto"))
    assert losses(resumed.history) == losses(full.history)
    assert [(r["epoch"], r["steps"], r["loss"]) for r in resumed.history["epochs"]] == [
        (r["epoch"], r["steps"], r["loss"]) for r in full.history["epochs"]]
    assert resumed.history["evals"] == [
        {**e, "elapsed": r["elapsed"]} for e, r in zip(full.history["evals"], resumed.history["evals"])]


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path, jsonl_file):
    """kill -9 at an arbitrary moment, then --resume auto: the same losses, step for step."""
    def command(out: Path, resume: bool):
        return [sys.executable, "-m", "tinytales", "train", "--preset", "tiny", "--data", str(jsonl_file),
                "--out", str(out), "--vocab-size", "300", "--max-steps", "150", "--checkpoint-every", "7",
                "--precision", "fp32", "--seed", "3", "--dropout", "0.1", "--threads", "1"] + (
                    ["--resume", "auto"] if resume else [])

    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(command(tmp_path / "full", False), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(command(tmp_path / "killed", False), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list_checkpoints(tmp_path / "killed")) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model").exists()
    subprocess.run(command(tmp_path / "killed", True), check=True, env=env, capture_output=True)
    full = json.loads((tmp_path / "full" / "history.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert losses(resumed) == losses(full)


def test_every_training_setting_has_a_flag_with_its_default():
    from dataclasses import fields

    from typer.testing import CliRunner

    from tinytales.cli import app

    text = " ".join(CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).stdout.replace("│", " ").split())
    for f in fields(TrainConfig):
        if f.name in ("model", "progress", "plot"):
            continue
        assert f"--{f.name.replace('_', '-')}" in text, f.name
    assert "(default: 1.0)" in text and "--model-setting" in text  # epochs' default, and the model settings


def test_a_typo_in_a_model_setting_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model settings \['n_layers'\]"):
        TrainConfig.from_sources(data="x", out=str(tmp_path), model={"n_layers": 2})
    config_file = tmp_path / "c.yaml"
    config_file.write_text("data: x\nmodel:\n  n_embed: 64\n")
    with pytest.raises(ValueError, match="n_embed"):
        TrainConfig.from_sources(config_file=str(config_file), out=str(tmp_path))


def test_model_settings_from_the_command_line(tmp_path, jsonl_file):
    from typer.testing import CliRunner

    from tinytales.cli import app

    result = CliRunner().invoke(app, ["train", "--preset", "tiny", "--data", str(jsonl_file), "--out", str(tmp_path),
                                      "--vocab-size", "300", "--max-steps", "1", "--model-setting", "n_layer=1",
                                      "--model-setting", "qk_norm=true", "--json"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run.json").read_text())["model"]
    assert saved["n_layer"] == 1 and saved["qk_norm"] is True
    bad = CliRunner().invoke(app, ["train", "--data", "x", "--model-setting", "n_layer"])
    assert bad.exit_code == 1 and "KEY=VALUE" in bad.output


def test_a_run_without_a_terminal_logs_plain_lines(tmp_path, jsonl_file):
    """nohup, CI and notebooks see the run as it goes: flushed lines on stderr, stdout left to --json."""
    command = [sys.executable, "-m", "tinytales", "train", "--preset", "tiny", "--data", str(jsonl_file),
               "--val-data", str(jsonl_file), "--out", str(tmp_path / "run"), "--vocab-size", "300", "--max-steps", "6",
               "--log-every", "2", "--checkpoint-every", "3", "--eval-every", "3", "--threads", "1", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == 6  # stdout: the JSON only
    lines = done.stderr.splitlines()
    logged = [line for line in lines if line.startswith("step ") and "tok/s" in line]
    assert [line.split()[1] for line in logged] == ["1/6", "2/6", "4/6", "6/6"]
    assert all("loss " in line and "lr " in line and "eta " in line for line in logged)
    assert any("val loss" in line for line in lines) and any("checkpoint written" in line for line in lines)


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, jsonl_file):
    big = train(tiny_config(tmp_path / "big", jsonl_file, batch_size=8, grad_accum=1, max_steps=3,
                            model={"dropout": 0.0}, mode="packed"))
    small = train(tiny_config(tmp_path / "small", jsonl_file, batch_size=4, grad_accum=2, max_steps=3,
                              model={"dropout": 0.0}, mode="packed"))
    # the same 8 windows per step either way; equal losses after updates mean equal (correctly scaled) gradients
    for a, b in zip(small.history["steps"], big.history["steps"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)


def test_padded_mode_trains(tmp_path, jsonl_file):
    result = train(tiny_config(tmp_path, jsonl_file, mode="padded", max_steps=20))
    steps = result.history["steps"]
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_fine_tune_starts_from_the_given_model(tmp_path, jsonl_file):
    base = train(tiny_config(tmp_path / "base", jsonl_file, max_steps=30))
    tuned = train(tiny_config(tmp_path / "tuned", jsonl_file, init_from=str(base.model_dir), max_steps=2))
    fresh = train(tiny_config(tmp_path / "fresh", jsonl_file, max_steps=2))
    assert tuned.history["steps"][0]["loss"] < fresh.history["steps"][0]["loss"] - 1.0
    card = json.loads((tuned.model_dir / "card.json").read_text())
    assert card["training"]["init_from"] == str(base.model_dir)


def test_schedule_warms_up_then_decays():
    config = TrainConfig(data="x", lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(s, 100, config) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    wsd = TrainConfig(data="x", lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    lrs = [learning_rate(s, 100, wsd) for s in range(100)]
    assert lrs[50] == 1.0 and lrs[79] == 1.0 and lrs[99] == pytest.approx(0.0)


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: a.jsonl\nlr: 0.01\nmodel:\n  n_layer: 3\n")
    config = TrainConfig.from_sources(preset="tiny", config_file=str(path), lr=0.02)
    assert config.lr == 0.02 and config.model["n_layer"] == 3 and config.model["n_embd"] == 32
    path.write_text("learning_rate: 0.01\n")
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainConfig.from_sources(config_file=str(path))


def test_weight_decay_only_on_matrices(tiny_model):
    decay, no_decay = tiny_model.param_groups(0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) > 0


def test_cli_train_then_plot(tmp_path, jsonl_file):
    from typer.testing import CliRunner

    from tinytales.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--preset", "tiny", "--data", str(jsonl_file), "--out", str(out),
                                 "--vocab-size", "300", "--max-steps", "5", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 5
    result = runner.invoke(app, ["plot", str(out), "--out", str(tmp_path / "curves.png")])
    assert result.exit_code == 0 and (tmp_path / "curves.png").exists()
    result = runner.invoke(app, ["train", "--preset", "nope", "--data", str(jsonl_file)])
    assert result.exit_code == 1 and "unknown preset 'nope'" in result.output
    result = runner.invoke(app, ["train", "--preset", "tiny", "--data", str(jsonl_file), "--out", str(out),
                                 "--resume", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "not a checkpoint" in result.output


def test_budget_schedule_follows_the_share_of_time_used():
    wsd = TrainConfig(data="x", lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert learning_rate(3, None, wsd, budget_used=0.5) == pytest.approx(0.4)  # warmup is still counted in steps
    assert learning_rate(50, None, wsd, budget_used=0.79) == 1.0
    assert learning_rate(50, None, wsd, budget_used=0.9) == pytest.approx(0.5)
    assert learning_rate(50, None, wsd, budget_used=1.3) == pytest.approx(0.0)  # never below the floor
    cosine = TrainConfig(data="x", lr=1.0, warmup_steps=0, min_lr_ratio=0.1)
    assert learning_rate(50, None, cosine, budget_used=0.5) == pytest.approx(0.55)


def test_a_time_budget_trains_until_it_is_spent_and_ends_decayed(tmp_path, jsonl_file):
    result = train(tiny_config(tmp_path, jsonl_file, minutes=0.05, max_steps=None, epochs=None, checkpoint_every=10**6,
                               eval_every=10**6, schedule="wsd", min_lr_ratio=0.0, warmup_steps=2))
    steps = result.history["steps"]
    assert result.steps > 5 and steps[-1]["step"] == result.steps
    assert steps[-1]["elapsed"] >= 3.0  # 0.05 minutes
    assert max(r["lr"] for r in steps) == pytest.approx(3e-3)  # the tiny preset's peak
    assert steps[-1]["lr"] < 0.5 * 3e-3  # ended in the decay
    assert result.history["evals"][-1]["step"] == result.steps  # evaluated at the end
    assert list_checkpoints(result.run_dir)[-1].name == f"step-{result.steps:08d}"
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["minutes"] == 0.05 and run["total_steps"] is None


def test_muon_trains_matrices_adamw_the_rest_and_resumes_exactly(tmp_path, jsonl_file):
    from tinytales.optim import Optimizers

    full = train(tiny_config(tmp_path / "a", jsonl_file, optimizer="muon", muon_lr=0.02))
    assert full.history["steps"][-1]["loss"] < full.history["steps"][0]["loss"]
    first = train(tiny_config(tmp_path / "b", jsonl_file, optimizer="muon", muon_lr=0.02))
    for path in list_checkpoints(first.run_dir)[1:]:
        import shutil
        shutil.rmtree(path)
    # resumed with --optimizer adamw by mistake: the run keeps the optimizer it began with
    resumed = train(tiny_config(tmp_path / "b", jsonl_file, optimizer="adamw", resume="auto"))
    assert losses(resumed.history) == losses(full.history)

    from tinytales.train import make_optimizer

    model = full.model
    optimizer = make_optimizer(model, TrainConfig(data="x", optimizer="muon"), torch.device("cpu"))
    assert isinstance(optimizer, Optimizers)
    muon_params = {id(p) for g in optimizer.optimizers["muon"].param_groups for p in g["params"]}
    block_matrices = {id(p) for p in model.blocks.parameters() if p.dim() == 2}
    assert muon_params == block_matrices  # embeddings / output layer / norms go to AdamW
    adam_params = {id(p) for g in optimizer.optimizers["adamw"].param_groups for p in g["params"]}
    assert adam_params | muon_params == {id(p) for p in model.parameters()} and not adam_params & muon_params


def test_orthogonalize_flattens_the_singular_values():
    from tinytales.optim import orthogonalize

    torch.manual_seed(0)
    for shape in ((64, 16), (16, 64)):
        k = min(shape)
        u, v = torch.linalg.qr(torch.randn(shape[0], k))[0], torch.linalg.qr(torch.randn(shape[1], k))[0]
        g = u @ torch.diag(torch.logspace(-1, 1, k)) @ v.T  # singular values 0.1 .. 10
        before, after = torch.linalg.svdvals(g), torch.linalg.svdvals(orthogonalize(g))
        assert orthogonalize(g).shape == g.shape
        assert before.max() / before.min() > 30
        assert after.min() > 0.3 and after.max() < 1.3  # about U V^T: every direction moves about as much


def test_new_runs_get_the_recipe_and_resumed_runs_keep_their_own_settings(tmp_path, jsonl_file):
    fresh = TrainConfig.from_sources(data="stories.jsonl")
    assert fresh.preset == "story" and fresh.optimizer == "muon" and fresh.model["position"] == "rope"
    tuned = TrainConfig.from_sources(data="stories.jsonl", init_from="runs/x/model")  # keeps that model's shape
    assert tuned.preset is None and tuned.model == {}
    first = train(tiny_config(tmp_path, jsonl_file, max_steps=4, optimizer="adamw", lr=5e-3))
    # resumed with no preset and other flags: the run's own settings, what is given now on top
    again = TrainConfig.from_sources(data=str(jsonl_file), out=str(first.run_dir), resume="auto", max_steps=6)
    assert (again.preset, again.optimizer, again.lr, again.max_steps) == ("tiny", "adamw", 5e-3, 6)
    assert again.model["n_embd"] == 32 and again.model["dropout"] == 0.1
    resumed = train(again)
    assert resumed.steps == 6 and losses(resumed.history)[:4] == losses(first.history)[:4]


# ----------------------------------------------------------------------------- hardening

def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, jsonl_file):
    """--lr 1e30 trained to the end on NaN and saved NaN checkpoints and model: now it stops, naming the step."""
    from tinytales.formats import load_model

    config = tiny_config(tmp_path, jsonl_file, lr=1e30, warmup_steps=0, checkpoint_every=1, val_data=None)
    with pytest.raises(ValueError, match=r"at step (\d+): training diverged; lower --lr") as info:
        train(config)
    assert "\n" not in str(info.value)
    import re

    step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    saved = list_checkpoints(tmp_path / "run")
    assert all(int(p.name.split("-")[1]) < step for p in saved)  # nothing written after the non-finite loss
    assert not (tmp_path / "run" / "model").exists()
    for checkpoint in saved:
        load_model(checkpoint)  # finite weights (a NaN model refuses to load)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from conftest import make_stories

    root = tmp_path_factory.mktemp("trained")
    data = root / "stories.jsonl"
    data.write_text("".join(json.dumps({"text": s}) + "\n" for s in make_stories()), encoding="utf-8")
    train(tiny_config(root, data, max_steps=8, val_data=None))
    return root / "run", data


def broken_copy(trained_run, tmp_path, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    newest = list_checkpoints(run)[-1]
    target = newest / {"weights": "model.safetensors", "state": "state.json", "trainer": "trainer.pt"}[damage]
    data = target.read_bytes()
    target.write_bytes(b"" if damage == "state" else data[:len(data) // 2])
    return run, target


@pytest.mark.parametrize("damage", ["weights", "state", "trainer"])
def test_resume_auto_falls_back_from_a_broken_newest_checkpoint(trained_run, tmp_path, damage):
    from tinytales.checkpoint import resolve_resume

    run, broken = broken_copy(trained_run, tmp_path, damage)
    with pytest.warns(UserWarning, match=f"skipping 1 broken checkpoint.*{broken.name}.*step-00000004"):
        assert resolve_resume("auto", run).name == "step-00000004"


def test_resume_auto_after_a_broken_checkpoint_trains_on(trained_run, tmp_path):
    run, _ = broken_copy(trained_run, tmp_path, "state")
    with pytest.warns(UserWarning, match="skipping 1 broken checkpoint"):
        result = train(tiny_config(tmp_path, trained_run[1], max_steps=10, val_data=None, resume="auto"))
    assert result.steps == 10 and result.history["steps"][0]["step"] == 1


def test_resume_auto_names_every_file_when_no_checkpoint_is_whole(trained_run, tmp_path):
    from tinytales.checkpoint import resolve_resume

    run, first = broken_copy(trained_run, tmp_path, "state")
    second = list_checkpoints(run)[0] / "trainer.pt"
    second.write_bytes(b"")
    with pytest.raises(ValueError) as info:
        resolve_resume("auto", run)
    assert str(first) in str(info.value) and str(second) in str(info.value) and "\n" not in str(info.value)


def test_keep_last_must_be_positive_and_a_lost_history_is_warned_about(trained_run, tmp_path):
    import shutil

    from tinytales.checkpoint import resolve_resume

    with pytest.raises(ValueError, match="keep_last must be an integer >= 1, got -5"):
        TrainConfig(data="x", keep_last=-5)
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    shutil.rmtree(run / "checkpoints")
    with pytest.warns(UserWarning, match="trained 8 steps .* no checkpoint left.*starts again from step 0"):
        assert resolve_resume("auto", run) is None


def test_stale_temporary_folders_of_killed_runs_are_removed(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale = [run / "checkpoints" / f".step-00000012.tmp-{dead}", run / f".model.tmp-{dead}"]
    for folder in stale:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    mine = run / "checkpoints" / f".step-00000099.tmp-{os.getpid()}"  # this process's: not stale
    mine.mkdir()
    train(tiny_config(tmp_path, trained_run[1], max_steps=9, val_data=None, resume="auto"))
    assert not any(p.exists() for p in stale) and mine.exists()


def test_disk_full_while_checkpointing_is_one_line_and_leaves_no_temporary_folder(tmp_path, jsonl_file,
                                                                                 monkeypatch):
    import errno

    from typer.testing import CliRunner

    from tinytales import checkpoint
    from tinytales.cli import app

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--preset", "tiny", "--data", str(jsonl_file), "--out", str(out),
                                      "--vocab-size", "300", "--max-steps", "3", "--checkpoint-every", "2",
                                      "--precision", "fp32"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if not line.startswith("step ")]  # progress lines
    assert len(errors) == 1 and errors[0].startswith("error:"), result.stderr
    assert "No space left on device" in errors[0] and "step-00000002" in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
