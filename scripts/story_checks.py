"""The story checks of docs/experiments.md: 16 prompts of our own (not the README's), 300 new tokens, under
several decoding settings and seeds, counted as a parent would notice them: stories that loop (the same 4 words
3+ times, `tinytales.compare.loops`) and stories that end by themselves.

    python scripts/story_checks.py --model tinytales/pretrained/tinytales-stories --model runs/story/model \
        --out docs/story-checks.md
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from tinytales.compare import compare
from tinytales.generate import GenerationConfig, story_config

PROMPTS = [
    "Tom and his dog went to the beach.", "Mia found a tiny key under her bed.", "One sunny morning, a little duck",
    "The old bear could not sleep.", "Sam wanted to build the tallest tower.", "A girl named Zoe had a red balloon.",
    "In a small village, there lived a kind baker.", "The frog and the bird were best friends.",
    "Max was afraid of the dark.", "Grandma gave Lucy a big box.", "The little car did not want to go fast.",
    "Ben and Anna were playing in the garden when", "A lonely star looked down at the world.",
    "Once there was a cat who loved to sing.", "The rain started and Lily", "Jack saw a big, shiny rock in the river.",
]

CANDIDATES = {
    "greedy": GenerationConfig(method="greedy"),
    "T0.8 top-p 0.95": GenerationConfig(temperature=0.8, top_p=0.95),
    "T0.8 top-p 0.95 rep 1.1": GenerationConfig(temperature=0.8, top_p=0.95, repetition_penalty=1.1),
    "T0.8 top-p 0.95 rep 1.05": GenerationConfig(temperature=0.8, top_p=0.95, repetition_penalty=1.05),
    "T0.8 top-p 0.95 no-repeat 4": GenerationConfig(temperature=0.8, top_p=0.95, no_repeat_ngram_size=4),
    "T0.9 min-p 0.05": GenerationConfig(temperature=0.9, min_p=0.05),
    "story defaults": story_config(),  # tinytales.defaults.STORY_DEFAULTS
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--method", action="append", help=f"candidates to run (default all: {', '.join(CANDIDATES)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    methods = args.method or list(CANDIDATES)
    rows, stories = [], []
    for seed in args.seeds:
        for name in methods:
            if CANDIDATES[name].greedy and seed != args.seeds[0]:
                continue  # greedy does not depend on the seed
            result = compare(args.model, PROMPTS, [replace(CANDIDATES[name], max_new_tokens=args.max_new_tokens)],
                             max_new_tokens=args.max_new_tokens, seed=seed)
            for o in result.outputs:
                stories.append({**o.__dict__, "method": name, "seed": seed})
    for model in dict.fromkeys(s["model"] for s in stories):
        for name in methods:
            mine = [s for s in stories if s["model"] == model and s["method"] == name]
            rows.append({"model": model, "method": name, "stories": len(mine), "loops": sum(s["loops"] for s in mine),
                         "ended": sum(s["finished"] for s in mine),
                         "words": sum(s["words"] for s in mine) / len(mine),
                         "distinct_2": sum(s["distinct_2"] for s in mine) / len(mine)})
    lines = [f"Prompts: {len(PROMPTS)} of our own; seeds {args.seeds} (greedy once); {args.max_new_tokens} new tokens.",
             "", "| model | decoding | stories | loop (same 4 words 3+ times) | ended | words | distinct-2 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['stories']} | {r['loops']} | {r['ended']} | "
                     f"{r['words']:.0f} | {r['distinct_2']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "stories": stories}, indent=1))


if __name__ == "__main__":
    main()
