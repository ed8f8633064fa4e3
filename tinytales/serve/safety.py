"""A children's-audience safety filter: a word list kept in the repository, matched as whole words.

A word list is crude but predictable: a parent can read it, and edit it. The server checks the
prompt before generating (an unsuitable prompt is refused kindly) and the story as it is written
(an unsuitable continuation is stopped before the word is shown; see `runner.TextGate`).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

BLOCKED_WORDS_FILE = Path(__file__).parent / "blocked_words.txt"

# What the reader sees. Kind, and never repeating the word that was caught.
PROMPT_REFUSED = ("That idea is not quite right for a children's story. "
                  "Let's try another one, like a friendly dragon or a lost teddy bear!")
STORY_STOPPED = "The story stopped here because it was going somewhere that is not for children."


def read_word_list(path=None) -> list[str]:
    """Entries of a word list file: one word or phrase a line, '#' starts a comment line."""
    path = Path(path) if path is not None else BLOCKED_WORDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"blocked-words file not found: {path}; pass a text file with one word per line")
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            words.append(line)
    return words


def normalize(text: str) -> str:
    """Fold look-alike characters (full-width letters, ligatures) so they cannot sneak past the list."""
    return unicodedata.normalize("NFKC", text)


@dataclass
class SafetyFilter:
    """Finds blocked words or phrases in text: whole words, any case, any run of spaces inside a phrase."""

    words: list[str]
    pattern: re.Pattern = field(init=False, repr=False)

    def __post_init__(self):
        words = sorted({w.strip().lower() for w in self.words if w.strip()}, key=len, reverse=True)
        if not words:
            raise ValueError("the blocked-words list is empty; give at least one word, or turn the filter off")
        alternatives = [r"[\s\-]+".join(re.escape(part) for part in re.split(r"[\s\-]+", w)) for w in words]
        # (?<!\w) / (?!\w) rather than \b: entries may start or end with punctuation.
        self.pattern = re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)
        self.words = words
        self.longest = max(len(w) for w in words)

    @classmethod
    def from_file(cls, path=None) -> "SafetyFilter":
        return cls(read_word_list(path))

    def find(self, text: str, start: int = 0, end: int | None = None) -> re.Match | None:
        """The first blocked word in text[start:end]; words running over `start` count too.

        NFKC keeps the length of plain text, so match positions index the original text;
        for exotic characters that change length we fall back to searching the whole text.
        """
        folded = normalize(text)
        if len(folded) != len(text):
            return self.pattern.search(folded)
        end = len(text) if end is None else end
        return self.pattern.search(folded, max(0, start - self.longest), end)

    def is_blocked(self, text: str) -> bool:
        return self.find(text) is not None
