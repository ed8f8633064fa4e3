"""Data layer: sources, malformed input, cleaning, token shards and the three resumable loaders."""
from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before `datasets` is imported: the hub is out of reach
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from conftest import TINYSTORIES, make_stories, needs_shared
from tinytales.batches import (
    Batch, PackedBatches, PaddedBatches, ShardedTokens, StreamingBatches, collate, load_tokens, make_batches, prepare,
    token_dtype,
)
from tinytales.stories import DataStats, clean_story, is_hub_source, iter_documents


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def reference_tokens(tokenizer, texts) -> np.ndarray:
    """What every token path must produce: each cleaned story's ids followed by eot."""
    ids = []
    for text in texts:
        ids += tokenizer.encode(clean_story(text)) + [tokenizer.eot_id]
    return np.array(ids)


# ---------------------------------------------------------------------------------------------
# Sources


def test_txt_stories_are_separated_by_endoftext(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text("First story.\nSecond line.\n<|endoftext|>\nSecond story.<|endoftext|>Third story.\n"
                    "<|endoftext|>\n", encoding="utf-8")
    assert list(iter_documents(path)) == ["First story.\nSecond line.", "Second story.", "Third story."]


def test_jsonl_json_and_parquet_give_the_same_stories(tmp_path, stories):
    import pyarrow as pa
    import pyarrow.parquet as pq

    few = stories[:5]
    write_jsonl(tmp_path / "a.jsonl", [{"story": s, "id": i} for i, s in enumerate(few)])
    (tmp_path / "b.json").write_text(json.dumps([{"story": s} for s in few[:3]] + few[3:]), encoding="utf-8")
    (tmp_path / "c.json").write_text("".join(json.dumps({"story": s}) + "\n" for s in few))  # JSON lines as .json
    pq.write_table(pa.table({"story": few, "n": list(range(5))}), tmp_path / "d.parquet")
    for name in ("a.jsonl", "b.json", "c.json", "d.parquet"):
        assert list(iter_documents(tmp_path / name, text_field="story")) == few, name


def test_folder_and_glob_read_every_story_file_in_order(tmp_path, stories):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "b.jsonl", [{"text": s} for s in stories[2:4]])
    write_jsonl(tmp_path / "a.jsonl", [{"text": s} for s in stories[:2]])
    (tmp_path / "c.txt").write_text("<|endoftext|>".join(stories[4:6]), encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a story file")
    assert list(iter_documents(tmp_path)) == stories[:2] + stories[4:6] + stories[2:4]  # a, c, sub/b
    assert list(iter_documents(str(tmp_path / "**" / "*.jsonl"))) == stories[:4]


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_hub_path_streams_a_local_folder_through_load_dataset(tmp_path, stories, monkeypatch, kind):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    if kind == "jsonl":
        write_jsonl(tmp_path / "train.jsonl", [{"text": s, "n": i} for i, s in enumerate(stories[:7])])
    else:
        pq.write_table(pa.table({"text": stories[:7], "n": list(range(7))}), tmp_path / "train.parquet")
    stats = DataStats()
    assert list(iter_documents(f"hf:{tmp_path}", stats=stats)) == stories[:7]
    assert calls == [((str(tmp_path),), {"split": "train", "streaming": True})]
    assert stats.kept == 7
    with pytest.raises(ValueError, match="no column 'story'.*--text-field"):
        list(iter_documents(f"hf:{tmp_path}", text_field="story"))


def test_unreachable_hub_dataset_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="hf:nobody/no-such-dataset"):
        list(iter_documents("nobody/no-such-dataset"))


def test_hub_names_and_local_paths_are_told_apart(tmp_path):
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert is_hub_source("hf:roneneldan/TinyStories") and is_hub_source("roneneldan/TinyStories")
    assert is_hub_source(f"hf:{tmp_path}")
    assert not is_hub_source(tmp_path / "owner" / "name")
    assert not is_hub_source("data/train.jsonl")  # a missing local file, not a dataset called data/train.jsonl
    with pytest.raises(FileNotFoundError, match="no such file, folder or glob: data/train.jsonl"):
        list(iter_documents("data/train.jsonl"))


