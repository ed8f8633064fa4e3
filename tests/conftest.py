"""Shared fixtures: small synthetic stories, a tiny tokenizer and a tiny random model."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINYSTORIES = SHARED / "data" / "tinystories"

NAMES = ["Lily", "Tom", "Sam", "Mia", "Ben", "Anna", "Max", "Sue"]
THINGS = ["ball", "kite", "cat", "dog", "tree", "boat", "cake", "star"]
FEELINGS = ["happy", "sad", "brave", "sleepy", "excited"]


def make_stories(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        name, thing, feeling = rng.choice(NAMES), rng.choice(THINGS), rng.choice(FEELINGS)
        stories.append(
            f"Once upon a time, there was a little girl named {name}. {name} had a red {thing}. "
            f"One day, {name} felt {feeling}. She played with the {thing} all day.\n"
            f"At the end, {name} went home and said, \"I love my {thing}!\" The end."
        )
    return stories


def pytest_configure(config):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def stories() -> list[str]:
    return make_stories()


@pytest.fixture(scope="session")
def tiny_tokenizer(stories):
    from tinytales.tokenizer import train_bpe

    return train_bpe(stories, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_config(tiny_tokenizer):
    from tinytales.model import GPTConfig

    return GPTConfig(vocab_size=320, context_length=64, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture
def tiny_model(tiny_config):
    from tinytales.model import GPT

    torch.manual_seed(0)
    return GPT(tiny_config).eval()


@pytest.fixture(scope="module")
def tiny_loaded(tiny_tokenizer, tiny_config):
    """The tiny random model ready to serve (named "tiny"), one per test module."""
    from tinytales.core import LoadedModel
    from tinytales.model import GPT

    torch.manual_seed(0)
    return LoadedModel(GPT(tiny_config).eval(), tiny_tokenizer, None, {"name": "tiny"})


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_model, tiny_tokenizer):
    from tinytales.formats import save_model

    return save_model(tiny_model, tiny_tokenizer, tmp_path / "tiny-model", card={"note": "random weights"})


@pytest.fixture
def jsonl_file(tmp_path, stories) -> Path:
    path = tmp_path / "stories.jsonl"
    path.write_text("".join(json.dumps({"text": s}) + "\n" for s in stories), encoding="utf-8")
    return path


def needs_shared(*parts: str):
    """Skip marker for tests that read ../shared."""
    path = SHARED.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not found (../shared is not beside the repository)")
