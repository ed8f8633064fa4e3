"""A children's-audience safety filter: a word list kept in the repository, matched as whole words.

A word list is crude but predictable: a parent can read it, and edit it. The server checks the
prompt before generating (an unsuitable prompt is refused kindly) and the story as it is written,
together with the end of the prompt (an unsuitable continuation is stopped before any of the word
is shown; see `runner.TextGate`).

Text is folded before matching, one character at a time, so that every folded character knows
the original character it came from and matches are always reported in ORIGINAL-text positions:

* compatibility forms are unfolded (Unicode NFKD: full-width letters, ligatures like "ﬁ"),
  accents and other combining marks (Mn, Me) are dropped, and so are invisible format
  characters (Cf: zero-width spaces and joiners, soft hyphens, byte-order marks);
* Cyrillic and Greek letters that look like Latin ones are replaced by those (a small explicit
  table, `CONFUSABLES`), and case is folded;
* "_" counts as a space.

The word list is then matched, still whole words only (so "skill", "class" or "Scunthorpe" are
never caught), allowing for:

* leetspeak: 0 o, 1 i or l, 3 e, 4 a, 5 s, 7 t, 8 b, 9 g, @ a, $ s, + t, and ! or | for i (or
  | for l) anywhere but at the start of a word;
* word forms of each entry's last word: -s, -es (after s, x, z, ch, sh), -ed, -ing, -er, -ers,
  with a final e dropped (rape: raped, raping) or a final consonant doubled (stab: stabbed);
* masks: a run of k "*" inside a word stands for k or k+1 letters (f*ck, f**k, sh*t);
* spelled-out words: a run of three or more single letters separated by ".", "-", "_" or
  spaces is read as one word (k i l l, k.i.l.l), maybe with the word "a" or "I" before or
  after it; ordinary text like "a cat" is left alone;
* the words of a phrase may be separated by any run of spaces or hyphens.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path

BLOCKED_WORDS_FILE = Path(__file__).parent / "blocked_words.txt"

# What the reader sees. Kind, and never repeating the word that was caught.
PROMPT_REFUSED = ("That idea is not quite right for a children's story. "
                  "Let's try another one, like a friendly dragon or a lost teddy bear!")
STORY_STOPPED = "The story stopped here because it was going somewhere that is not for children."

# Look-alike letters. Capitals first (Greek capital Eta looks like H, small eta like n), then,
# after case folding, small letters.
CONFUSABLES_UPPER = str.maketrans(
    "\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0423\u0425\u0406\u0408\u0405"  # Cyrillic
    "\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7",  # Greek
    "abekmhopctyxijs"
    "abezhikmnoptyx")
CONFUSABLES = str.maketrans(
    "\u0430\u0435\u043a\u043c\u043d\u043e\u0440\u0441\u0442\u0443\u0445\u0456\u0458\u0455\u04bb\u0501\u04cf\u051b\u051d"
    "\u03b1\u03b2\u03b5\u03b9\u03ba\u03bd\u03bf\u03c1\u03c4\u03c5\u03c7\u03b7\u0131",
    "aekmhopctyxijshdlqw"
    "abeikvoptuxni")

# Digits and symbols that stand for letters, by letter.
LEET = {"a": "4@", "b": "8", "e": "3", "g": "9", "i": "1!|", "l": "1|", "o": "0", "s": "5$", "t": "7+"}
NOT_FIRST = "!|"  # "!" and "|" stand for letters only inside a word ("Hi!" is not "hii")
LETTERS_FOR = {}  # the reverse: "1" -> "il"
for _letter, _symbols in LEET.items():
    for _symbol in _symbols:
        LETTERS_FOR[_symbol] = LETTERS_FOR.get(_symbol, "") + _letter

_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ_", "abcdefghijklmnopqrstuvwxyz ")
_DROPPED = {"Mn", "Me", "Cf"}

# A character that is part of a (masked, leet) word once folded; "!" and "|" are letters only
# between two of these, so they are left out here.
_W = r"[\w@$+*]"
_L = r"[\w@$+]"  # the same, less the mask "*"
_SEP = r"[\s.\-]{1,3}"  # between the letters of a spelled-out word ("_" is folded to a space)
_PHRASE_SEP = r"[\s\-]+"  # between the words of a phrase
_LETTER = re.compile(_W)
# Three or more single letters with separators between them: "k i l l", "k.i.l.l".
# (Not starting after an apostrophe: the "s" of "it's" is not a spelled-out letter.)
SPELLED_OUT = re.compile(rf"(?<![\w@$+*'\u2019]){_W}(?:{_SEP}{_W}(?!{_W})){{2,}}")
# A word with a mask inside: "f*ck", "sh*t".
MASKED = re.compile(rf"(?<!{_W}){_L}+(?:\*+{_L}+)+(?!{_W})")
_SEP_CHARS = frozenset(" \t\n\r\f\v.-")
_PHRASE_SEP_CHARS = frozenset(" \t\n\r\f\v-")


def _is_letter(char: str) -> bool:
    """Whether a folded character can be part of a word (what `_W` matches)."""
    return char.isalnum() or char in "_@$+*"


def _in_word(folded: str, i: int) -> bool:
    """Whether folded[i] is part of a word: a letter, or "!" or "|" after one."""
    return _is_letter(folded[i]) or (folded[i] in NOT_FIRST and i > 0 and _is_letter(folded[i - 1]))


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


@functools.lru_cache(maxsize=8192)
def fold_char(char: str) -> str:
    """One character folded for matching: "" for marks and invisible ones, maybe several ("ﬁ")."""
    if char.isascii():
        return char.translate(_ASCII_FOLD)
    out = "".join(c for c in unicodedata.normalize("NFKD", char) if unicodedata.category(c) not in _DROPPED)
    out = out.translate(CONFUSABLES_UPPER).casefold().translate(CONFUSABLES)
    if not out.isascii():  # casefold can unfold further ("İ" -> "i" + a dot)
        out = "".join(c for c in unicodedata.normalize("NFKD", out) if unicodedata.category(c) not in _DROPPED)
    return out.replace("_", " ")


class FoldedText:
    """Text folded for matching, built up piece by piece, with a map back to the original.

    `text` is the folded text; `origin[j]` is the position in the original text of the character
    that folded character j came from (non-decreasing; dropped characters have no entry).
    """

    def __init__(self, text: str = ""):
        self.text = ""
        self.origin: list[int] = []
        self.length = 0  # of the original text
        self.append(text)

    def append(self, piece: str) -> None:
        if piece.isascii():
            self.text += piece.translate(_ASCII_FOLD)
            self.origin.extend(range(self.length, self.length + len(piece)))
        else:
            parts = []
            for i, char in enumerate(piece, self.length):
                folded = fold_char(char)
                if folded:
                    parts.append(folded)
                    self.origin.extend([i] * len(folded))
            self.text += "".join(parts)
        self.length += len(piece)

    def folded_index(self, position: int) -> int:
        """How many folded characters come from original text before `position`."""
        return bisect_left(self.origin, position)

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The original text covered by folded text[start:end] (end > start)."""
        return self.origin[start], self.origin[end - 1] + 1

    def original_index(self, index: int) -> int:
        """The original position of folded character `index` (the original length past the end)."""
        return self.origin[index] if index < len(self.origin) else self.length


