"""Story ingredients, as in TinyStories-Instruct: words a story must use and features it must have.

A story with ingredients is written, in training and when asking for one, as

    Words: dog, jump, rainy
    Features: Dialogue, Twist
    Story:
    Once upon a time ...

(either line may be missing). Everything here is computed from the story by rules, no NLP model:
- words: a noun, a verb and an adjective of the story, from the small lists below (base forms; a story
  "uses" a word when it has any of its forms: dog/dogs, jump/jumps/jumped/jumping, go/went/gone);
- features (`story_features`), each a rule on the text:
  Dialogue     two or more quoted utterances;
  Twist        a turn word: suddenly, all of a sudden, but then, to (her/his/...) surprise, turned out,
               unexpected(ly);
  MoralValue   a lesson stated: learned/learnt, lesson, moral, the importance of, it is important, always remember;
  HappyEnding  the last two sentences hold more happy words (happy, smiled, laughed, hugged, fun, glad, ...)
               than sad ones; a word right after not/never/no/n't counts for the other side;
  SadEnding    the last two sentences hold more sad words (sad, cried, hurt, lost, sorry, ...) than happy ones.
`add_ingredients` prefixes a share of the stories of a training set (`tinytales prepare --ingredients`);
`Ingredients` checks what a user asks for and writes the prefix `generate` puts before the prompt.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

FEATURES = ("Dialogue", "Twist", "MoralValue", "HappyEnding", "SadEnding")
MAX_WORDS = 5
MAX_WORD_CHARS = 24

NOUNS = """
apple baby bag ball balloon bear bed bee bell bench bike bird boat book bottle bowl box boy bread bridge
brother bucket bug bunny bus butterfly cake candy car cat chair cookie cow crayon cup dad dinosaur doctor
dog doll door dragon dress duck egg elephant farm fish flower forest fox friend frog game garden gift girl
hat hill horse house ice juice key king kite lake leaf lion map milk monkey moon mom mountain mouse nest
owl paint park party pencil picture pig pizza plane plant pond puppy queen rabbit rain rock rocket room
sand school sea sheep shell ship shoe sister sky snake snow soup star stick stone sun swing table teacher
teddy toy train tree truck turtle water whale window wind wolf
""".split()

VERBS = """
bake bark build carry catch chase clean climb cook crawl cry dance dig draw drink drive eat fall find fix
fly follow give go grow help hide hop hug jump kick kiss laugh learn listen look make open paint pick plant
play pull push read ride run share sing sit skip sleep smile splash swim talk throw walk want wash watch
win wish write
""".split()

ADJECTIVES = """
angry big blue brave bright busy calm careful clean cold colorful curious dark dirty excited fast funny
gentle giant gloomy good green happy heavy hot hungry kind little loud lucky messy new nice old pink polite
pretty proud purple quiet rainy red scared shiny shy silly sleepy slow small smart soft sparkly special
strong sunny tall tiny warm wet wild windy yellow
""".split()

# irregular forms, beside the rules in `forms`
IRREGULAR = {
    "build": ["built"], "catch": ["caught"], "dig": ["dug"], "draw": ["drew", "drawn"], "drink": ["drank", "drunk"],
    "drive": ["drove", "driven"], "eat": ["ate", "eaten"], "fall": ["fell", "fallen"], "find": ["found"],
    "fly": ["flew", "flown", "flies"], "give": ["gave", "given"], "go": ["went", "gone", "goes"],
    "grow": ["grew", "grown"], "hide": ["hid", "hidden"], "make": ["made"], "read": ["read"],
    "ride": ["rode", "ridden"], "run": ["ran"], "sing": ["sang", "sung"], "sit": ["sat"], "sleep": ["slept"],
    "swim": ["swam", "swum"], "throw": ["threw", "thrown"], "win": ["won"], "write": ["wrote", "written"],
    "mouse": ["mice"], "sheep": ["sheep"], "fish": ["fish"], "leaf": ["leaves"], "wolf": ["wolves"],
    "shelf": ["shelves"], "child": ["children"], "big": ["bigger", "biggest"], "good": ["better", "best"],
}

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_QUOTED = re.compile(r"[\"\u201c][^\"\u201c\u201d]{2,}[\"\u201d]")
_TWIST = re.compile(r"\b(suddenly|all of a sudden|but then|to (?:her|his|their|our|my|everyone's|everyone’s) "
                    r"(?:great )?surprise|turned out|unexpected(?:ly)?)\b", re.IGNORECASE)
_MORAL = re.compile(r"\b(learned|learnt|lesson|moral|the importance of|it is important|it's important|"
                    r"always remember)\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"\u201d]?\s+")
_NEGATORS = {"not", "never", "no", "nobody", "nothing"}
HAPPY = set("""happy happily happier smiled smile smiles smiling laughed laugh laughing hugged hug hugs fun glad
joy joyful love loved loves best proud safe thanked thank cheered cheer giggled giggle yay great wonderful
together friends enjoyed excited""".split())
SAD = set("""sad sadly cried cry crying tears hurt lost broken broke alone sorry died dead gone scared afraid
angry upset lonely miss missed worse worst bad""".split())


def forms(word: str) -> set[str]:
    """The forms of a base word a story may use: plurals and verb endings by rule, plus IRREGULAR ones."""
    word = word.lower()
    out = {word, *IRREGULAR.get(word, ())}
    if word.endswith(("s", "x", "z", "ch", "sh")):
        out.add(word + "es")
    elif word.endswith("y") and word[-2:-1] not in "aeiou":
        out |= {word[:-1] + "ies", word[:-1] + "ied"}
    else:
        out.add(word + "s")
    stem = word[:-1] if word.endswith("e") and not word.endswith("ee") else word
    if re.fullmatch(r"[^aeiou]*[aeiou][^aeiouwxy]", word):  # hop -> hopped, hopping; big -> bigger
        stem = word + word[-1]
    if not word.endswith("y") or word[-2:-1] in "aeiou":
        out.add(stem + "ed")
    out |= {stem + "ing", stem + "er", stem + "est", word + "ly", word[:-1] + "ily" if word.endswith("y") else word}
    return out


def _index(words: list[str]) -> dict[str, str]:
    return {form: word for word in words for form in forms(word)}


_KINDS = {"noun": _index(NOUNS), "verb": _index(VERBS), "adjective": _index(ADJECTIVES)}
_ALL_FORMS = {form: word for index in _KINDS.values() for form, word in index.items()}


def tokens(text: str) -> list[str]:
    """Lower-case words of a text (apostrophes kept inside a word: don't, Lily's)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def uses_word(story: str, word: str) -> bool:
    """Whether the story holds any form of the word (dog/dogs, jump/jumped, go/went)."""
    wanted = forms(word)
    return any(token in wanted or token.split("'")[0] in wanted for token in tokens(story))


