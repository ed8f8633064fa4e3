"""The bundled storyteller: what every user meets first."""
import json

import pytest
import torch

from tinytales.generate import GenerationConfig, generate, story_config
from tinytales.formats import bundled_model_path, load_model

from conftest import TINYSTORIES, needs_shared

# Greedy decoding is deterministic: this pins the bundled model's exact output (regenerate it
# deliberately, with the command in the README, whenever the bundled model changes).
GOLDEN_PROMPT = "Once upon a time"
GOLDEN_TEXT = ', there was a little girl named Lily. She had a big, soft toy car that she loved to play with. One day, she saw a small, sad bug on the floor. The bug was sad because it could not find its home.\nLily wanted to help the bug. She thought'


@pytest.fixture(scope="module")
def bundled():
    return load_model()


def test_bundled_model_is_stored_in_16_bits_with_a_card(bundled):
    from safetensors import safe_open

    with safe_open(str(bundled_model_path() / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert dtypes == {"F16"}
    card = json.loads((bundled_model_path() / "card.json").read_text())
    for key in ("data", "tokens_seen", "steps", "cpu_hours", "validation"):
        assert card[key], key
    assert card["validation"]["bits_per_byte"] < 1.0


def test_golden_greedy_story(bundled):
    config = GenerationConfig(method="greedy", max_new_tokens=60)
    story = generate(bundled.model, bundled.tokenizer, GOLDEN_PROMPT, config)[0]
    assert story.text == GOLDEN_TEXT


def test_stories_end_within_300_tokens(bundled):
    config = story_config(max_new_tokens=300, num_samples=8, seed=0)  # the default decoding
    stories = generate(bundled.model, bundled.tokenizer, "Once there was a little boy", config)
    assert sum(s.finished for s in stories) >= 6


@pytest.mark.slow
@needs_shared("models", "stories260K")
def test_bundled_model_beats_stories260K_in_bits_per_byte(bundled):
    from tinytales.evaluate import evaluate

    torch.manual_seed(0)
    reference = load_model(TINYSTORIES.parent.parent / "models" / "stories260K" / "stories260K_q80.bin")
    valid = TINYSTORIES / "valid.jsonl"
    ours = evaluate(bundled.model, bundled.tokenizer, valid, max_documents=100, progress=False)
    theirs = evaluate(reference.model, reference.tokenizer, valid, max_documents=100, progress=False)
    assert ours.bytes == theirs.bytes  # the same text, whatever the tokenizer
    assert ours.bits_per_byte < theirs.bits_per_byte