def normalize(text: str) -> str:
    """The folded text that the word list is matched against (see the module docstring)."""
    return FoldedText(text).text


def word_forms(word: str) -> set[str]:
    """A word with its plural and verb endings: stab, stabs, stabbed, stabbing, stabber, ..."""
    forms = {word}
    if not word.isalpha() or not word.isascii() or len(word) < 3:
        return forms
    forms.add(word + "s")
    if word.endswith(("s", "x", "z", "ch", "sh")):
        forms.add(word + "es")
    if word.endswith("e"):
        forms |= {word + "d", word[:-1] + "ing", word + "r", word + "rs"}
        return forms
    stems = [word]
    vowels = "aeiou"
    if word[-1] not in vowels + "wxy" and word[-2] in vowels and word[-3] not in vowels:
        stems.append(word + word[-1])  # stab -> stabb-ed
    for stem in stems:
        forms |= {stem + "ed", stem + "ing", stem + "er", stem + "ers"}
    return forms


def _letter(char: str, first: bool) -> str:
    symbols = LEET.get(char, "")
    if first:
        symbols = "".join(s for s in symbols if s not in NOT_FIRST)
    return "[" + re.escape(char + symbols) + "]" if symbols else re.escape(char)


def _trie_regex(sequences) -> str:
    """One regex for many sequences of letters (" " between words), sharing common prefixes."""
    trie: dict = {}
    for sequence in sequences:
        node = trie
        for token in sequence:
            node = node.setdefault(token, {})
        node[""] = {}

    def emit(node: dict, first: bool) -> str:
        alternatives = []
        for token in sorted(t for t in node if t):
            if token == " ":
                alternatives.append(_PHRASE_SEP + emit(node[token], True))
            else:
                alternatives.append(_letter(token, first) + emit(node[token], False))
        if not alternatives:
            return ""
        body = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(trie, True)


