"""Loss, perplexity and bits per byte: hand-computed checks on tiny models, sliding windows, the CLI."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from tinytales.evaluate import EvalResult, evaluate, evaluate_texts, sliding_windows, story_start_id
from tinytales.model import GPT

TEXTS = ["Once upon a time, there was a cat.", "Tom had a red ball.\nHe was happy. The end.", "Mia ran é!"]


def model_with_context(config, context: int) -> GPT:
    torch.manual_seed(0)
    return GPT(dataclasses.replace(config, context_length=context)).eval()


def story_ids(tokenizer, text: str) -> list[int]:
    return [story_start_id(tokenizer), *tokenizer.encode(text), tokenizer.eot_id]


def nats_of_chunk(model, ids: list[int]) -> float:
    """Summed cross-entropy of ids[1:] given ids[:-1], in one forward pass."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
    return F.cross_entropy(logits[0].double(), torch.tensor(ids[1:]), reduction="sum").item()


def test_loss_and_bits_per_byte_equal_hand_computed_cross_entropy(tiny_config, tiny_tokenizer):
    model = model_with_context(tiny_config, 256)
    documents = [story_ids(tiny_tokenizer, t) for t in TEXTS]
    nats = sum(nats_of_chunk(model, ids) for ids in documents)
    tokens = sum(len(ids) - 1 for ids in documents)  # every token after the start, end-of-story included
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    result = evaluate_texts(model, tiny_tokenizer, TEXTS)
    assert (result.tokens, result.bytes, result.documents) == (tokens, n_bytes, 3)
    assert result.loss == pytest.approx(nats / tokens, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nats / tokens), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)


def test_stride_equal_to_context_scores_independent_chunks(tiny_config, tiny_tokenizer, stories):
    context = 16
    model = model_with_context(tiny_config, context)
    text = " ".join(stories[:3])
    ids = story_ids(tiny_tokenizer, text)
    assert len(ids) > 5 * context
    # chunk k reads inputs [k*context, (k+1)*context) and predicts the token after each
    chunks = [ids[begin:begin + context + 1] for begin in range(0, len(ids) - 1, context)]
    nats = sum(nats_of_chunk(model, chunk) for chunk in chunks)
    result = evaluate_texts(model, tiny_tokenizer, [text], stride=context)
    assert result.tokens == len(ids) - 1
    assert result.loss * result.tokens == pytest.approx(nats, rel=1e-5)


def test_overlapping_windows_score_every_target_once_and_use_more_context(tiny_config, tiny_tokenizer, stories):
    model = model_with_context(tiny_config, 16)
    text = " ".join(stories[:3])
    overlapping = evaluate_texts(model, tiny_tokenizer, [text], stride=4)
    chunked = evaluate_texts(model, tiny_tokenizer, [text], stride=16)
    assert overlapping.tokens == chunked.tokens == len(story_ids(tiny_tokenizer, text)) - 1
    assert overlapping.loss != pytest.approx(chunked.loss, rel=1e-6)  # the extra context changes the scores


@given(n=st.integers(1, 300), context=st.integers(1, 64), data=st.data())
def test_sliding_windows_score_each_target_exactly_once(n, context, data):
    stride = data.draw(st.integers(1, context))
    windows = sliding_windows(n, context, stride)
    scored = [p for _, end, first in windows for p in range(first, end)]
    assert scored == list(range(n))
    for begin, end, first in windows:
        assert 0 <= begin <= first < end <= begin + context
        assert first - begin >= min(first, context - stride)  # left context of the first scored target


def test_uniform_model_has_log2_vocab_bits_per_token(tiny_config, tiny_tokenizer):
    model = model_with_context(tiny_config, 64)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # logits all zero: every token has probability 1/V
    result = evaluate_texts(model, tiny_tokenizer, TEXTS)
    V = tiny_config.vocab_size
    assert result.loss == pytest.approx(math.log(V), rel=1e-6)
    assert result.bits_per_byte == pytest.approx(math.log2(V) * result.tokens / result.bytes, rel=1e-6)