def story_words(story: str, rng: random.Random) -> list[str]:
    """Up to three base words the story uses, one noun, one verb, one adjective, in random order."""
    found = set(tokens(story))
    chosen = []
    for index in _KINDS.values():
        candidates = sorted({index[t] for t in found if t in index} - set(chosen))
        if candidates:
            chosen.append(rng.choice(candidates))
    rng.shuffle(chosen)
    return chosen


def _ending_mood(story: str) -> int:
    """Happy minus sad words in the story's last two sentences (a negated word counts for the other side)."""
    sentences = [s for s in _SENTENCE_END.split(story.strip()) if s.strip()]
    words = tokens(" ".join(sentences[-2:]))
    score = 0
    for i, word in enumerate(words):
        sign = 1 if word in HAPPY else -1 if word in SAD else 0
        if sign and any(w in _NEGATORS or w.endswith("n't") for w in words[max(i - 2, 0):i]):
            sign = -sign
        score += sign
    return score


def story_features(story: str) -> list[str]:
    """The FEATURES the story has, by the rules in this module's docstring, in FEATURES order."""
    found = []
    if len(_QUOTED.findall(story)) >= 2:
        found.append("Dialogue")
    if _TWIST.search(story):
        found.append("Twist")
    if _MORAL.search(story):
        found.append("MoralValue")
    mood = _ending_mood(story)
    if mood > 0:
        found.append("HappyEnding")
    elif mood < 0:
        found.append("SadEnding")
    return found