@dataclass(frozen=True)
class WordMatch:
    """Where a blocked word was found, in positions of the original text (like `re.Match`)."""

    string: str
    span_: tuple[int, int]

    def start(self) -> int:
        return self.span_[0]

    def end(self) -> int:
        return self.span_[1]

    def span(self) -> tuple[int, int]:
        return self.span_

    def group(self, index: int = 0) -> str:
        if index != 0:
            raise IndexError("no such group")
        return self.string[self.span_[0]:self.span_[1]]


@dataclass
class SafetyFilter:
    """Finds blocked words or phrases in text: whole words, any case, folded as the module docstring says."""

    words: list[str]
    pattern: re.Pattern = field(init=False, repr=False)

    def __post_init__(self):
        words = sorted({w.strip().lower() for w in self.words if w.strip()}, key=len, reverse=True)
        if not words:
            raise ValueError("the blocked-words list is empty; give at least one word, or turn the filter off")
        sequences, single, prefixes = set(), set(), set()
        for word in words:
            parts = [p for p in re.split(r"[\s\-]+", normalize(word)) if p]
            if not parts:
                continue
            for form in word_forms(parts[-1]):
                sequences.add(" ".join(parts[:-1] + [form]))
                if len(parts) == 1:
                    single.add(form)
            for k in range(1, len(parts)):  # "dead " could be the start of "dead body"
                prefixes.add(" ".join(parts[:k]) + " ")
        if not sequences:
            raise ValueError("the blocked-words list has no letters in it; give at least one word")
        # (?<!\w) / (?!\w) rather than \b: entries may start or end with punctuation.
        self.pattern = re.compile(r"(?<!\w)" + _trie_regex(sequences) + r"(?!\w)")
        self.phrase_start = re.compile(r"(?<!\w)" + _trie_regex(prefixes) + r"\Z") if prefixes else None
        self.forms = "\n" + "\n".join(sorted(single)) + "\n"
        self._masks: dict[str, bool] = {}
        self.words = words
        self.longest = max(len(s) for s in sequences)
        # How far back (in folded characters) a match, or a spelled-out word, can start.
        self.near = self.longest + 8
        self.margin = 4 * self.longest + 16

    @classmethod
    def from_file(cls, path=None) -> "SafetyFilter":
        return cls(read_word_list(path))

    def find(self, text: str, start: int = 0, end: int | None = None) -> WordMatch | None:
        """The first blocked word in text[start:end]; words running over `start` count too.

        Positions (of the argument and of the match) are in the original text.
        """
        end = len(text) if end is None else end
        folded = FoldedText(text[:end])
        span = self.search(folded.text, max(0, folded.folded_index(start) - self.margin))
        if span is None:
            return None
        return WordMatch(text, folded.original_span(*span))

    def is_blocked(self, text: str) -> bool:
        return self.find(text) is not None

    @staticmethod
    def fold(text: str = "") -> FoldedText:
        """Folded text to `append` to piece by piece, for `search` and `unfinished_start`."""
        return FoldedText(text)

    # ------------------------------------------------------------------ on folded text

    def search(self, folded: str, start: int = 0, end: int | None = None) -> tuple[int, int] | None:
        """The first blocked word in folded[start:end] (folded positions), or None."""
        end = len(folded) if end is None else end
        found = []
        match = self.pattern.search(folded, start, end)
        if match:
            found.append(match.span())
        if "*" in folded[start:end]:
            found += self._masked(folded, start, end)
        for run in SPELLED_OUT.finditer(folded, start, end):
            where = [i for i in range(*run.span()) if _LETTER.match(folded, i)]
            letters = "".join(folded[i] for i in where)
            n = len(letters)
            # The words "a" and "I" may sit next to a spelled-out word: "I k i l l e d", "s t a b a cat".
            lead = len(letters[:2]) - len(letters[:2].lstrip("ai"))
            trail = len(letters[-2:]) - len(letters[-2:].rstrip("ai"))
            for first in range(lead + 1):
                for last in range(n - trail, n + 1):
                    word = letters[first:last]
                    inner = self.pattern.search(word)
                    spans = [inner.span()] if inner else []
                    if "*" in word:
                        spans += self._masked(word, 0, len(word))
                    found += [(where[first + s], where[first + e - 1] + 1) for s, e in spans]
        return min(found) if found else None

    def _masked(self, folded: str, start: int, end: int) -> list[tuple[int, int]]:
        return [m.span() for m in MASKED.finditer(folded, start, end) if self._mask_matches(m.group())]

    def _mask_matches(self, token: str) -> bool:
        """Whether a masked word ("f*ck") could be one of the blocked words or their forms."""
        if token in self._masks:
            return self._masks[token]
        regex = []
        for run in re.finditer(r"\*+|.", token):
            piece = run.group()
            if piece.startswith("*"):
                regex.append(f"[a-z]{{{len(piece)},{len(piece) + 1}}}")
            elif piece in LETTERS_FOR:
                regex.append("[" + re.escape(piece + LETTERS_FOR[piece]) + "]")
            else:
                regex.append(re.escape(piece))
        found = re.search("\n" + "".join(regex) + "\n", self.forms) is not None
        if len(self._masks) < 1024:
            self._masks[token] = found
        return found

    def unfinished_start(self, folded: str, end: int) -> int:
        """Where text that may still grow into a blocked word starts, at the end of folded[:end].

        The last word if it is not finished, single letters before it that may be a word being
        spelled out, and words before those that may begin a blocked phrase ("dead " of "dead body").
        """
        low = max(0, end - self.margin)
        cut = end
        while cut > low and _in_word(folded, cut - 1):  # the last word ("sh!" may become "sh!t")
            cut -= 1
        while True:  # single letters with separators before it: "k i " of "k i l"
            i = cut
            while i > low and cut - i < 3 and folded[i - 1] in _SEP_CHARS:
                i -= 1
            if i == cut or i <= low or not _is_letter(folded[i - 1]) or (i > 1 and _in_word(folded, i - 2)):
                break
            cut = i - 1
        if self.phrase_start is not None and cut > low and folded[cut - 1] in _PHRASE_SEP_CHARS:
            phrase = self.phrase_start.search(folded, max(low, cut - self.near), cut)
            if phrase:
                cut = phrase.start()
        return cut