def test_unsupported_or_empty_sources_are_refused(tmp_path):
    (tmp_path / "x.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        list(iter_documents(tmp_path / "x.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no story files"):
        list(iter_documents(tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------
# Malformed input


@pytest.fixture
def broken_jsonl(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b'{"text": "Good one."}\n'
                     b'{"text": "no closing brace"\n'
                     b'{"title": "no text field"}\n'
                     b'{"text": 42}\n'
                     b'{"text": "bad \xff byte"}\n'
                     b'\n'
                     b'{"text": "Good two."}\n')
    return path


def test_malformed_lines_are_reported_with_file_and_line_and_skipped(broken_jsonl, caplog):
    stats = DataStats()
    with caplog.at_level(logging.WARNING, logger="tinytales.stories"):
        assert list(iter_documents(broken_jsonl, stats=stats)) == ["Good one.", "Good two."]
    assert stats.kept == 2
    assert stats.dropped == {"bad JSON": 1, "missing field": 1, "not text": 1, "invalid UTF-8": 1}
    for line in (2, 3, 4, 5):
        assert f"{broken_jsonl}:{line}:" in caplog.text


def test_strict_mode_raises_at_the_first_malformed_line(broken_jsonl):
    with pytest.raises(ValueError, match=rf"{broken_jsonl}:2: bad JSON .*--strict"):
        list(iter_documents(broken_jsonl, strict=True))


def test_malformed_txt_json_and_parquet_records_name_their_place(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    txt = tmp_path / "s.txt"
    txt.write_bytes(b"One.\n<|endoftext|>\nTwo \xfe broken\nstill two\n<|endoftext|>\nThree.\n")
    with pytest.raises(ValueError, match=rf"{txt}:3: invalid UTF-8"):
        list(iter_documents(txt, strict=True))
    assert list(iter_documents(txt)) == ["One.", "Three."]  # the whole broken story is dropped

    listed = tmp_path / "l.json"
    listed.write_text('[\n  {"text": "A."},\n  {"text": null},\n  "B."\n]\n')
    with pytest.raises(ValueError, match=rf"{listed}:3: field 'text' is NoneType"):
        list(iter_documents(listed, strict=True))
    assert list(iter_documents(listed)) == ["A.", "B."]

    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["A.", None, "B."]}), table)
    with pytest.raises(ValueError, match=rf"{table}:row 2: field 'text' is null"):
        list(iter_documents(table, strict=True))
    assert list(iter_documents(table)) == ["A.", "B."]


# ---------------------------------------------------------------------------------------------
# Cleaning


def test_clean_story_repairs_normalises_and_drops():
    assert clean_story("She said, â€œDonâ€™t go!â€\nThe end.") == "She said, “Don’t go!”\nThe end."
    assert clean_story("Tom\\xe2\\x80\\x99s kite") == "Tom’s kite"
    assert clean_story("cafe\u0301") == "caf\u00e9"  # NFC
    assert clean_story("  Once\tupon  a   time. \r\n\r\n\r\n\r\n The end.  \n") == "Once upon a time.\n\nThe end."
    assert clean_story(" \n\t ") is None
    assert clean_story("A â€¢ B Ã¢â‚¬Å") is None  # mojibake ftfy cannot repair
    assert clean_story("Tom said hi\\xe2\\x80 to me") is None  # escaped bytes that are not UTF-8


def test_cleaning_counts_kept_dropped_and_fixed_by_reason(tmp_path):
    texts = ["Fine story.", "Itâ€™s fine.", "  spaced  out ", "", "Bad â€¢ Ã¢â‚¬Å", "e\u0301 ok"]
    write_jsonl(tmp_path / "s.jsonl", [{"text": t} for t in texts])
    stats = DataStats()
    kept = list(iter_documents(tmp_path / "s.jsonl", stats=stats))
    assert kept == ["Fine story.", "It’s fine.", "spaced out", "é ok"]
    assert stats.kept == 4 and stats.read == 6
    assert stats.dropped == {"empty": 1, "mojibake": 1}
    assert stats.fixed == {"mojibake": 2, "whitespace": 1, "unicode": 1}  # the dropped one was tried too
    raw = list(iter_documents(tmp_path / "s.jsonl", clean=False))
    assert raw == texts


@needs_shared("data", "tinystories", "train.jsonl")
def test_mojibake_in_the_real_stories_is_repaired():
    lines = (TINYSTORIES / "train.jsonl").read_text(encoding="utf-8").splitlines()
    mojibake = [json.loads(line)["text"] for line in lines if "â€" in line]
    escaped = [json.loads(line)["text"] for line in lines if "\\\\xe2" in line]  # "\\xe2" inside JSON text
    assert len(mojibake) > 40 and len(escaped) > 40
    stats = DataStats()
    cleaned = [clean_story(text, stats) for text in mojibake + escaped]
    assert stats.kept == len(cleaned) and not stats.dropped
    assert stats.fixed["mojibake"] == len(mojibake) and stats.fixed["byte escapes"] == len(escaped)
    assert not any("â€" in text or "\\x" in text for text in cleaned)
    assert all(any(c in text for c in "’“”‘–—…") for text in cleaned)  # the characters meant


# ---------------------------------------------------------------------------------------------
# Token shards


def test_prepare_then_load_tokens_equals_direct_tokenization(tmp_path, jsonl_file, stories, tiny_tokenizer):
    out = tmp_path / "prepared"
    meta = prepare(jsonl_file, tiny_tokenizer, out, shard_tokens=1000)
    expected = reference_tokens(tiny_tokenizer, stories)
    assert meta["tokens"] == len(expected) and meta["documents"] == len(stories)
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["eot_id"] == tiny_tokenizer.eot_id
    assert meta["bytes"] == sum(len(s.encode()) for s in stories) and meta["mb_per_s"] > 0
    assert [s["file"] for s in meta["shards"]][:2] == ["tokens-00000.bin", "tokens-00001.bin"]
    assert json.loads((out / "meta.json").read_text()) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "stories.jsonl"]  # no temporary left

    tokens = load_tokens(out, tiny_tokenizer)
    assert isinstance(tokens, ShardedTokens) and len(tokens) == len(expected)
    np.testing.assert_array_equal(np.asarray(tokens), expected)
    np.testing.assert_array_equal(load_tokens(jsonl_file, tiny_tokenizer), expected)
    index = np.array([[0, 999, 1000, 1001], [len(expected) - 1, 5, 2500, 1999]])
    np.testing.assert_array_equal(tokens[index], expected[index])  # windows across shard edges
    np.testing.assert_array_equal(tokens[995:1010], expected[995:1010])