@dataclass(frozen=True)
class Ingredients:
    """What a story must contain: base words (MAX_WORDS at most) and FEATURES names."""

    words: tuple[str, ...] = ()
    features: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "words", tuple(self.words))
        object.__setattr__(self, "features", tuple(self.features))

    @classmethod
    def parse(cls, words=None, features=None) -> "Ingredients":
        """From user input: comma-separated strings or lists; ValueError naming the problem and the fix."""
        def items(value, what: str) -> list[str]:
            if value is None:
                return []
            if isinstance(value, str):
                value = value.split(",")
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{what} must be a comma-separated string or a list of strings, got {value!r}")
            return [v.strip() for v in value if v.strip()]

        chosen = items(words, "words")
        if len(chosen) > MAX_WORDS:
            raise ValueError(f"{len(chosen)} words asked for; a story can take at most {MAX_WORDS}, e.g. "
                             f"the words dog, cake, rainy")
        for word in chosen:
            if len(word) > MAX_WORD_CHARS or not re.fullmatch(r"[A-Za-z][A-Za-z'-]*", word):
                raise ValueError(f"{word!r} is not a word the stories can use: give plain words of letters "
                                 f"(at most {MAX_WORD_CHARS}), e.g. dog, cake, rainy")
        by_name = {name.lower(): name for name in FEATURES}
        by_name.update({"happy": "HappyEnding", "sad": "SadEnding", "moral": "MoralValue"})
        named = []
        for feature in items(features, "features"):
            key = feature.lower().replace("_", "").replace("-", "").replace(" ", "")
            if key not in by_name:
                raise ValueError(f"unknown feature {feature!r}; choose from {', '.join(FEATURES)} "
                                 f"(any case), e.g. dialogue, twist")
            if by_name[key] not in named:
                named.append(by_name[key])
        if "HappyEnding" in named and "SadEnding" in named:
            raise ValueError("a story cannot have both HappyEnding and SadEnding; ask for one of them")
        return cls(tuple(w.lower() for w in chosen), tuple(named))

    def __bool__(self) -> bool:
        return bool(self.words or self.features)

    def prefix(self) -> str:
        """The text before the story ("" when there are none)."""
        if not self:
            return ""
        lines = []
        if self.words:
            lines.append("Words: " + ", ".join(self.words))
        if self.features:
            lines.append("Features: " + ", ".join(self.features))
        return "\n".join(lines) + "\nStory:\n"


def trained_with_ingredients(card: dict) -> bool:
    """Whether a model card says the model (or a model it was fine-tuned from) learned ingredients."""
    while card:
        training = card.get("training") or {}
        if card.get("ingredients") or training.get("ingredients"):
            return True
        card = training.get("base_model_card") or {}
    return False


def story_ingredients(story: str, rng: random.Random) -> Ingredients:
    """What a training story is labelled with: half the time words and features, else one of the two;
    features are a random non-empty part of those the story has (so that a feature asked for alone is
    one the story has, and one not asked for may still be there)."""
    words = story_words(story, rng)
    found = story_features(story)
    features = [f for f in found if rng.random() < 0.7] or found[:1]
    if found:
        features = rng.sample(features, len(features))
    kind = rng.random()
    if kind < 0.25:
        features = []
    elif kind < 0.5:
        words = []
    return Ingredients(tuple(words), tuple(features))


def add_ingredients(story: str, share: float, seed: int = 0) -> str:
    """The story with its ingredients before it, for `share` of stories (chosen by a hash of the text and
    `seed`, so the same story always gets the same prefix for one seed, and another seed draws other stories
    and other words: a second pass over the data then teaches following, not remembering); other stories,
    and stories with nothing found, unchanged."""
    key = story if not seed else f"{seed}\n{story}"
    seed = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")
    rng = random.Random(seed)
    if rng.random() >= share:
        return story
    return story_ingredients(story, rng).prefix() + story
