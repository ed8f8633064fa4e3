"""The ingredient checks of docs/experiments.md: stories asked for with `--words` / `--features`, counted by the
same rules that labelled the training stories (tinytales.ingredients).

- words: for each of 24 requests, three common words (a noun, a verb and an adjective drawn from the
  ingredient word lists with a fixed seed); the share of requested words the story uses
  (any form: dog/dogs, go/went), and the same words' share in stories told without asking (the base rate);
- features: each feature asked for alone, 16 stories each; how often the story has it, against how often
  stories told without asking have it.
Every story begins with the prompt "Once upon a time", under the story defaults, 300 new tokens.

    python scripts/ingredient_checks.py --model runs/ingredients/model --model runs/control/model \
        --out docs/ingredient-checks.json
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tinytales.formats import load_model
from tinytales.generate import generate, story_config
from tinytales.ingredients import ADJECTIVES, FEATURES, NOUNS, VERBS, story_features, uses_word


def requests(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    return [(rng.choice(NOUNS), rng.choice(VERBS), rng.choice(ADJECTIVES)) for _ in range(n)]


PROMPT = "Once upon a time"  # every story, asked or not, begins so: the comparison is fair


def tell(loaded, seed: int, max_new_tokens: int, **ingredients) -> str:
    config = story_config(max_new_tokens=max_new_tokens, seed=seed, **ingredients)
    return PROMPT + generate(loaded.model, loaded.tokenizer, PROMPT, config)[0].text


def check(model: str, n_words: int, n_features: int, max_new_tokens: int) -> dict:
    loaded = load_model(model)
    asked = requests(n_words)
    used, base, samples = 0, 0, []
    for i, words in enumerate(asked):
        story = tell(loaded, i, max_new_tokens, words=words)
        plain = tell(loaded, i, max_new_tokens)
        hits = [uses_word(story, w) for w in words]
        used += sum(hits)
        base += sum(uses_word(plain, w) for w in words)
        if i < 3:
            samples.append({"words": list(words), "used": hits, "story": story})
    features = {}
    plain_stories = [tell(loaded, 1000 + i, max_new_tokens) for i in range(n_features)]
    for feature in FEATURES:
        stories = [tell(loaded, 1000 + i, max_new_tokens, features=(feature,)) for i in range(n_features)]
        features[feature] = {"asked": sum(feature in story_features(s) for s in stories) / n_features,
                             "not_asked": sum(feature in story_features(s) for s in plain_stories) / n_features}
    return {"model": model, "word_requests": n_words, "words_used": used / (3 * n_words),
            "words_in_stories_not_asked": base / (3 * n_words), "feature_stories": n_features,
            "features": features, "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--word-requests", type=int, default=24)
    parser.add_argument("--feature-stories", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [check(m, args.word_requests, args.feature_stories, args.max_new_tokens) for m in args.model]
    for r in results:
        print(f"{r['model']}: words used {r['words_used']:.0%} (without asking {r['words_in_stories_not_asked']:.0%})")
        for feature, share in r["features"].items():
            print(f"  {feature:12s} asked {share['asked']:.0%}   not asked {share['not_asked']:.0%}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