def test_story_fragments_get_an_end_of_story_token_only_where_their_story_ends(tmp_path, tiny_tokenizer):
    records = [{"text": "Once upon a time there was a cat.", "kind": "head_only"},
               {"text": "the dog ran home. The end.", "kind": "tail_only"},
               {"text": "and then they", "kind": "middle"},
               {"text": "A whole story. It ended."}]
    path = write_jsonl(tmp_path / "fragments.jsonl", records)
    eot = tiny_tokenizer.eot_id
    expected = []
    for record in records:
        expected += tiny_tokenizer.encode(record["text"]) + ([] if record.get("kind") in ("head_only", "middle")
                                                             else [eot])
    np.testing.assert_array_equal(load_tokens(path, tiny_tokenizer), expected)
    meta = prepare(path, tiny_tokenizer, tmp_path / "p")
    assert meta["documents"] == 4
    np.testing.assert_array_equal(np.asarray(load_tokens(tmp_path / "p", tiny_tokenizer)), expected)


def test_one_shard_is_a_plain_memmap_and_token_width_follows_the_vocab(tmp_path, jsonl_file, tiny_tokenizer):
    prepare(jsonl_file, tiny_tokenizer, tmp_path / "p")
    tokens = load_tokens(tmp_path / "p", tiny_tokenizer)
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_prepared_tokens_refuse_another_tokenizer(tmp_path, jsonl_file, tiny_tokenizer, stories):
    from tinytales.tokenizer import train_bpe

    prepare(jsonl_file, tiny_tokenizer, tmp_path / "p")
    other = train_bpe(stories, vocab_size=280)
    with pytest.raises(ValueError, match="prepared with a different tokenizer"):
        load_tokens(tmp_path / "p", other)
    with pytest.raises(ValueError, match="prepared token shards, not text"):
        list(iter_documents(tmp_path / "p"))


