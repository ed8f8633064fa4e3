"""Tokenizers: exact round trips, the end-of-story token, resolving a spec, training on a data source."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from conftest import SHARED, needs_shared
from tinytales.core import EOT
from tinytales.formats import resolve_tokenizer
from tinytales.stories import train_tokenizer
from tinytales.tokenizer import BPETokenizer, gpt2_tokenizer, tokenizer_hash, train_bpe

GPT2_DIR = SHARED / "tokenizers" / "gpt2"

TRICKY = [
    "Once upon a time, Lily's cat said: \"Meow!\"",
    "héllo wörld, naïve café, Ελληνικά, русский, 日本語の物語, عربى",
    "emoji 🐱🐶 family 👨‍👩‍👧 flag 🇫🇷 skin 👋🏽",
    "combining: e\u0301 a\u0308 n\u0303 (not normalised) and precomposed é",
    "spaces   runs\t\ttabs\n\nnewlines\r\n  leading and trailing  ",
    "",
    "  ",
    "\n",
]


@pytest.mark.parametrize("text", TRICKY)
def test_trained_tokenizer_round_trips_exactly(tiny_tokenizer, text):
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_trained_tokenizer_round_trips_any_text(tiny_tokenizer, text):
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text


def test_encode_batch_equals_encoding_one_by_one(tiny_tokenizer):
    assert tiny_tokenizer.encode_batch(TRICKY) == [tiny_tokenizer.encode(text) for text in TRICKY]


def test_endoftext_in_text_is_the_eot_token(tiny_tokenizer):
    ids = tiny_tokenizer.encode(f"The end.{EOT}Once")
    assert ids.count(tiny_tokenizer.eot_id) == 1
    assert tiny_tokenizer.decode(ids) == f"The end.{EOT}Once"
    assert tiny_tokenizer.decode(ids, skip_special=True) == "The end.Once"


@needs_shared("tokenizers", "gpt2", "vocab.json")
def test_gpt2_tokenizer_matches_openai_ids_and_round_trips():
    tok = gpt2_tokenizer(GPT2_DIR)
    assert tok.vocab_size == 50257 and tok.eot_id == 50256 and tok.bos_id is None
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(f"a{EOT}b") == [64, 50256, 65]
    for text in TRICKY:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(["Hello world", "Hello"]) == [[15496, 995], [15496]]


@needs_shared("tokenizers", "gpt2", "vocab.json")
def test_resolve_gpt2_from_argument_or_environment(monkeypatch):
    assert resolve_tokenizer("gpt2", gpt2_dir=GPT2_DIR).eot_id == 50256
    monkeypatch.setenv("TINYTALES_GPT2_DIR", str(GPT2_DIR))
    assert resolve_tokenizer("GPT2").encode("Hello world") == [15496, 995]


def test_resolve_tokenizer_file_model_folder_and_errors(tmp_path, tiny_tokenizer, tiny_model_dir):
    folder = tmp_path / "tok"
    folder.mkdir()
    path = tiny_tokenizer.save(folder)
    assert [p.name for p in folder.iterdir()] == ["tokenizer.json"]  # saved atomically, nothing else left
    text = "Lily had a red kite."
    for spec in (path, str(path), folder, tiny_model_dir):
        assert resolve_tokenizer(spec).encode(text) == tiny_tokenizer.encode(text)
    assert resolve_tokenizer(tiny_tokenizer) is tiny_tokenizer
    with pytest.raises(FileNotFoundError, match="not found: pass gpt2"):
        resolve_tokenizer(tmp_path / "nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no tokenizer.json"):
        resolve_tokenizer(tmp_path / "empty")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot read tokenizer file"):
        resolve_tokenizer(tmp_path / "bad.json")


@needs_shared("models", "stories260K", "tok512.bin")
def test_resolve_llama2c_tokenizer_bin():
    tok = resolve_tokenizer(SHARED / "models" / "stories260K" / "tok512.bin")
    assert tok.vocab_size == 512 and len(tokenizer_hash(tok)) == 64


def test_tokenizer_hash_identifies_the_tokenizer(tmp_path, tiny_tokenizer, stories):
    reloaded = BPETokenizer.from_file(tiny_tokenizer.save(tmp_path))
    assert tokenizer_hash(reloaded) == tokenizer_hash(tiny_tokenizer)
    assert tokenizer_hash(train_bpe(stories, vocab_size=290)) != tokenizer_hash(tiny_tokenizer)


def test_train_tokenizer_on_a_data_source(tmp_path, jsonl_file, stories):
    from tinytales.stories import DataStats

    stats = DataStats()
    tok = train_tokenizer(jsonl_file, 300, tmp_path / "tok", max_documents=50, stats=stats)
    assert stats.kept == 50
    assert (tmp_path / "tok" / "tokenizer.json").exists()
    assert 258 <= tok.vocab_size <= 300
    loaded = resolve_tokenizer(tmp_path / "tok")
    assert loaded.encode(stories[0]) == tok.encode(stories[0])
    assert len(tok.encode(stories[0])) < 0.7 * len(stories[0].encode())  # it learned merges from the stories
    for text in TRICKY:
        assert loaded.decode(loaded.encode(text)) == text


def test_train_tokenizer_errors(tmp_path, jsonl_file):
    with pytest.raises(ValueError, match="vocab_size must be at least 258"):
        train_tokenizer(jsonl_file, 100, tmp_path / "tok")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"title": "no text"}) + "\n")
    with pytest.raises(ValueError, match="no stories to train a tokenizer on"):
        train_tokenizer(empty, 300, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()
