"""`tinytales prepare` and `tinytales train-tokenizer`: happy paths, figures, one-line errors."""
from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from tinytales.cli import app

runner = CliRunner()


def test_train_tokenizer_then_prepare(tmp_path, jsonl_file, stories):
    result = runner.invoke(app, ["train-tokenizer", str(jsonl_file), "--vocab-size", "300", "--out",
                                 str(tmp_path / "tok"), "--max-documents", "120", "--json"])
    assert result.exit_code == 0, result.output
    trained = json.loads(result.output)
    assert trained["documents"] == 120 and 258 <= trained["vocab_size"] <= 300
    assert (tmp_path / "tok" / "tokenizer.json").exists()

    result = runner.invoke(app, ["prepare", str(jsonl_file), "--tokenizer", str(tmp_path / "tok"), "--out",
                                 str(tmp_path / "data"), "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert meta["documents"] == len(stories) and meta["tokenizer"]["vocab_size"] == trained["vocab_size"]
    tokens = np.fromfile(tmp_path / "data" / "tokens-00000.bin", dtype=np.uint16)
    assert len(tokens) == meta["tokens"] and (tokens == trained["eot_id"]).sum() == len(stories)


def test_prepare_prints_a_table_of_figures(tmp_path, jsonl_file, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path)
    broken = tmp_path / "mixed.jsonl"
    broken.write_text(jsonl_file.read_text() + "{not json\n" + json.dumps({"text": "  "}) + "\n")
    result = runner.invoke(app, ["prepare", str(broken), "--tokenizer", str(tmp_path / "tokenizer.json"),
                                 "--out", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    for label in ("documents", "200", "dropped: bad JSON", "dropped: empty", "tokens", "MB/s"):
        assert label in result.output


def test_prepare_errors_are_one_line_with_exit_code_1(tmp_path, jsonl_file, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path)
    tok = str(tmp_path / "tokenizer.json")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"text": "fine"}) + "\n{oops\n")
    cases = [
        (["prepare", str(broken), "--tokenizer", tok, "--out", str(tmp_path / "d"), "--strict"],
         f"{broken}:2: bad JSON"),
        (["prepare", str(tmp_path / "missing.jsonl"), "--tokenizer", tok, "--out", str(tmp_path / "d")],
         "no such file, folder or glob"),
        (["prepare", str(jsonl_file), "--tokenizer", str(tmp_path / "nope"), "--out", str(tmp_path / "d")],
         "not found: pass gpt2"),
        (["train-tokenizer", str(jsonl_file), "--vocab-size", "100", "--out", str(tmp_path / "t")],
         "vocab_size must be at least 258"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_help_shows_examples():
    for command in ("prepare", "train-tokenizer"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and f"tinytales {command} " in result.output