def test_prepare_will_not_replace_an_unrelated_folder(tmp_path, jsonl_file, tiny_tokenizer):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a prepared token folder"):
        prepare(jsonl_file, tiny_tokenizer, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.txt").exists()
    with pytest.raises(ValueError, match="no stories found"):
        prepare(write_jsonl(tmp_path / "none.jsonl", [{"title": "x"}]), tiny_tokenizer, tmp_path / "p")


# ---------------------------------------------------------------------------------------------
# Loaders


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def assert_same_batches(a: list[Batch], b: list[Batch]):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
        assert (x.attention_mask is None) == (y.attention_mask is None)
        if x.attention_mask is not None:
            assert torch.equal(x.attention_mask, y.attention_mask)


def check_exact_resume(build, before: int, after: int):
    """A loader rebuilt from the same arguments and given the saved state yields what the original would."""
    original = build()
    it = iter(original)
    for _ in range(before):
        next(it)
    state = json.loads(json.dumps(original.state_dict()))  # it goes through state.json
    expected = [next(it) for _ in range(after)]
    resumed = build()
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, after), expected)


def test_packed_batches_cover_every_window_once_per_epoch():
    tokens = np.arange(1001, dtype=np.uint16)  # windows are identified by their first token
    loader = PackedBatches(tokens, batch_size=4, seq_len=10, seed=3)
    assert loader.batches_per_epoch == 100 // 4
    firsts, epochs = [], []
    for _, batch in zip(range(2 * loader.batches_per_epoch), loader):
        assert batch.inputs.shape == batch.targets.shape == (4, 10) and batch.inputs.dtype == torch.int64
        assert batch.attention_mask is None
        assert torch.equal(batch.targets[:, :-1], batch.inputs[:, 1:])
        firsts += batch.inputs[:, 0].tolist()
        epochs.append(loader.epoch)
    first_epoch, second_epoch = firsts[:100], firsts[100:]
    assert sorted(first_epoch) == sorted(second_epoch) == list(range(0, 1000, 10))
    assert first_epoch != second_epoch  # reshuffled
    assert epochs[loader.batches_per_epoch - 2] == 0 and epochs[loader.batches_per_epoch - 1] == 1
    assert loader.state_dict() == {"epoch": 2, "batch": 0}


def test_packed_batches_resume_exactly_across_an_epoch_boundary():
    tokens = np.arange(2000) % 300
    check_exact_resume(lambda: PackedBatches(tokens, 3, 16, seed=7), before=30, after=20)  # 41 per epoch


def test_packed_ranks_take_disjoint_equal_shares_of_each_epoch():
    tokens = np.arange(1001)
    shares = []
    for rank in range(3):
        loader = PackedBatches(tokens, batch_size=4, seq_len=10, seed=1, rank=rank, world_size=3)
        assert loader.batches_per_epoch == 100 // 12
        shares.append({int(b.inputs[i, 0]) for b in take(loader, loader.batches_per_epoch) for i in range(4)})
    assert all(len(s) == 8 * 4 for s in shares)
    assert not (shares[0] & shares[1]) and not (shares[0] & shares[2]) and not (shares[1] & shares[2])
    single = PackedBatches(tokens, batch_size=4, seq_len=10, seed=1)  # the same epoch order, dealt out
    dealt = {int(b.inputs[i, 0]) for b in take(single, 24) for i in range(4)}
    assert shares[0] | shares[1] | shares[2] == dealt


