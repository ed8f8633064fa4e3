"""The children's safety filter against ways around it: Unicode tricks, leetspeak, masks, spelled-out
and inflected words, words split across the prompt and the story; and against false alarms on real
children's stories."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import tinytales.generate as engine
from tinytales.serve import SafetyFilter, create_app
from tinytales.serve.runner import TextGate
from tinytales.serve.safety import word_forms

VALID_STORIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinystories" / "valid.jsonl"

# Ways of writing a blocked word that a child's page must not show, by the word they stand for.
BYPASSES = {
    "kill": ["kill", "KILL", "Kill", "k\u200bill", "ki\u200cll", "kil\u200dl", "k\u2060ill", "ki\ufeffll",
             "ki\u00adll", "k\u0456ll", "\u043aill", "k\u0336i\u0336l\u0336l\u0336", "ki\u0301ll", "k\u00edll",
             "k1ll", "ki11", "k!ll", "k|ll", "k.i.l.l", "k i l l", "k-i-l-l", "k_i_l_l", "k . i . l . l",
             "kills", "killed", "killing", "killer", "k1ller", "k i l l e r", "k*ll", "k**l",
             "\uff4b\uff49\uff4c\uff4c", "\U0001d424\U0001d422\U0001d425\U0001d425", "\u24da\u24d8\u24db\u24db"],
    "shit": ["sh1t", "$hit", "5hit", "sh*t", "sh!t", "s**t", "\u0455hit", "s.h.i.t", "shits", "shitting",
             "s\u200bh\u200bi\u200bt"],
    "fuck": ["f*ck", "f**k", "f*k", "fu\u200bck", "FUCK", "f.u.c.k", "fucking", "f\u00fcck", "fuck"],
    "stab": ["stabs", "stabbed", "stabbing", "st4b", "5tab", "s t a b", "st\u03b1b", "\u0455t\u0430b"],
    "murder": ["murdering", "murd3r", "murd\u0435r", "m u r d e r", "murderer", "murd*r"],
    "sex": ["s3x", "$ex", "s\u0435x", "s e x", "\u0455\u0435\u0445", "S E X", "s.e.x"],
    "asshole": ["@sshole", "a$$hole", "4sshole", "a\u0455\u0455hole", "assh0le"],
    "cocaine": ["c\u043ecaine", "c0caine", "coca\u0456ne", "c\u03bfcaine"],
    "dead body": ["dead body", "dead  body", "dead-body", "d\u0435ad body", "dead b0dy"],
}
SENTENCES = ["The wolf wanted to {} the pig.", "{} the cat, said Tom.", "Lily said ¼¼¼ hello {}", "…ﬁne. {}!"]


@pytest.fixture(scope="module")
def words() -> SafetyFilter:
    return SafetyFilter.from_file()


def feed_in_pieces(gate: TextGate, text: str, rng: random.Random) -> str:
    shown, i = [], 0
    while i < len(text) and gate.finish_reason is None:
        n = rng.randint(1, 6)
        shown.append(gate.feed(text[i:i + n]))
        i += n
    shown.append(gate.flush())
    return "".join(shown)


# ---------------------------------------------------------------------------- positions in the original text

def test_matches_are_found_in_original_text_positions(words):
    cases = {"¼¼¼¼ kill the cat": "kill", "…ﬁ ﬁ kill": "kill", "ｋｉｌｌ the ¼ cat": "ｋｉｌｌ",
             "¼ k\u200b\u200bi\u200bll it": "k\u200b\u200bi\u200bll", "ﬁ ÷ ¾ murdered": "murdered"}
    for text, word in cases.items():
        match = words.find(text)
        assert match is not None and match.span() == (text.index(word), text.index(word) + len(word)), text
        assert match.group() == word
    text = "¼¼¼¼ once ¼ upon ﬁ a time, a hunter wanted to kill"
    assert words.find(text).start() == text.index("kill")
    assert words.find(text, start=text.index("kill") + 2).start() == text.index("kill")  # running over start


def test_gate_cuts_the_original_text_before_the_word(words):
    gate = TextGate(words)
    assert gate.feed("¼¼¼¼ kill the cat") == "¼¼¼¼ " and gate.finish_reason == "content_filter"
    gate = TextGate(words)
    shown = "".join(gate.feed(p) for p in ["Lily ", "said ", "¼¼¼ ", "hello ", "kill ", "the ", "cat."])
    assert shown == "Lily said ¼¼¼ hello " and gate.finish_reason == "content_filter"
    gate = TextGate(words)
    shown = "".join(gate.feed(p) for p in ["…ﬁ", "ne ﬁ", "sh …", " k", "ill", "s all"])
    assert shown == "…ﬁne ﬁsh … " and gate.finish_reason == "content_filter"


# ---------------------------------------------------------------------------- across the prompt and the story

def test_gate_checks_the_prompt_and_the_story_together(words):
    gate = TextGate(words, context="The hunter wanted to ki")
    shown = "".join(gate.feed(p) for p in ["ll", " the ", "deer."])
    assert shown == "" and gate.finish_reason == "content_filter"
    gate = TextGate(words, context="The hunter wanted to k")
    assert gate.feed("i") + gate.feed("ll the deer") == "" and gate.finish_reason == "content_filter"
    gate = TextGate(words, context="They found a dead ")  # a phrase across the seam
    assert gate.feed("body in the woods.") == "" and gate.finish_reason == "content_filter"
    calm = TextGate(words, context="Tom had great s")  # "skill", not "kill"
    assert calm.feed("kill.") + calm.flush() == "kill." and calm.finish_reason is None
    calm = TextGate(words, context="Once upon a time")
    assert calm.feed(", a cat") + calm.flush() == ", a cat" and calm.finish_reason is None


def test_server_stops_a_word_split_between_prompt_and_story(tiny_loaded, monkeypatch):
    def stream_events(model, tokenizer, prompt, config, should_stop=None):
        return (piece for piece in ["ll", " the ", "deer", " and ", "ran."])

    monkeypatch.setattr(engine, "stream_events", stream_events)
    prompt = "The hunter wanted to ki"
    with TestClient(create_app(tiny_loaded, batching=False)) as c:
        story = c.post("/api/story", json={"prompt": prompt}).json()
        assert story["text"] == "" and story["finish_reason"] == "content_filter"
        echoed = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 20, "echo": True}).json()
        assert echoed["choices"][0]["text"] == prompt and echoed["choices"][0]["finish_reason"] == "content_filter"
        streamed = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 20, "echo": True, "stream": True})
        texts = [json.loads(line[6:])["choices"] for line in streamed.text.splitlines()
                 if line.startswith("data: {")]
        assert "".join(c[0]["text"] for c in texts if c) == prompt


# ---------------------------------------------------------------------------- ways around the word list

@pytest.mark.parametrize("word", sorted(BYPASSES))
def test_bypasses_are_caught_in_prompts(words, word):
    for variant in BYPASSES[word]:
        for sentence in SENTENCES:
            assert words.is_blocked(sentence.format(variant)), (word, variant, sentence)


@pytest.mark.parametrize("word", sorted(BYPASSES))
def test_gate_never_shows_any_part_of_a_bypass(words, word):
    """Fuzz: every variant in every sentence, in random pieces, as the story and across the seam."""
    rng = random.Random(f"{word}-0")
    for variant in BYPASSES[word]:
        for sentence in SENTENCES:
            text = sentence.format(variant)
            at = text.index(variant)
            for _ in range(4):
                gate = TextGate(words, stop=rng.choice([(), ("THE END",)]))
                shown = feed_in_pieces(gate, text, rng)
                assert gate.finish_reason == "content_filter" and shown == text[:at], (variant, text, shown)
            for split in range(at + 1, at + len(variant)):  # the prompt ends inside the word
                gate = TextGate(words, context=text[:split])
                shown = feed_in_pieces(gate, text[split:], rng)
                assert gate.finish_reason == "content_filter" and shown == "", (variant, text[:split], shown)


def test_word_forms_and_exceptions():
    assert {"stab", "stabs", "stabbed", "stabbing", "stabber"} <= word_forms("stab")
    assert {"rape", "raped", "raping", "rapes"} <= word_forms("rape")
    assert {"kill", "kills", "killed", "killing", "killer", "killers"} <= word_forms("kill")
    assert {"bitches", "pisses"} <= word_forms("bitch") | word_forms("piss")
    assert "heroines" not in word_forms("heroin") and "killl" not in word_forms("kill")


def test_no_false_alarms_on_ordinary_words(words):
    strict = SafetyFilter(words.words + ["ass", "hell"])
    ordinary = ["Tom had great skill and skills.", "They climbed Kilimanjaro.", "We cooked shitake mushrooms.",
                "The assistant went to class.", "The grass was green and the glass was clear.", "Scunthorpe",
                "Hello! Shell, hello.", "Lily had a water gun, a shooting star and a rooster that said "
                "cock-a-doodle-doo.", "I am a cat. A b, c.", "I saw a b c on the sign.", "She had 5 cats and 3 dogs.",
                "The heroines were brave.", "He said *sigh* and ate 5*3 cakes.", "It was a dead end. Anybody home?",
                "Mr. K. said hi.", "The skiller? No, the skillful one.", "ΚΑΛΗΜΕΡΑ", "Привет, мир", "naïve café"]
    for text in ordinary:
        assert not strict.is_blocked(text), text
        gate = TextGate(strict)
        assert feed_in_pieces(gate, text, random.Random(text)) == text and gate.finish_reason is None, text
    assert strict.is_blocked("What an @ss.") and strict.is_blocked("a s s") and strict.is_blocked("h3ll")


def test_real_childrens_stories_are_left_alone(words):
    if not VALID_STORIES.is_file():
        pytest.skip(f"the TinyStories validation stories are not here: {VALID_STORIES}")
    stories = [json.loads(line)["text"] for line in VALID_STORIES.read_text(encoding="utf-8").splitlines()]
    blocked = {i: words.find(story) for i, story in enumerate(stories)}
    blocked = {i: m for i, m in blocked.items() if m is not None}
    print(f"\n{len(blocked)} of {len(stories)} validation stories blocked:",
          {i: m.group() for i, m in blocked.items()})
    assert len(blocked) <= 2
    assert all(m.group().lower() in words.words for m in blocked.values())  # real list words, not look-alikes
    rng = random.Random(1)
    for i, story in enumerate(stories[::3]):
        gate = TextGate(words, stop=("THE END",))
        shown = feed_in_pieces(gate, story, rng)
        match = words.find(story)
        assert shown == (story if match is None else story[:match.start()]), i


def test_gate_agrees_with_the_whole_text_on_random_junk():
    """Fuzz: random text full of tricky characters, cut anywhere into prompt and pieces: the gate shows
    exactly what comes before the first blocked word that `find` sees in prompt + story."""
    words = SafetyFilter(["kill", "sex", "dead body", "stab", "shit", "fuck"])
    alphabet = list("kilsexdabodytfuch   ..--_*!|1$3@") + ["\u200b", "\u0301", "ﬁ", "¼", "…", "\u0456", "\u00ad",
                                                          "a ", "I ", "\n"]
    rng = random.Random(7)
    for _ in range(1500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 50)))
        split = rng.randrange(len(text) + 1)
        context, story = text[:split], text[split:]
        if words.is_blocked(context):  # the server refuses such a prompt
            continue
        gate = TextGate(words, context=context)
        shown = feed_in_pieces(gate, story, rng)
        match = words.find(text)
        assert shown == (story if match is None else story[:max(0, match.start() - split)]), (context, story)
        assert gate.finish_reason == (None if match is None else "content_filter")


def test_gate_never_cuts_inside_what_one_character_folds_to():
    words = SafetyFilter(["kill"])
    assert words.find("Tom k*¼ ran").start() == 4  # "k*1" (¼ folds to 1⁄4) is a masked "kill"
    gate = TextGate(words)
    assert gate.feed("Tom k*") + gate.feed("¼ ran") + gate.flush() == "Tom " and gate.finish_reason == "content_filter"
