"""The limits of the HTTP API, the checks every protocol's request bodies share, and the page's own body.

Pydantic checks types and ranges (a 422 naming the field and the allowed range; ollama's routes answer
400); the generation engine's `GenerationConfig` then checks how the values combine (a 400 with its
message). Every text field is checked to be text that UTF-8 can carry (`valid_text`: JSON may spell a
lone surrogate, "\\ud800", which no tokenizer can encode), the same way in every protocol.
The limits are part of the OpenAPI schema, so clients and fuzzers see them too. The bodies of the
other protocols live with their routes (`ollama.py`, `openai.py`).
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..defaults import API_MAX_BEAMS as MAX_BEAMS
from ..defaults import API_MAX_NEW_TOKENS as MAX_NEW_TOKENS
from ..defaults import API_MAX_PROMPT_CHARS as MAX_PROMPT_CHARS
from ..defaults import API_MAX_TOP_K as MAX_TOP_K
from ..defaults import STORY_DEFAULTS
from ..generate import GenerationConfig
from ..ingredients import FEATURES, MAX_WORD_CHARS, MAX_WORDS
from .storyteller import request_config

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
MAX_SEED = 2**32 - 1
MAX_BODY_BYTES = 64 * 1024
# Below these, float32 arithmetic breaks down (logits / temperature overflows; a top_p that rounds
# to 0 drops every token) and decoding is greedy in all but name anyway.
MIN_TEMPERATURE = 0.01
MIN_TOP_P = 0.001

EXAMPLE_PROMPTS = [
    "Lily found a shiny key in the garden.",
    "Tom and his dog went to the park.",
    "The little boat wanted to see the sea.",
    "A tiny bunny found a big red ball.",
]

TEXT_FIELDS_STORY = ("prompt", "words", "features")


def valid_text(value, field: str):
    """`value` unchanged when every string in it (a list's items, a dict's keys) is valid Unicode.

    Raises ValueError naming the field for a lone surrogate ("\\ud800" in JSON decodes to one, and
    it cannot be encoded); values of other types pass on to pydantic's own type check."""
    texts = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple, dict)) else []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            where = "" if isinstance(value, str) else f" (item {i})"
            raise ValueError(f"{field}{where} is not valid text: it has a lone surrogate "
                             f"{text[e.start]!r} at character {e.start}; send Unicode text (UTF-8)") from None
    return value


Word = Annotated[str, Field(max_length=MAX_WORD_CHARS)]
Feature = Annotated[str, Field(max_length=32)]
WORDS_FIELD = Field([], max_length=MAX_WORDS, description=f"Ingredients: up to {MAX_WORDS} words the story should use "
                                                           f"(models trained with ingredients), e.g. [\"dog\", \"cake\"].")
FEATURES_FIELD = Field([], max_length=len(FEATURES), description=f"Ingredients: features the story should have, "
                                                                 f"from {', '.join(FEATURES)}.")


class StoryRequest(BaseModel):
    """`POST /api/story`, the page's protocol: one story. Unknown fields are an error, so typos do not go unnoticed."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False,
                              json_schema_extra={"examples": [{"prompt": "Once upon a time", "method": "sample",
                                                               "temperature": 0.8, "max_new_tokens": 200}]})

    prompt: str = Field("Once upon a time", max_length=MAX_PROMPT_CHARS,
                        description=f"Start of the story (at most {MAX_PROMPT_CHARS} characters; may be empty "
                                    f"when words or features are given).")
    words: list[Word] = WORDS_FIELD
    features: list[Feature] = FEATURES_FIELD
    method: Literal["sample", "greedy", "beam"] = Field(
        "sample", description="sample: random and varied; greedy: the most likely word each time; "
                              "beam: the most likely story among num_beams candidates.")
    # defaults: the story defaults (tinytales.generate.STORY_DEFAULTS), as on the command line
    max_new_tokens: int = Field(STORY_DEFAULTS["max_new_tokens"], ge=1, le=MAX_NEW_TOKENS,
                                description="Story length limit in tokens.")
    temperature: float = Field(STORY_DEFAULTS["temperature"], ge=MIN_TEMPERATURE, le=2.0,
                               description="sample: higher is more surprising.")
    top_k: int = Field(STORY_DEFAULTS["top_k"], ge=0, le=MAX_TOP_K,
                       description="sample: keep the k likeliest tokens (0 = all).")
    top_p: float = Field(STORY_DEFAULTS["top_p"], ge=MIN_TOP_P, le=1.0,
                         description="sample: keep the likeliest tokens up to this mass.")
    min_p: float = Field(STORY_DEFAULTS["min_p"], ge=0.0, lt=1.0,
                         description="sample: drop tokens below min_p x the top probability.")
    repetition_penalty: float = Field(STORY_DEFAULTS["repetition_penalty"], ge=1.0, le=2.0,
                                      description="Discourage repeated tokens (1 = off).")
    no_repeat_ngram_size: int | None = Field(None, ge=0, le=10, description="Never repeat an n-gram of this size "
                                                                        "(0 = off; default 3 for beam, else the "
                                                                        "story default).")
    num_beams: int = Field(4, ge=2, le=MAX_BEAMS, description="beam: candidates kept at each step.")
    length_penalty: float = Field(1.0, ge=-2.0, le=2.0, description="beam: > 1 favours longer stories.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Same seed, same story (sampling).")
    stream: bool = Field(False, description="Answer with Server-Sent Events: `text` pieces, then `done`.")

    @field_validator(*TEXT_FIELDS_STORY, mode="before")
    @classmethod
    def text_is_text(cls, value, info):
        return valid_text(value, info.field_name)

    def config(self) -> GenerationConfig:
        # greedy and beam search stay plain unless the request asks for a penalty (story_config's rule)
        asked_penalty = self.method == "sample" or "repetition_penalty" in self.model_fields_set
        settings = dict(method=self.method, max_new_tokens=self.max_new_tokens, seed=self.seed,
                        repetition_penalty=self.repetition_penalty if asked_penalty else None,
                        no_repeat_ngram_size=self.no_repeat_ngram_size, words=self.words, features=self.features)
        if self.method == "sample":
            settings.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p)
        elif self.method == "beam":
            settings.update(num_beams=self.num_beams, length_penalty=self.length_penalty)
        return request_config(story_defaults=True, **settings)


def check_temperature(value: float | None) -> float | None:
    """OpenAI's and ollama's temperature: 0 (greedy decoding) or a usable one."""
    if value is not None and 0 < value < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {value}")
    return value


def check_stops(value: str | list[str] | None) -> list[str]:
    """Stop sequences as a list: at most MAX_STOP_SEQUENCES of 1 to MAX_STOP_CHARS characters each."""
    stops = [value] if isinstance(value, str) else (value or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}")
    for s in stops:
        if not 1 <= len(s) <= MAX_STOP_CHARS:
            raise ValueError(f"each stop sequence needs 1 to {MAX_STOP_CHARS} characters, got {s!r:.80}")
    return stops
