"""Story ingredients: the rules that label stories, the prefix, preparing data with them, and asking for them."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tinytales.generate import GenerationConfig, encode_prompt, generate, story_head
from tinytales.ingredients import (FEATURES, Ingredients, add_ingredients, forms, story_features, story_words,
                                   trained_with_ingredients, uses_word)

DIALOGUE = 'Tom said, "Can I play?" Lily smiled and said, "Yes, you can!" They played all day.'
TWIST = "Ben looked for his ball. Suddenly, a big dog ran out with it in its mouth."
MORAL = "Sue did not share her toys. Then she was alone. She learned that sharing makes friends."
HAPPY_END = "The storm was loud. Mia was scared. Then the sun came out. Mia smiled and hugged her mom."
SAD_END = "The bird flew away and never came back. Max cried. He was very sad and lonely."
NOT_SAD = "Max lost his kite. Dad found it in a tree. Max was not sad anymore."


@pytest.mark.parametrize("story, feature", [(DIALOGUE, "Dialogue"), (TWIST, "Twist"), (MORAL, "MoralValue"),
                                            (HAPPY_END, "HappyEnding"), (SAD_END, "SadEnding"),
                                            (NOT_SAD, "HappyEnding")])
def test_each_feature_rule_finds_its_feature(story, feature):
    assert feature in story_features(story)


def test_features_absent_where_the_story_lacks_them():
    assert "Dialogue" not in story_features('Tom said "hi" and went home.')  # one utterance is not a dialogue
    assert "Twist" not in story_features(HAPPY_END)
    assert "MoralValue" not in story_features(TWIST)
    assert "SadEnding" not in story_features(HAPPY_END) and "HappyEnding" not in story_features(SAD_END)
    assert story_features("The box was on the table.") == []


def test_word_forms_follow_the_rules_and_the_irregular_table():
    assert {"dog", "dogs"} <= forms("dog")
    assert {"hop", "hops", "hopped", "hopping"} <= forms("hop")
    assert {"bake", "baked", "baking"} <= forms("bake")
    assert {"go", "went", "goes"} <= forms("go")
    assert {"puppy", "puppies"} <= forms("puppy")
    assert uses_word("They went to the park.", "go") and uses_word("Two dogs barked.", "dog")
    assert uses_word("Lily's kite flew.", "kite")
    assert not uses_word("The cat sat.", "dog")


def test_story_words_come_from_the_story_one_of_each_kind():
    story = "Lily saw a big dog. The dog wanted to jump in the rainy park."
    words = story_words(story, random.Random(0))
    assert len(words) == 3
    assert all(uses_word(story, w) for w in words)
    assert story_words("Zzz.", random.Random(0)) == []


def test_prefix_and_parse():
    asked = Ingredients.parse("Dog, cake ,rainy", ["twist", "happy_ending"])
    assert asked == Ingredients(("dog", "cake", "rainy"), ("Twist", "HappyEnding"))
    assert asked.prefix() == "Words: dog, cake, rainy\nFeatures: Twist, HappyEnding\nStory:\n"
    assert Ingredients.parse(None, "dialogue").prefix() == "Features: Dialogue\nStory:\n"
    assert Ingredients.parse("", "").prefix() == "" and not Ingredients.parse("", "")


@pytest.mark.parametrize("words, features, message", [
    ("a,b,c,d,e,f", None, "at most 5"),
    ("ice-cream!", None, "not a word"),
    (None, "plot", "unknown feature 'plot'"),
    (None, "happyending,sadending", "both HappyEnding and SadEnding"),
    (["dog", 3], None, "list of strings"),
])
def test_bad_ingredients_name_the_problem(words, features, message):
    with pytest.raises(ValueError, match=message):
        Ingredients.parse(words, features)
    with pytest.raises(ValueError, match=message):
        GenerationConfig(words=words or (), features=features or ())


def test_add_ingredients_labels_a_share_of_stories_the_same_way_every_time(stories):
    labelled = [add_ingredients(s, 0.5) for s in stories]
    assert labelled == [add_ingredients(s, 0.5) for s in stories]
    prefixed = [t for t, s in zip(labelled, stories) if t != s]
    assert 0.35 * len(stories) < len(prefixed) < 0.65 * len(stories)
    for text in prefixed:
        head, story = text.split("Story:\n", 1)
        assert story in stories
        for line in head.splitlines():
            kind, _, items = line.partition(": ")
            assert kind in ("Words", "Features")
            for item in items.split(", "):
                assert (uses_word(story, item) if kind == "Words" else item in story_features(story))
    assert all(add_ingredients(s, 0.0) == s for s in stories)


def test_another_ingredients_seed_labels_other_stories_with_other_words(stories):
    first = [add_ingredients(s, 0.5) for s in stories]
    second = [add_ingredients(s, 0.5, seed=1) for s in stories]
    assert second == [add_ingredients(s, 0.5, seed=1) for s in stories]
    assert sum(a != b for a, b in zip(first, second)) > len(stories) // 4
    assert 0.35 * len(stories) < sum(t != s for t, s in zip(second, stories)) < 0.65 * len(stories)


def test_prepare_prefixes_whole_stories_only(tmp_path, tiny_tokenizer, stories):
    from tinytales.batches import prepare, read_meta

    source = tmp_path / "stories.jsonl"
    rows = [{"text": s} for s in stories[:20]] + [{"text": "Once upon a time, Tom had a", "kind": "head_only"}]
    source.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    meta = prepare(source, tiny_tokenizer, tmp_path / "prepared", ingredients=1.0, progress=False)
    assert meta["ingredients"] == 1.0 and read_meta(tmp_path / "prepared")["ingredients"] == 1.0
    assert "ingredients_seed" not in meta
    again = prepare(source, tiny_tokenizer, tmp_path / "again", ingredients=1.0, ingredients_seed=3, progress=False)
    assert again["ingredients_seed"] == 3
    tokens = np.fromfile(tmp_path / "prepared" / "tokens-00000.bin", dtype=meta["dtype"]).tolist()
    text = tiny_tokenizer.decode(tokens)
    assert text.count("Story:\n") == 20
    assert text.endswith("<|endoftext|>Once upon a time, Tom had a")  # the unfinished piece: no prefix, no end
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        prepare(source, tiny_tokenizer, tmp_path / "other", ingredients=1.5, progress=False)


def test_generation_reads_the_ingredients_before_the_prompt(tiny_model, tiny_tokenizer):
    asked = Ingredients.parse("cat", "dialogue")
    head = story_head(tiny_tokenizer, asked)
    assert head[0] == tiny_tokenizer.eot_id and tiny_tokenizer.decode(head[1:]) == asked.prefix()
    ids, truncated = encode_prompt(tiny_tokenizer, "Tom", 64, 10, asked)
    assert ids == head + tiny_tokenizer.encode("Tom") and not truncated
    assert encode_prompt(tiny_tokenizer, "", 64, 10, asked)[0] == head  # the model begins the story itself
    with pytest.raises(ValueError, match="prompt is empty"):
        encode_prompt(tiny_tokenizer, "", 64, 10)
    story = generate(tiny_model, tiny_tokenizer, "", GenerationConfig(method="greedy", max_new_tokens=5,
                                                                       words=("cat",), features=("Dialogue",)))[0]
    assert story.prompt_tokens == len(head)


def test_repetition_penalty_spares_the_words_asked_for(tiny_model, tiny_tokenizer):
    """The penalty looks at prompt + story, not at the ingredients: asking for a word must not push it away."""
    from tinytales.generate import DecodingState

    config = GenerationConfig(repetition_penalty=1.5, words=("cat",))
    head = story_head(tiny_tokenizer, config.ingredients)
    prompt_ids = head + tiny_tokenizer.encode("Tom")
    decoding = DecodingState(tiny_model, tiny_tokenizer, prompt_ids, config, batch=1)
    assert decoding.text_start == len(head)
    seen = set(decoding.seen[0].nonzero().flatten().tolist())
    assert seen == set(tiny_tokenizer.encode("Tom"))


def test_cards_say_whether_a_model_learned_ingredients():
    assert trained_with_ingredients({"training": {"ingredients": 0.5}})
    assert trained_with_ingredients({"training": {"ingredients": 0.0, "base_model_card": {"ingredients": 0.5}}})
    assert not trained_with_ingredients({"training": {"ingredients": 0.0}}) and not trained_with_ingredients({})


def test_the_page_offers_every_feature_and_only_those():
    import re
    from pathlib import Path

    import tinytales.serve

    page = (Path(tinytales.serve.__file__).parent / "static" / "index.html").read_text(encoding="utf-8")
    offered = re.findall(r'name="feature" value="(\w+)"', page)
    assert sorted(offered) == sorted(FEATURES)
