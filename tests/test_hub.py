"""Models by Hugging Face hub name, through the real huggingface_hub code path on a hub cache built here
(HF_HUB_OFFLINE=1: no network)."""
from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("huggingface_hub")

from typer.testing import CliRunner  # noqa: E402

from tinytales.cli import app  # noqa: E402
from tinytales.formats import hub, load_model  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_repo(cache, repo_id: str, revision: str = "main"):
    """An empty snapshot of repo_id in a hub cache laid out as huggingface_hub lays it out."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / revision).write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_references_parse_and_bad_ones_say_how_to_write_them():
    assert hub.parse("hf:roneneldan/TinyStories-33M") == ("roneneldan/TinyStories-33M", None, None)
    assert hub.parse("hf:karpathy/tinyllamas/stories15M.bin@main") == ("karpathy/tinyllamas", "stories15M.bin", "main")
    with pytest.raises(ValueError, match="hf:owner/name"):
        hub.parse("hf:just-a-name")


def test_a_tinytales_model_loads_by_hub_name_from_the_cache(offline_cache, tiny_model_dir):
    snapshot = cached_repo(offline_cache, "someone/tiny-stories")
    shutil.copytree(tiny_model_dir, snapshot, dirs_exist_ok=True)
    loaded = load_model("hf:someone/tiny-stories")
    local = load_model(tiny_model_dir)
    idx = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(loaded.model(idx)[0], local.model(idx)[0])
    assert loaded.path == snapshot
    result = CliRunner().invoke(app, ["generate", "Tom", "--model", "hf:someone/tiny-stories", "--method", "greedy",
                                      "--max-new-tokens", "5", "--no-stream"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Tom")


def test_a_llama2c_file_in_a_hub_repository(offline_cache, tmp_path):
    from test_llama2c import random_llama, write_llama2c, write_tokenizer

    snapshot = cached_repo(offline_cache, "someone/tinyllamas")
    model = random_llama()
    write_llama2c(model, snapshot / "stories.bin")
    write_tokenizer(snapshot / "tokenizer.bin", model.config.vocab_size)
    loaded = load_model("hf:someone/tinyllamas/stories.bin")
    assert loaded.card["source"] == "llama2.c" and loaded.path == snapshot / "stories.bin"


def test_not_cached_and_offline_is_one_clear_line(offline_cache):
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1 is set and it is not in the local cache"):
        load_model("hf:nobody/nothing")
    result = CliRunner().invoke(app, ["generate", "--model", "hf:nobody/nothing"])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1


def test_a_bare_hub_name_that_is_no_folder_gets_a_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="write hf:roneneldan/TinyStories-33M"):
        load_model("roneneldan/TinyStories-33M")
