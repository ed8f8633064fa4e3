"""Install a trained model as the bundled storyteller: 16-bit weights plus a model card with its scores and
every stage of its training (the chain of `base_model_card`s that --init-from leaves in each run's card).

Example: python scripts/install_bundled.py runs/control/model
"""
import json
import sys

import torch

from tinytales.evaluate import evaluate
from tinytales.formats import bundled_model_path, load_model, save_model

VALID = "../shared/data/tinystories/valid.jsonl"
STAGES = [  # oldest first: what each stage was, and where it ran
    ("v1, configs/bundled.yaml", "2 CPU cores (AVX-512 BF16), bf16 autocast"),
    ("v2, configs/story.yaml", "2 CPU cores (AMD EPYC, AVX2, no native bf16), float32"),
    ("v3, configs/ingredients.yaml with --data data/ts4k-train-fragments (plain stories, no ingredients)",
     "2 CPU cores (AMD EPYC, AVX2, no native bf16), float32"),
]


def chain(card: dict) -> list[dict]:
    """The stages of a card, oldest first: {steps, tokens_seen, cpu_hours} each."""
    stages = []
    while card:
        training = card.get("training") or {}
        if "stages" in card:  # an installed bundled card: its stages are already written out
            stages = [{k: s.get(k) for k in ("steps", "tokens_seen", "cpu_hours")} for s in card["stages"]] + stages
            break
        if "compute_hours" in training:
            stages.insert(0, {"steps": training["steps"], "tokens_seen": training["tokens_seen"],
                              "cpu_hours": training["compute_hours"], "data": training.get("data"),
                              "ingredients": training.get("ingredients", 0.0)})
        else:  # the first bundled card
            stages.insert(0, {"steps": card.get("steps"), "tokens_seen": card.get("tokens_seen"),
                              "cpu_hours": card.get("cpu_hours")})
        card = training.get("base_model_card") or {}
    return stages


def main(run_model: str) -> None:
    loaded = load_model(run_model)
    scores = evaluate(loaded.model, loaded.tokenizer, VALID, progress=False)
    stages = chain(loaded.card)
    if len(stages) != len(STAGES):
        raise SystemExit(f"{run_model} has {len(stages)} stages, STAGES names {len(STAGES)}; update STAGES")
    share = stages[-1].get("ingredients") or 0.0
    card = {
        "name": "tinytales-stories",
        "description": "A small Llama-style GPT (RoPE, RMSNorm, SwiGLU) trained on TinyStories for children's "
                       "stories: v3, v2 (the story recipe: Muon + AdamW, WSD, the stories plus TinyStories "
                       "fragments) trained on for 1,200 more steps" + (" with story ingredients (generate "
                       "--words/--features)" if share else " (the paired control of the ingredients run, "
                       "docs/experiments.md round 4: the better storyteller of the two)") + ".",
        "parameters": loaded.card.get("parameters"),
        "parameters_without_embeddings": loaded.card.get("parameters_without_embeddings"),
        "data": "45,873 TinyStories training stories (CDLA-Sharing-1.0), cleaned, plus 18,106 partial "
                "TinyStories V2 stories (no end-of-story token where a piece does not end its story)" + (
                    f"; in the last stage {share:.0%} of the whole stories written after their ingredients "
                    "(Words:/Features:/Story:, tinytales/ingredients.py)" if share else "") +
                "; 4,096-token byte-level BPE trained on the stories",
        "ingredients": share,
        "steps": sum(s["steps"] for s in stages),
        "tokens_seen": sum(s["tokens_seen"] for s in stages),
        "cpu_hours": round(sum(s["cpu_hours"] for s in stages), 4),
        "stages": [{"stage": name, "steps": s["steps"], "tokens_seen": s["tokens_seen"], "cpu_hours": s["cpu_hours"],
                    "hardware": hardware} for (name, hardware), s in zip(STAGES, stages)],
        "hardware": "2 CPU cores",
        "validation": {"data": "TinyStories validation, 902 stories", "loss": scores.loss,
                       "perplexity": scores.perplexity, "bits_per_byte": scores.bits_per_byte,
                       "tokens": scores.tokens, "bytes": scores.bytes},
        "weights": "float16 (trained in float32; v1 under bf16 autocast)",
        "reproduce": "see README, 'Reproducing the bundled model' (configs/bundled.yaml, configs/story.yaml, "
                     "then configs/ingredients.yaml" + ("" if share else " on plain stories") + ")",
        "training": loaded.card.get("training", {}),
    }
    save_model(loaded.model, loaded.tokenizer, bundled_model_path(), card=card, dtype=torch.float16)
    print(json.dumps({"validation": card["validation"], "stages": card["stages"]}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
