"""Models x prompts x decoding methods, side by side, with simple story metrics.

For every model, prompt and method one story is generated (same seed everywhere, so a table is
reproducible) and measured: its length in words, whether it ended by itself, how repetitive it is
(repeated word 3-grams, distinct word bigrams), and how many of its words a child reading
TinyStories has never met (words outside the vocabulary of the training stories). Each model can
also be scored with bits per byte on a held-out set. The result renders as Markdown or JSON.

The children's vocabulary ships as `tinytales/resources/children_vocab.txt`; rebuild it with
    python -c "from tinytales.compare import build_children_vocab as b; b('../shared/data/tinystories/train.jsonl')"
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .defaults import DECODING_METHODS, method_settings

VOCAB_PATH = Path(__file__).parent / "resources" / "children_vocab.txt"

# The decoding methods a table compares by name: the one vocabulary of every command (tinytales.defaults).
METHODS = DECODING_METHODS

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def words(text: str) -> list[str]:
    """Lower-case words of a text; a possessive 's is dropped ("Lily's" -> "lily") and ’ counts as '."""
    found = _WORD.findall(text.lower().replace("\u2019", "'"))
    return [w[:-2] if w.endswith("'s") else w for w in found]


def build_children_vocab(source, out=VOCAB_PATH, min_count: int = 2, max_documents: int | None = None,
                         text_field: str = "text") -> Path:
    """Write the words used at least `min_count` times in the stories of `source`, one per line, sorted.

    min_count 2 keeps the words of the stories but drops most one-off typos and invented names.
    """
    from .evaluate import iter_texts

    counts: Counter[str] = Counter()
    for i, text in enumerate(iter_texts(source, split="train", text_field=text_field)):
        if max_documents is not None and i >= max_documents:
            break
        counts.update(words(text))
    vocab = sorted(w for w, n in counts.items() if n >= min_count)
    if not vocab:
        raise ValueError(f"no words used {min_count}+ times in {source}; is it a file of stories?")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return out