def test_too_little_data_or_a_foreign_state_is_a_clear_error():
    with pytest.raises(ValueError, match="too little data"):
        PackedBatches(np.arange(50), batch_size=4, seq_len=16, seed=0)
    loader = PackedBatches(np.arange(500), batch_size=4, seq_len=16, seed=0)  # 7 batches per epoch
    with pytest.raises(ValueError, match="does not fit this data"):
        loader.load_state_dict({"epoch": 0, "batch": 7})
    with pytest.raises(ValueError, match="another kind of loader"):
        loader.load_state_dict({"epoch": 0, "documents": 3, "leftover": []})


def test_collate_pads_right_and_masks():
    batch = collate([np.array([5, 6, 7, 8]), np.array([9, 10])], pad_id=0)
    assert batch.inputs.tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch.targets.tolist() == [[6, 7, 8], [10, -100, -100]]
    assert batch.attention_mask.tolist() == [[True, True, True], [True, False, False]]


def test_padded_batches_split_long_stories_and_score_every_token_once():
    eot = 99
    documents = [list(range(1, 12)) + [eot], [20, 21, eot], [30, eot], [40, 41, 42, 43, eot]]
    loader = PaddedBatches(documents, batch_size=2, max_len=4, seed=0, pad_id=eot)
    assert len(loader.examples) == 3 + 1 + 1 + 1  # 12 tokens -> pieces of 5 with stride 4: 5, 5, 4 tokens
    assert loader.batches_per_epoch == 3
    targets = []
    for batch in take(loader, 3):
        assert batch.inputs.shape[1] <= 4
        longest = int(batch.attention_mask.sum(1).max())
        assert batch.inputs.shape[1] == longest  # padded to the longest in the batch only
        assert torch.equal(batch.attention_mask, batch.targets != -100)
        targets += batch.targets[batch.targets != -100].tolist()
    every_target = [t for doc in documents for t in doc[1:]]
    assert sorted(targets) == sorted(every_target)


def test_padded_batches_resume_exactly_and_shard_by_rank():
    # story i holds the tokens 1000 i, 1000 i + 1, ...: every example is known by its first token
    documents = [list(range(1000 * i, 1000 * i + 5 + i % 40)) for i in range(60)]
    build = lambda rank=0: PaddedBatches(documents, 4, 16, seed=5, pad_id=0, rank=rank, world_size=2)  # noqa: E731
    loader = build()
    assert loader.batches_per_epoch == len(loader.examples) // 8
    check_exact_resume(build, before=5, after=2 * loader.batches_per_epoch)
    shares = [[int(b.inputs[i, 0]) for b in take(build(rank), loader.batches_per_epoch) for i in range(4)]
              for rank in range(2)]
    assert len(shares[0]) == len(shares[1]) == 4 * loader.batches_per_epoch
    assert not set(shares[0]) & set(shares[1]) and len(set(shares[0])) == len(shares[0])
    assert set(shares[0]) | set(shares[1]) <= {int(e[0]) for e in loader.examples}


@pytest.fixture
def hub_folder(tmp_path):
    stories = [f"Story {i}: {text}" for i, text in enumerate(make_stories(24, seed=1))]
    for part in range(2):  # two files = two shards, so each of two ranks reads one
        write_jsonl(tmp_path / f"part-{part}.jsonl", [{"text": s} for s in stories[part::2]])
    return f"hf:{tmp_path}"


