"""Experiment trackers (tinytales.trackers): what TensorBoard's event files and an offline W&B run hold, read back
with their own readers, is what the training log recorded; resumed runs go on in the same log; a missing package
is one line before any work."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tinytales.checkpoint import list_checkpoints
from tinytales.config import TrainConfig
from tinytales.train import train
from tinytales.trackers import Trackers, open_trackers

METRICS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens_per_s": "train/tokens_per_s"}


def run_config(tmp_path, data, **overrides) -> TrainConfig:
    settings = dict(data=str(data), val_data=str(data), out=str(tmp_path / "run"), vocab_size=300, max_steps=6,
                    checkpoint_every=3, eval_every=3, eval_batches=1, log_every=1, progress=False, plot=False,
                    precision="fp32", model={"dropout": 0.0})
    settings.update(overrides)
    return TrainConfig.from_sources(preset="tiny", **settings)


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tensorboard_text(log_dir: Path, tag: str) -> str:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return events.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()


def wandb_records(path: Path):
    """The records of an offline run's .wandb file (LevelDB's log format: 32 KiB blocks of records, each with a
    7-byte header: checksum, length, type), as wandb's protobuf `Record`s; wandb no longer ships a reader."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", data[:7]
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(path: Path) -> dict:
    """run id, config and the logged rows {step: {metric: value}} of an offline run."""
    run = {"rows": {}}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"], run["project"] = record.run.run_id, record.run.project
            run["config"] = {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            run["rows"].setdefault(record.history.step.num, {}).update(row)
    return run


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)  # the run's files go beside it, in RUN/wandb
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))


def test_tensorboard_event_files_hold_every_logged_step_and_evaluation(tmp_path, jsonl_file):
    pytest.importorskip("tensorboard")
    result = train(run_config(tmp_path, jsonl_file, tensorboard=True))
    scalars = tensorboard_scalars(result.run_dir / "tensorboard")
    for key, tag in METRICS.items():
        assert [step for step, _ in scalars[tag]] == [r["step"] for r in result.history["steps"]], tag
        assert [value for _, value in scalars[tag]] == pytest.approx([r[key] for r in result.history["steps"]],
                                                                      rel=1e-6), tag
    assert [step for step, _ in scalars["val/loss"]] == [3, 6]
    assert dict(scalars["val/loss"]) == pytest.approx({e["step"]: e["val_loss"] for e in result.history["evals"]})
    config = json.loads(tensorboard_text(result.run_dir / "tensorboard", "config"))
    assert config["config"]["preset"] == "tiny" and config["model"]["n_layer"] == result.model.config.n_layer


def test_an_offline_wandb_run_holds_the_metrics_and_the_config(tmp_path, jsonl_file, wandb_offline):
    result = train(run_config(tmp_path, jsonl_file, wandb="tinytales-tests"))
    [path] = (result.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    run = wandb_run(path)
    assert run["project"] == "tinytales-tests"
    assert run["config"]["config"]["preset"] == "tiny" and run["config"]["config"]["max_steps"] == 6
    assert run["config"]["model"]["n_layer"] == result.model.config.n_layer
    assert sorted(run["rows"]) == [r["step"] for r in result.history["steps"]]
    for record in result.history["steps"]:
        row = run["rows"][record["step"]]
        assert {tag: row[tag] for tag in METRICS.values()} == pytest.approx(
            {tag: record[key] for key, tag in METRICS.items()}, rel=1e-9)
    assert {step: row["val/loss"] for step, row in run["rows"].items() if "val/loss" in row} == pytest.approx(
        {e["step"]: e["val_loss"] for e in result.history["evals"]})


def test_a_resumed_run_goes_on_in_the_same_tensorboard_log_and_wandb_run(tmp_path, jsonl_file, wandb_offline):
    pytest.importorskip("tensorboard")
    config = dict(max_steps=9, tensorboard=True, wandb="tinytales-tests")
    train(run_config(tmp_path, jsonl_file, **config))
    for path in list_checkpoints(tmp_path / "run")[1:]:  # as if killed after step 9, with step 3 saved
        shutil.rmtree(path)
    # tracker settings come back from run.json, the W&B run id from the checkpoint
    resumed = train(run_config(tmp_path, jsonl_file, max_steps=9, resume="auto"))
    logged = tensorboard_scalars(resumed.run_dir / "tensorboard")["train/loss"]
    # steps 4-9 of the first run are purged from the log: each step once, with the resumed run's values
    assert [step for step, _ in logged] == list(range(1, 10))
    assert dict(logged) == pytest.approx({r["step"]: r["loss"] for r in resumed.history["steps"]}, rel=1e-6)
    first, second = sorted((resumed.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert wandb_run(first)["id"] == wandb_run(second)["id"]  # `wandb sync` uploads both into one run
    assert sorted(wandb_run(second)["rows"]) == list(range(4, 10))


def test_a_missing_tracker_package_is_one_line_with_the_install_command_before_any_work(tmp_path, jsonl_file,
                                                                                        monkeypatch):
    from typer.testing import CliRunner

    from tinytales.cli import app

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("tensorboard", "wandb") else find_spec(name, *args))
    with pytest.raises(ValueError, match="--wandb needs the wandb package: pip install wandb"):
        train(run_config(tmp_path, jsonl_file, wandb="project"))
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, ["train", "--preset", "tiny", "--data", str(jsonl_file),
                                      "--out", str(tmp_path / "run"), "--tensorboard"], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: --tensorboard needs the tensorboard package: pip install tensorboard"]
    assert not (tmp_path / "run").exists()


def test_only_the_first_process_opens_trackers(tmp_path):
    trackers = open_trackers(tmp_path, tensorboard=True, wandb="project", config={"a": 1}, main=False)
    assert trackers.trackers == [] and trackers.state() == {}
    trackers.log(1, {"train/loss": 1.0})
    trackers.close()
    assert list(tmp_path.iterdir()) == []


def test_trackers_fan_out_and_are_closed_as_failed_when_training_fails():
    class Fake:
        def __init__(self):
            self.logged, self.closed = [], None

        def log(self, step, metrics):
            self.logged.append((step, metrics))

        def close(self, failed=False):
            self.closed = failed

    fakes = [Fake(), Fake()]
    with pytest.raises(ValueError, match="diverged"):
        with Trackers(fakes) as trackers:
            trackers.log(1, {"train/loss": 2.0})
            raise ValueError("diverged")
    assert all(f.logged == [(1, {"train/loss": 2.0})] and f.closed is True for f in fakes)