@functools.lru_cache(maxsize=4)
def load_children_vocab(path=VOCAB_PATH) -> frozenset[str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"children's vocabulary not found: {path}; build it with "
                                f"tinytales.compare.build_children_vocab(TRAIN_STORIES, {str(path)!r})")
    return frozenset(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


LOOP_NGRAM, LOOP_TIMES = 4, 3  # a story loops when the same 4 words come 3 or more times


def loops(text: str) -> bool:
    """Whether the same LOOP_NGRAM words occur LOOP_TIMES or more times in the text (45 of the 902 real
    validation stories do, 5%; greedy decoding that falls into a loop does it at once)."""
    w = words(text)
    grams = Counter(zip(*(w[i:] for i in range(LOOP_NGRAM))))
    return bool(grams) and max(grams.values()) >= LOOP_TIMES


def story_metrics(text: str, vocab: frozenset[str]) -> dict:
    """Length in words, repeated 3- and 4-gram rates, the loop flag, distinct-2 and the share of words
    outside `vocab`.

    repeated_Ngram_rate: share of the word N-grams that already occurred earlier in the text (0 = none
    repeats; loops of greedy decoding push it towards 1). loops: see `loops`. distinct_2: unique word
    bigrams / bigrams. Texts too short for an N-gram (bigram, word) get 0.
    """
    w = words(text)
    trigrams = list(zip(w, w[1:], w[2:]))
    fourgrams = list(zip(w, w[1:], w[2:], w[3:]))
    bigrams = list(zip(w, w[1:]))
    return {
        "words": len(w),
        "repeated_3gram_rate": 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0,
        "repeated_4gram_rate": 1 - len(set(fourgrams)) / len(fourgrams) if fourgrams else 0.0,
        "loops": loops(text),
        "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        "outside_vocab": sum(x not in vocab for x in w) / len(w) if w else 0.0,
    }


def method_config(method, max_new_tokens: int, seed: int | None):
    """(name, GenerationConfig) of a named method or of a GenerationConfig given as is."""
    from .generate import GenerationConfig

    if isinstance(method, GenerationConfig):
        return describe(method), replace(method, max_new_tokens=max_new_tokens, seed=seed)
    return method, GenerationConfig(**method_settings(method, max_new_tokens=max_new_tokens), seed=seed)


def describe(config) -> str:
    """A short name for a GenerationConfig: its method and the settings that differ from the defaults."""
    from .generate import GenerationConfig

    default = GenerationConfig(method=config.method)
    shown = {"temperature": "T", "top_k": "top-k", "top_p": "top-p", "min_p": "min-p", "num_beams": "beams",
             "repetition_penalty": "rep", "no_repeat_ngram_size": "no-repeat"}
    parts = [config.method] + [f"{label}={getattr(config, key)}" for key, label in shown.items()
                               if getattr(config, key) != getattr(default, key)]
    return " ".join(parts)


@dataclass
class ModelSummary:
    name: str
    path: str | None
    parameters: int
    vocab_size: int
    bits_per_byte: float | None = None
    eval_documents: int | None = None


@dataclass
class Output:
    """One generated story; the metrics are those of the continuation (the prompt excluded)."""
    model: str
    method: str
    prompt: str
    text: str
    finished: bool  # ended with the end-of-story token (not cut off at max_new_tokens)
    new_tokens: int
    seconds: float
    words: int
    repeated_3gram_rate: float
    repeated_4gram_rate: float
    loops: bool  # the same 4 words 3+ times
    distinct_2: float
    outside_vocab: float


@dataclass
class CompareResult:
    models: list[ModelSummary]
    prompts: list[str]
    methods: dict[str, dict]  # name -> the GenerationConfig used, as a dict
    outputs: list[Output]
    eval_source: str | None = None
    settings: dict = field(default_factory=dict)

    def summary(self) -> list[dict]:
        """One row per model x method: metrics averaged over the prompts."""
        rows = []
        for model in self.models:
            for method in self.methods:
                outs = [o for o in self.outputs if o.model == model.name and o.method == method]
                mean = lambda key: sum(getattr(o, key) for o in outs) / len(outs)  # noqa: E731
                rows.append({"model": model.name, "method": method, "stories": len(outs),
                             "words": mean("words"), "ended": mean("finished"),
                             "repeated_3gram_rate": mean("repeated_3gram_rate"),
                             "repeated_4gram_rate": mean("repeated_4gram_rate"), "loops": mean("loops"),
                             "distinct_2": mean("distinct_2"),
                             "outside_vocab": mean("outside_vocab"), "seconds": mean("seconds")})
        return rows

    def to_dict(self) -> dict:
        return {"models": [asdict(m) for m in self.models], "prompts": self.prompts, "methods": self.methods,
                "eval_source": self.eval_source, "settings": self.settings, "summary": self.summary(),
                "outputs": [asdict(o) for o in self.outputs]}

    def to_markdown(self) -> str:
        lines = ["## Models", "",
                 "| model | parameters | vocabulary | bits per byte |", "|---|---:|---:|---:|"]
        for m in self.models:
            bpb = f"{m.bits_per_byte:.3f}" if m.bits_per_byte is not None else "–"
            lines.append(f"| {_cell(m.name)} | {m.parameters:,} | {m.vocab_size:,} | {bpb} |")
        if self.eval_source:
            lines += ["", f"Bits per byte on {self.eval_source} ({self.models[0].eval_documents} stories)."]
        lines += ["", f"## Decoding methods (mean over {len(self.prompts)} prompt(s))", "",
                  "| model | method | words | ended | loops | repeated 3-grams | repeated 4-grams | distinct-2 "
                  "| outside vocabulary |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.summary():
            lines.append(f"| {_cell(r['model'])} | {r['method']} | {r['words']:.0f} | {r['ended']:.0%} | "
                         f"{r['loops']:.0%} | {r['repeated_3gram_rate']:.1%} | {r['repeated_4gram_rate']:.1%} | "
                         f"{r['distinct_2']:.2f} | {r['outside_vocab']:.1%} |")
        lines += ["", "## Stories"]
        for prompt in self.prompts:
            lines += ["", f'### "{prompt}"']
            for o in (o for o in self.outputs if o.prompt == prompt):
                ending = ("ended" if o.finished else "cut off") + (", loops" if o.loops else "")
                lines += ["", f"**{o.model} · {o.method}** ({o.words} new words, {ending})", ""]
                lines += [f"> {line}" if line else ">" for line in (prompt + o.text).strip().splitlines()]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _model_names(models: list[str | None]) -> list[str]:
    names = [Path(m).stem if m else "bundled" for m in models]
    return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def compare(models: list[str | None], prompts: list[str], methods: list, eval_source=None,
            max_new_tokens: int = 200, seed: int | None = 0, max_documents: int | None = None,
            vocab_path=VOCAB_PATH, device: str = "cpu", progress: bool = False, text_field: str = "text",
            split: str = "validation") -> CompareResult:
    """Generate a story for every model x prompt x method and measure it; optionally score each model
    with bits per byte on `eval_source` (at most `max_documents` stories; `text_field` and `split` as in
    `tinytales.evaluate.evaluate`).

    `models` are model references for `tinytales.formats.load_model` (None: the bundled model);
    `methods` are names from METHODS or GenerationConfig objects. Every story uses the same `seed`.
    """
    from .evaluate import evaluate
    from .generate import generate
    from .formats import load_model

    if not models or not prompts or not methods:
        raise ValueError("compare needs at least one model, one prompt and one method "
                         f"(got {len(models)}, {len(prompts)}, {len(methods)})")
    configs = dict(method_config(m, max_new_tokens, seed) for m in methods)
    vocab = load_children_vocab(vocab_path)
    summaries, outputs = [], []
    for name, reference in zip(_model_names(models), models):
        loaded = load_model(reference, device=device)
        model, tokenizer = loaded.model, loaded.tokenizer
        summary = ModelSummary(name, str(loaded.path) if loaded.path else None, model.num_params(),
                               tokenizer.vocab_size)
        if eval_source is not None:
            result = evaluate(model, tokenizer, eval_source, max_documents=max_documents, progress=progress,
                              text_field=text_field, split=split)
            summary.bits_per_byte, summary.eval_documents = result.bits_per_byte, result.documents
        summaries.append(summary)
        for prompt in prompts:
            for method, config in configs.items():
                story = generate(model, tokenizer, prompt, config)[0]
                outputs.append(Output(model=name, method=method, prompt=prompt, text=story.text,
                                      finished=story.finished, new_tokens=story.new_tokens, seconds=story.seconds,
                                      **story_metrics(story.text, vocab)))
    return CompareResult(models=summaries, prompts=list(prompts),
                         methods={name: asdict(config) for name, config in configs.items()}, outputs=outputs,
                         eval_source=str(eval_source) if eval_source is not None else None,
                         settings={"max_new_tokens": max_new_tokens, "seed": seed, "max_documents": max_documents})
