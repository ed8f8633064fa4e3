"""How a story should start (docs/experiments.md, "How a story starts"): the model reads a prompt either as is or
after the story-start token (the end-of-story token every training story follows, or BOS where the tokenizer has
one). For each validation story, its first sentence is the prompt; the rest of the story (and its end) is scored
both ways, on the same target tokens.

    python scripts/story_start.py --model tinytales/pretrained/tinytales-stories --data ../shared/data/tinystories/valid.jsonl
"""
from __future__ import annotations

import argparse
import math
import re

import torch
import torch.nn.functional as F

from tinytales.evaluate import iter_texts, story_start_id
from tinytales.formats import load_model


@torch.inference_mode()
def continuation_nats(model, ids: list[int], first_target: int) -> float:
    """Nats of ids[first_target:] given ids[:first_target] (ids fit the context)."""
    x = torch.tensor([ids[:-1]])
    logits = model(x)[0][0].float()  # (T, V)
    targets = torch.tensor(ids[1:])
    nll = F.cross_entropy(logits, targets, reduction="none")
    return float(nll[first_target - 1:].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--max-documents", type=int, default=None)
    args = parser.parse_args()
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    model.eval()
    start = story_start_id(tok)
    totals = {"with": 0.0, "without": 0.0}
    n_bytes = stories = 0
    for i, text in enumerate(iter_texts(args.data)):
        if args.max_documents and i >= args.max_documents:
            break
        found = re.search(r"[.!?](\s)", text)
        if not found:
            continue
        prompt, rest = text[:found.start() + 1], text[found.start() + 1:]
        p, r = tok.encode(prompt), tok.encode(rest)
        ids = p + r + [tok.eot_id]
        if len(ids) + 1 > model.config.context_length or len(p) < 2:
            continue
        totals["with"] += continuation_nats(model, [start] + ids, len(p) + 1)
        totals["without"] += continuation_nats(model, ids, len(p))
        n_bytes += len(rest.encode("utf-8"))
        stories += 1
    for key, nats in totals.items():
        print(f"{key:8s} the story-start token: {nats / math.log(2) / n_bytes:.4f} bits per byte of the continuation "
              f"({stories} stories)")


if __name__ == "__main__":
    main()