def test_streaming_batches_pack_resume_and_roll_over_epochs(hub_folder, tiny_tokenizer):
    def build():
        return StreamingBatches(hub_folder, tiny_tokenizer, batch_size=4, seq_len=32, seed=4, shuffle_buffer=8)

    loader = build()
    assert loader.batches_per_epoch is None
    batches, epochs = [], []
    for _, batch in zip(range(40), loader):
        batches.append(batch)
        epochs.append(loader.epoch)
    assert batches[0].inputs.shape == (4, 32) and batches[0].attention_mask is None
    assert torch.equal(batches[0].targets[:, :-1], batches[0].inputs[:, 1:])
    per_epoch = epochs.index(1) + 1  # the last batch of an epoch already reports the next epoch
    assert 10 < per_epoch < 30 and epochs[per_epoch - 2] == 0
    assert not torch.equal(batches[0].inputs, batches[per_epoch].inputs)  # reshuffled
    state = loader.state_dict()
    assert set(state) == {"epoch", "documents", "leftover"}
    check_exact_resume(build, before=7, after=per_epoch)  # mid-epoch, through the next epoch's start


def test_streaming_ranks_read_disjoint_stories(hub_folder, tiny_tokenizer):
    import re

    numbers = []
    for rank in range(2):
        loader = StreamingBatches(hub_folder, tiny_tokenizer, batch_size=1, seq_len=16, seed=0, rank=rank,
                                  world_size=2, shuffle_buffer=4)
        it, stream = iter(loader), []
        while loader.epoch == 0:  # with stride T, one window's inputs follow the previous one's
            stream += next(it).inputs[0].tolist()
        numbers.append({int(n) for n in re.findall(r"Story (\d+):", tiny_tokenizer.decode(stream))})
    assert numbers[0] == set(range(0, 24, 2)) and numbers[1] == set(range(1, 24, 2))


def test_make_batches_picks_the_loader(tmp_path, jsonl_file, stories, tiny_tokenizer, hub_folder):
    packed = make_batches(jsonl_file, tiny_tokenizer, batch_size=4, seq_len=32, seed=0)
    assert isinstance(packed, PackedBatches)
    prepare(jsonl_file, tiny_tokenizer, tmp_path / "p")
    from_shards = make_batches(tmp_path / "p", tiny_tokenizer, batch_size=4, seq_len=32, seed=0)
    assert isinstance(from_shards.tokens, np.memmap)
    assert_same_batches(take(from_shards, 3), take(packed, 3))

    padded = make_batches(jsonl_file, tiny_tokenizer, mode="padded", batch_size=4, seq_len=32, seed=0)
    padded_shards = make_batches(tmp_path / "p", tiny_tokenizer, mode="padded", batch_size=4, seq_len=32, seed=0)
    assert isinstance(padded, PaddedBatches) and len(padded.examples) == len(padded_shards.examples)
    assert_same_batches(take(padded, 3), take(padded_shards, 3))
    ends = sum(int(e[-1]) == tiny_tokenizer.eot_id for e in padded.examples)
    assert ends == len(stories) < len(padded.examples)  # every story ends with eot; long ones were split

    assert isinstance(make_batches(hub_folder, tiny_tokenizer, batch_size=2, seq_len=8), StreamingBatches)
    with pytest.raises(ValueError, match="--mode packed"):
        make_batches(hub_folder, tiny_tokenizer, mode="padded")
    with pytest.raises(ValueError, match="mode must be"):
        make_batches(jsonl_file, tiny_tokenizer, mode="sorted")


def test_prepared_shard_with_ids_beyond_the_vocabulary_is_refused(tmp_path, jsonl_file, tiny_tokenizer):
    prepare(jsonl_file, tiny_tokenizer, tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    shard = tmp_path / "p" / meta["shards"][0]["file"]
    tokens = np.memmap(shard, dtype=meta["dtype"], mode="r+")
    tokens[7] = tiny_tokenizer.vocab_size + 1000
    tokens.flush()
    del tokens
    with pytest.raises(ValueError, match=f"holds token id {tiny_tokenizer.vocab_size + 1000}, beyond") as info:
        load_tokens(tmp_path / "p", tiny_tokenizer)
    assert shard.name in str(info.value) and "\n" not in str(info.value)