class CharTokenizer:
    """One token per character (plus BOS and end-of-story): another cut of the same text."""

    bos_id, eot_id, vocab_size = 0, 1, 320

    def encode(self, text):
        return [2 + ord(c) % 318 for c in text]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]


def test_bytes_depend_on_the_text_not_the_tokenizer(tiny_config, tiny_tokenizer):
    model = model_with_context(tiny_config, 64)
    by_bpe = evaluate_texts(model, tiny_tokenizer, TEXTS)
    by_char = evaluate_texts(model, CharTokenizer(), TEXTS)
    assert by_bpe.bytes == by_char.bytes == sum(len(t.encode()) for t in TEXTS)
    assert by_char.tokens == sum(len(t) + 1 for t in TEXTS) != by_bpe.tokens


def test_deterministic_and_batch_size_independent(tiny_model, tiny_tokenizer, stories):
    texts = stories[:20]
    first, second = (evaluate_texts(tiny_model, tiny_tokenizer, texts, batch_size=4) for _ in range(2))
    assert dataclasses.replace(first, seconds=0) == dataclasses.replace(second, seconds=0)
    one_by_one = evaluate_texts(tiny_model, tiny_tokenizer, texts, batch_size=1)
    assert one_by_one.loss == pytest.approx(first.loss, rel=1e-5)


def test_evaluate_reads_jsonl_and_txt_sources(tiny_model, tiny_tokenizer, jsonl_file, stories, tmp_path):
    result = evaluate(tiny_model, tiny_tokenizer, jsonl_file, max_documents=7, progress=False)
    assert isinstance(result, EvalResult) and result.documents == 7
    assert result.bytes == sum(len(s.encode()) for s in stories[:7])
    txt = tmp_path / "stories.txt"
    txt.write_text("<|endoftext|>".join(stories[:5]), encoding="utf-8")
    assert evaluate(tiny_model, tiny_tokenizer, txt, progress=False).documents == 5


def test_bad_arguments_and_sources_are_reported(tiny_model, tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="stride must be between 1 and the model's context \\(64\\), got 65"):
        evaluate_texts(tiny_model, tiny_tokenizer, TEXTS, stride=65)
    with pytest.raises(ValueError, match="got 0"):
        evaluate_texts(tiny_model, tiny_tokenizer, TEXTS, stride=0)
    with pytest.raises(ValueError, match="no stories found"):
        evaluate_texts(tiny_model, tiny_tokenizer, ["", "  "])
    with pytest.raises(FileNotFoundError):
        evaluate(tiny_model, tiny_tokenizer, tmp_path / "missing.jsonl", progress=False)


# --- the `tinytales eval` command ---------------------------------------------------------------------------

def test_cli_eval_json(tiny_model_dir, jsonl_file, tiny_model, tiny_tokenizer):
    from typer.testing import CliRunner

    from tinytales.cli import app

    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--data", str(jsonl_file),
                                      "--max-documents", "5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    expected = evaluate(tiny_model, tiny_tokenizer, jsonl_file, max_documents=5, progress=False)
    assert data["documents"] == 5 and data["tokens"] == expected.tokens
    assert data["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-5)
    assert {"loss", "perplexity", "bytes"} <= set(data)


def test_cli_eval_table_and_errors(tiny_model_dir, jsonl_file, tmp_path):
    from typer.testing import CliRunner

    from tinytales.cli import app

    runner = CliRunner()
    table = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--data", str(jsonl_file),
                                "--max-documents", "3"])
    assert table.exit_code == 0, table.output
    assert "bits/byte" in table.output and "tiny-model" in table.output
    missing = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--data", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 1 and "nope.jsonl" in missing.output
    bad_stride = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--data", str(jsonl_file),
                                     "--stride", "1000"])
    assert bad_stride.exit_code == 1 and "stride" in bad_stride.output
