"""Bad files and bad values give one line naming the problem and the fix, never a traceback or a huge allocation
(the cross-cutting cases; each module's own are in its test file)."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tinytales.cli import app
from tinytales.formats import load_model

from test_model import BAD_SIZES

runner = CliRunner()


def one_line_error(args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def edit_config(model_dir, **settings):
    path = model_dir / "config.json"
    data = json.loads(path.read_text())
    data["model"].update(settings)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("settings, message", BAD_SIZES + [
    ({"n_embd": 64}, "does not match"),  # within the limits, but not the weights' shapes
])
def test_bad_model_configs_are_one_line(tiny_model_dir, settings, message):
    edit_config(tiny_model_dir, **settings)
    assert message in one_line_error(["info", "-m", tiny_model_dir])


def test_config_that_does_not_match_its_weights_allocates_no_model(tiny_model_dir, monkeypatch):
    """Sizes come from the safetensors header, so a wrong config builds no model at all."""
    from tinytales.formats import native

    def guarded(config):
        raise AssertionError("a model was allocated before the sizes were checked")

    monkeypatch.setattr(native, "GPT", guarded)
    edit_config(tiny_model_dir, n_embd=4096, n_head=32, vocab_size=100_000)  # 1.6 GB if it were built
    with pytest.raises(ValueError, match="does not match"):
        load_model(tiny_model_dir)


def test_weights_with_nan_are_refused(tiny_model_dir):
    from safetensors.torch import load_file, save_file

    path = tiny_model_dir / "model.safetensors"
    state = load_file(str(path))
    state["norm_f.weight"][3] = float("nan")
    save_file(state, str(path), metadata={"format": "tinytales"})
    assert "NaN or infinite weights" in one_line_error(["info", "-m", tiny_model_dir])


@pytest.mark.parametrize("card", ["[1, 2]", "\"text\"", "{not json"])
def test_a_card_that_is_not_an_object_is_one_line(tiny_model_dir, card):
    (tiny_model_dir / "card.json").write_text(card)
    assert "card.json" in one_line_error(["info", "-m", tiny_model_dir])


def train_args(tmp_path, jsonl_file, *extra):
    return ["train", "--preset", "tiny", "--data", jsonl_file, "--out", tmp_path / "run", "--vocab-size", 300,
            "--max-steps", 2, "--precision", "fp32", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--threads", "-1"], "threads must be >= 1"),
    (["--keep-last", "-5"], "keep_last must be an integer >= 1, got -5"),
    (["--model-setting", "n_layer=true"], "n_layer must be a positive integer, got True"),
])
def test_bad_training_values_are_one_line(tmp_path, jsonl_file, extra, message):
    assert message in one_line_error(train_args(tmp_path, jsonl_file, *extra))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_train_on_cuda_without_a_gpu_is_one_line_before_any_work(tmp_path, jsonl_file):
    line = one_line_error(train_args(tmp_path, jsonl_file, "--device", "cuda"))
    assert "no usable CUDA GPU; use --device cpu" in line
    assert not (tmp_path / "run").exists()  # said before the tokenizer was trained or the run begun


def test_train_out_pointing_at_a_file_is_one_line(tmp_path, jsonl_file):
    (tmp_path / "run").write_text("not a folder")
    assert "is a file; pass a directory" in one_line_error(train_args(tmp_path, jsonl_file))


def test_os_errors_become_one_line_naming_the_path(tmp_path, capsys):
    """Permission denied, read-only folder, disk full: the CLI names the path, no traceback."""
    import errno

    import typer

    from tinytales.cli import common

    @common.user_errors
    def command(error):
        raise error

    for error, cause in [(OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out")), "read-only"),
                         (OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out")), "disk space"),
                         (PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out")), "Permission")]:
        with pytest.raises(typer.Exit) as info:
            command(error)
        assert info.value.exit_code == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and str(tmp_path / "out") in lines[0] and cause in lines[0], lines


def test_atomic_writes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    """A power loss after the rename must not leave a checkpoint of empty files: every file and the directory
    are fsynced before the rename makes them visible (write_json's file before its own rename too)."""
    import os

    from tinytales import core

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(core.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(core.os, "replace", lambda a, b: events.append(("replace", str(a))) or real_replace(a, b))
    target = tmp_path / "checkpoint"
    with core.atomic_directory(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"w" * 100)
        core.write_json(tmp / "state.json", {"step": 1})
    names = [(kind, os.path.basename(path)) for kind, path in events]
    rename = names.index(("replace", tmp.name))
    synced = {name for kind, name in names[:rename] if kind == "fsync"}
    assert {"weights.bin", "state.json", tmp.name} <= synced, names
    assert names.index(("fsync", ".state.json.tmp-%d" % os.getpid())) < names.index(
        ("replace", ".state.json.tmp-%d" % os.getpid()))
    assert json.loads((target / "state.json").read_text()) == {"step": 1}
