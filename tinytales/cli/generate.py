"""`tinytales generate`: tell stories."""
from __future__ import annotations

import sys
import warnings
from typing import Optional

import typer

from ..defaults import DECODING_METHODS, OFF, STORY_DEFAULTS, describe_methods
from . import app
from .common import DEVICE_HELP, TOKENIZER_HELP, err_console, load_for_cli, model_option, print_json, user_errors

DEFAULT_PROMPT = "Once upon a time"


def _method_default(key: str) -> str:
    """Where a decoding flag's default comes from: the --method's setting, else off."""
    setters = ", ".join(f"{name} {settings[key]}" for name, settings in DECODING_METHODS.items() if key in settings)
    return f"default: the --method's ({setters}), else {OFF[key]}"


@app.command()
@user_errors
def generate(
    prompt: Optional[str] = typer.Argument(None, help=f'Beginning of the story (default: "{DEFAULT_PROMPT}"; none '
                                                      f'with --words/--features).', show_default=False),
    model: str = model_option(),
    tokenizer: Optional[str] = typer.Option(None, help=TOKENIZER_HELP),
    method: str = typer.Option("sample", help=f"Decoding method: {describe_methods()}. The flags below change its "
                                              f"settings."),
    temperature: Optional[float] = typer.Option(
        None, help=f"Sampling temperature, >= 0 (0 = greedy; {_method_default('temperature')}).", show_default=False),
    top_k: Optional[int] = typer.Option(None, help=f"Sample among the k most likely tokens (0 = off; "
                                                   f"{_method_default('top_k')}).", show_default=False),
    top_p: Optional[float] = typer.Option(None, help=f"Nucleus sampling: smallest set with this probability, (0, 1] "
                                                     f"({_method_default('top_p')}).", show_default=False),
    min_p: Optional[float] = typer.Option(None, help=f"Drop tokens below min_p x the best token's probability, "
                                                     f"[0, 1) ({_method_default('min_p')}).", show_default=False),
    repetition_penalty: Optional[float] = typer.Option(
        None, help=f"> 1 discourages tokens already in the text (1 = off; {_method_default('repetition_penalty')}).",
        show_default=False),
    no_repeat_ngram: Optional[int] = typer.Option(
        None, help=f"Never repeat an n-gram of this size (0 = off; {_method_default('no_repeat_ngram_size')}).",
        show_default=False),
    num_beams: int = typer.Option(DECODING_METHODS["beam"]["num_beams"], help="Beams for --method beam."),
    length_penalty: float = typer.Option(1.0, help="Beam score = log-prob / length ** length_penalty."),
    max_new_tokens: int = typer.Option(STORY_DEFAULTS["max_new_tokens"], help="Most new tokens per story."),
    num_samples: int = typer.Option(1, help="Stories to tell (beam: the best hypotheses, at most --num-beams)."),
    seed: Optional[int] = typer.Option(None, help="Seed for reproducible sampling (default: a new one each time)."),
    words: Optional[str] = typer.Option(None, help="Words the story should use, comma-separated (at most 5), "
                                                   "e.g. dog,cake,rainy: for models trained with ingredients "
                                                   "(default: none)."),
    features: Optional[str] = typer.Option(None, help="Features the story should have, comma-separated: dialogue, "
                                                      "twist, moralvalue, happyending or sadending (default: none)."),
    stream: Optional[bool] = typer.Option(None, "--stream/--no-stream",
                                          help="Print token by token (default: when stdout is a terminal)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    threads: Optional[int] = typer.Option(None, help="CPU threads (torch.set_num_threads); 1 is often fastest "
                                                      "for small models on a busy machine (default: PyTorch's "
                                                      "choice)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object: prompt, settings, stories."),
):
    """Continue a prompt into a story.

    Defaults: --method sample, the story defaults (tinytales.defaults.STORY_DEFAULTS, chosen by measurement).
    --method greedy is deterministic; --method beam keeps the --num-beams most likely continuations; the
    other methods (the same names as tinytales compare's) are plain sampling with one filter each.
    A story ends at the model's end-of-story token; past the model's context the window slides.

    Examples:

      tinytales generate "Once upon a time, there was a little cat"

      tinytales generate "Tom found a red ball." --model runs/tiny/model --method greedy --max-new-tokens 50

      tinytales generate "The dragon" --method top-p --num-samples 3 --seed 1 --json

      tinytales generate --words dog,cake,rainy --features dialogue,twist
    """
    from rich.markup import escape

    from .. import generate as engine
    from ..defaults import method_settings

    # everything is checked before the (slower) model loading
    config = engine.GenerationConfig(**method_settings(
        method, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram, num_beams=num_beams,
        length_penalty=length_penalty, num_samples=num_samples, seed=seed, words=words, features=features))
    if prompt is None:  # with ingredients the model begins the story itself
        prompt = "" if config.ingredients else DEFAULT_PROMPT
    prompt = engine.check_prompt(prompt, config.ingredients)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    loaded = load_for_cli(model, tokenizer, device)
    if config.ingredients:
        from ..ingredients import trained_with_ingredients

        if not trained_with_ingredients(loaded.card or {}):
            err_console.print("[yellow]warning:[/] this model's card does not say it was trained with ingredients "
                              "(tinytales prepare --ingredients); it may not follow --words/--features",
                              highlight=False, soft_wrap=True)
    if stream is None:
        stream = sys.stdout.isatty()
    with warnings.catch_warnings(record=True) as caught:  # the prompt-truncation warning, as one clean line
        warnings.simplefilter("always")
        if stream and not as_json and num_samples == 1:
            stories = [_print_streamed(loaded, prompt, config)]
        else:
            stories = engine.generate(loaded.model, loaded.tokenizer, prompt, config)
            if not as_json:
                _print_stories(prompt, stories)
    for warning in caught:
        err_console.print(f"[yellow]warning:[/] {escape(str(warning.message))}", highlight=False, soft_wrap=True)
    if as_json:
        settings = {k: v for k, v in config.to_dict().items() if k != "use_cache"}
        print_json({"prompt": prompt, "model": str(loaded.path) if loaded.path else model, "settings": settings,
                    "stories": [_story_json(s) for s in stories]})
        return
    first = stories[0]  # the samples ran as one batch: one timing
    ending = "ended by the model" if first.finished else f"cut at --max-new-tokens {max_new_tokens}"
    err_console.print(f"[dim]{first.new_tokens} new tokens in {first.seconds:.2f} s "
                      f"({first.tokens_per_second:.0f} tokens/s), {ending}[/]", highlight=False)


def _print_streamed(loaded, prompt: str, config):
    """Print the prompt, then the story piece by piece as it is generated; return the Story."""
    from .. import generate as engine

    events = engine.stream_events(loaded.model, loaded.tokenizer, prompt, config)  # checks everything first
    sys.stdout.write(prompt)
    sys.stdout.flush()
    for event in events:
        if not isinstance(event, str):
            sys.stdout.write("\n")
            sys.stdout.flush()
            return event
        sys.stdout.write(event)
        sys.stdout.flush()


def _print_stories(prompt: str, stories: list) -> None:
    for i, story in enumerate(stories, 1):
        if len(stories) > 1:
            separator = f"--- story {i} of {len(stories)} ---\n"
            sys.stdout.write(separator if i == 1 else "\n" + separator)
        sys.stdout.write(prompt + story.text + "\n")
    sys.stdout.flush()


def _story_json(story) -> dict:
    data = story.to_dict()
    data.pop("prompt")
    return data
