"""Request bodies of the HTTP API, with a limit on every input.

Pydantic checks types and ranges (a 422 naming the field and the allowed range); the generation
engine's `GenerationConfig` then checks how the values combine (a 400 with its message). Every text
field is checked to be text that UTF-8 can carry (`valid_text`: JSON may spell a lone surrogate,
"\\ud800", which no tokenizer can encode), the same way in both APIs.
The limits are part of the OpenAPI schema, so clients and fuzzers see them too.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..defaults import API_MAX_BEAMS as MAX_BEAMS
from ..defaults import API_MAX_NEW_TOKENS as MAX_NEW_TOKENS
from ..defaults import API_MAX_PROMPT_CHARS as MAX_PROMPT_CHARS
from ..defaults import API_MAX_TOP_K as MAX_TOP_K
from ..defaults import STORY_DEFAULTS
from ..ingredients import FEATURES, MAX_WORD_CHARS, MAX_WORDS

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

TEXT_FIELDS_GENERATE = ("prompt", "words", "features")
TEXT_FIELDS_COMPLETION = ("model", "prompt", "stop", "user", "suffix", "words", "features", "logit_bias")


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


class GenerateRequest(BaseModel):
    """`POST /api/generate`: one story. Unknown fields are an error, so typos do not go unnoticed."""

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

    @field_validator(*TEXT_FIELDS_GENERATE, mode="before")
    @classmethod
    def text_is_text(cls, value, info):
        return valid_text(value, info.field_name)


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """`POST /v1/completions`, the OpenAI legacy completions API.

    Unknown fields are ignored (OpenAI clients send extras); known but unsupported features
    (logprobs, n > 1, penalties, logit_bias, suffix) are refused with a message.
    `top_k`, `min_p` and `repetition_penalty` are accepted as extras, as vLLM does, and the ingredients
    `words` and `features`.
    """

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = Field(None, max_length=200, description="Model id from GET /v1/models.")
    prompt: str | list[str] = Field("", description=f"One prompt (a string or a list of one string), "
                                                    f"at most {MAX_PROMPT_CHARS} characters.")
    max_tokens: int | None = Field(16, ge=1, le=MAX_NEW_TOKENS, description="Tokens to generate (OpenAI default 16).")
    temperature: float | None = Field(1.0, ge=0.0, le=2.0,
                                      description=f"0 (greedy decoding), or {MIN_TEMPERATURE} to 2.")
    top_p: float | None = Field(1.0, ge=MIN_TOP_P, le=1.0)
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K)
    min_p: float | None = Field(None, ge=0.0, lt=1.0)
    repetition_penalty: float | None = Field(None, ge=1.0, le=2.0)
    n: int | None = Field(1, ge=1, le=1, description="Only one completion per request.")
    best_of: int | None = Field(None, ge=1, le=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP_SEQUENCES} sequences that end the text.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=0, description="Not supported (only null or 0).")
    presence_penalty: float | None = Field(0.0, ge=0.0, le=0.0, description="Not supported (only 0).")
    frequency_penalty: float | None = Field(0.0, ge=0.0, le=0.0, description="Not supported (only 0).")
    logit_bias: dict[str, float] | None = Field(None, max_length=0, description="Not supported (only empty).")
    suffix: str | None = Field(None, max_length=0, description="Not supported (only empty).")
    user: str | None = Field(None, max_length=200)
    words: list[Word] = WORDS_FIELD  # TinyTales extras, like top_k
    features: list[Feature] = FEATURES_FIELD

    @field_validator(*TEXT_FIELDS_COMPLETION, mode="before")
    @classmethod
    def text_is_text(cls, value, info):
        return valid_text(value, info.field_name)

    @field_validator("prompt")
    @classmethod
    def one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError(f"give exactly one prompt (a string or a list of one string), got a list of "
                                 f"{len(value)}; send one request per prompt")
            value = value[0]
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt is {len(value)} characters long; the limit is {MAX_PROMPT_CHARS}")
        return value

    @field_validator("temperature")
    @classmethod
    def greedy_or_sensible_temperature(cls, value):
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {value}")
        return value

    @field_validator("stop")
    @classmethod
    def few_short_stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}")
        for s in stops:
            if not 1 <= len(s) <= MAX_STOP_CHARS:
                raise ValueError(f"each stop sequence needs 1 to {MAX_STOP_CHARS} characters, got {s!r:.80}")
        return stops
