"""Side-by-side comparison: story metrics, the children's vocabulary, compare() and `tinytales compare`."""
from __future__ import annotations

import json

import pytest
from conftest import SHARED, needs_shared

from tinytales.compare import (METHODS, VOCAB_PATH, build_children_vocab, compare, load_children_vocab,
                               story_metrics, words)
from tinytales.generate import GenerationConfig


def test_words_are_lower_case_without_possessives():
    assert words("Lily’s dog didn't bark. THE END!") == ["lily", "dog", "didn't", "bark", "the", "end"]


def test_story_metrics_by_hand():
    vocab = frozenset({"the", "cat", "sat"})
    m = story_metrics("The cat sat, the cat sat on a zorb.", vocab)
    # words: the cat sat the cat sat on a zorb (9); 3-grams: 7, of which "the cat sat" repeats once
    assert m["words"] == 9
    assert m["repeated_3gram_rate"] == pytest.approx(1 / 7)
    assert m["distinct_2"] == pytest.approx(6 / 8)  # bigrams: 8, "the cat" and "cat sat" twice
    assert m["outside_vocab"] == pytest.approx(3 / 9)  # on, a, zorb
    # 4-grams: 6, all different
    assert m["repeated_4gram_rate"] == 0.0 and not m["loops"]
    looping = story_metrics("the cat sat " * 10, vocab)
    assert looping["repeated_3gram_rate"] > 0.8 and looping["outside_vocab"] == 0 and looping["loops"]
    assert story_metrics("", vocab) == {"words": 0, "repeated_3gram_rate": 0.0, "repeated_4gram_rate": 0.0,
                                        "loops": False, "distinct_2": 0.0, "outside_vocab": 0.0}


@pytest.mark.parametrize("text, expected", [
    ("Ben smiled and said thank you. Ben smiled and said thank you. Ben smiled and said yes.", True),  # 3 times
    ("Ben smiled and said thank you. Ben smiled and said no.", False),  # twice is how stories talk
    ("The wind was strong and the wind was strong and the wind was strong", True),
    ("one two three four one two three five one two three six", False),  # 3-grams repeat, 4-grams do not
])
def test_a_story_loops_when_the_same_four_words_come_three_times(text, expected):
    from tinytales.compare import loops

    assert loops(text) is expected


def test_build_children_vocab_keeps_words_used_often_enough(tmp_path):
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                              ["The cat ran.", "the cat sat", "A zorb!", "Cat's hat"]), encoding="utf-8")
    out = build_children_vocab(source, tmp_path / "vocab.txt", min_count=2)
    assert out.read_text().split() == ["cat", "the"]
    assert load_children_vocab(out) == frozenset({"cat", "the"})
    with pytest.raises(ValueError, match="no words used 5"):
        build_children_vocab(source, tmp_path / "v.txt", min_count=5)
    with pytest.raises(FileNotFoundError, match="build_children_vocab"):
        load_children_vocab(tmp_path / "missing.txt")


def test_bundled_children_vocab_is_the_stories_words():
    vocab = load_children_vocab(VOCAB_PATH)
    assert {"once", "upon", "time", "lily", "happy", "didn't"} <= vocab
    assert 1000 < len(vocab) < 30000 and "photosynthesis" not in vocab


@needs_shared("data", "tinystories", "train.jsonl")
def test_bundled_vocab_is_rebuilt_from_the_training_stories(tmp_path):
    train = SHARED / "data" / "tinystories" / "train.jsonl"
    rebuilt = build_children_vocab(train, tmp_path / "v.txt", max_documents=2000)
    assert load_children_vocab(rebuilt) <= load_children_vocab(VOCAB_PATH)


def test_compare_every_model_prompt_and_method(tiny_model_dir, jsonl_file):
    custom = GenerationConfig(method="sample", temperature=0.5, top_k=5)
    kwargs = dict(prompts=["Once upon a time", "Tom had"], methods=["greedy", "top-k", "beam", custom],
                  max_new_tokens=8, seed=3)
    result = compare([str(tiny_model_dir), str(tiny_model_dir)], eval_source=jsonl_file, max_documents=4, **kwargs)
    assert [m.name for m in result.models] == ["tiny-model (1)", "tiny-model (2)"]
    assert list(result.methods) == ["greedy", "top-k", "beam", "sample T=0.5 top-k=5"]
    assert result.methods["beam"]["num_beams"] == 4 and result.methods["top-k"]["top_k"] == 40
    assert len(result.outputs) == 2 * 2 * 4
    assert all(0 < o.new_tokens <= 8 and o.words == story_metrics(o.text, load_children_vocab())["words"]
               for o in result.outputs)
    assert result.models[0].bits_per_byte == result.models[1].bits_per_byte > 0
    assert result.models[0].eval_documents == 4
    again = compare([str(tiny_model_dir)], **kwargs)  # same seed, same stories
    assert [o.text for o in again.outputs] == [o.text for o in result.outputs[:8]]
    summary = result.summary()
    assert len(summary) == 8 and {r["stories"] for r in summary} == {2}

    markdown = result.to_markdown()
    assert "| tiny-model (1) | top-k |" in markdown and '### "Tom had"' in markdown
    assert markdown.count("**tiny-model (2) · beam**") == 2
    data = json.loads(json.dumps(result.to_dict()))
    assert len(data["outputs"]) == 16 and data["settings"]["seed"] == 3


def test_compare_rejects_unknown_methods_and_empty_lists(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown decoding method 'nucleus'.*top-p"):
        compare([str(tiny_model_dir)], ["Once"], ["nucleus"])
    with pytest.raises(ValueError, match="at least one model"):
        compare([str(tiny_model_dir)], [], ["greedy"])


def test_named_methods_are_valid_generation_configs():
    from tinytales.compare import method_config

    for name in METHODS:
        method_name, config = method_config(name, 50, 0)
        assert method_name == name and config.max_new_tokens == 50 and config.seed == 0
    assert method_config("min-p", 5, None)[1].min_p == 0.1
    assert method_config("temperature", 5, None)[1].temperature == 0.7


@needs_shared("models", "stories260K")
def test_every_method_runs_on_stories260k():
    model = SHARED / "models" / "stories260K" / "stories260K_q80.bin"
    result = compare([str(model)], ["Once upon a time"], list(METHODS), max_new_tokens=30)
    greedy = next(o for o in result.outputs if o.method == "greedy")
    assert greedy.text.startswith(", there was a little girl named Lily.")
    assert all(o.outside_vocab < 0.5 for o in result.outputs)  # real words for children


# --- the `tinytales compare` command ------------------------------------------------------------------------

def test_cli_compare_markdown_json_and_errors(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tinytales.cli import app

    runner = CliRunner()
    out = tmp_path / "table.md"
    args = ["compare", "--model", str(tiny_model_dir), "--prompt", "Once upon a time", "--method", "greedy",
            "--method", "top-p", "--max-new-tokens", "6"]
    result = runner.invoke(app, args + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| tiny-model | top-p |" in out.read_text() and "Decoding methods" in result.output
    as_json = runner.invoke(app, args + ["--json"])
    assert as_json.exit_code == 0, as_json.output
    assert [o["method"] for o in json.loads(as_json.stdout)["outputs"]] == ["greedy", "top-p"]
    bad = runner.invoke(app, ["compare", "--model", str(tiny_model_dir), "--method", "nucleus"])
    assert bad.exit_code == 1 and "unknown decoding method" in bad.output
