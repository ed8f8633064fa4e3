"""Install a trained model as the bundled storyteller: 16-bit weights plus a model card with its scores.

Example: python scripts/install_bundled.py runs/bundled-long/model
"""
import json
import sys

import torch

from tinytales.evaluate import evaluate
from tinytales.formats import bundled_model_path, load_model, save_model

VALID = "../shared/data/tinystories/valid.jsonl"


def main(run_model: str) -> None:
    """run_model: the v2 run's model (trained with --init-from the v1 model)."""
    loaded = load_model(run_model)
    scores = evaluate(loaded.model, loaded.tokenizer, VALID, progress=False)
    training = dict(loaded.card.get("training", {}))
    base = training.get("base_model_card") or {}  # v1's card: the first stage
    card = {
        "name": "tinytales-stories",
        "description": "A small Llama-style GPT (RoPE, RMSNorm, SwiGLU) trained on TinyStories for children's "
                       "stories: v2, the v1 model (configs/bundled.yaml) trained on with the story recipe "
                       "(configs/story.yaml: Muon + AdamW, WSD, the stories plus TinyStories fragments).",
        "parameters": loaded.card.get("parameters"),
        "parameters_without_embeddings": loaded.card.get("parameters_without_embeddings"),
        "data": "45,873 TinyStories training stories (CDLA-Sharing-1.0), cleaned, plus 18,106 partial "
                "TinyStories V2 stories (no end-of-story token where a piece does not end its story); 4,096-token "
                "byte-level BPE trained on the stories",
        "steps": training.get("steps") + base.get("steps", 0),
        "tokens_seen": training.get("tokens_seen") + base.get("tokens_seen", 0),
        "cpu_hours": round(training.get("compute_hours") + base.get("cpu_hours", 0), 4),
        "stages": [{"stage": "v1, configs/bundled.yaml", "steps": base.get("steps"),
                    "tokens_seen": base.get("tokens_seen"), "cpu_hours": base.get("cpu_hours"),
                    "hardware": base.get("hardware")},
                   {"stage": "v2, configs/story.yaml", "steps": training.get("steps"),
                    "tokens_seen": training.get("tokens_seen"), "cpu_hours": training.get("compute_hours"),
                    "hardware": "2 CPU cores (AMD EPYC, AVX2, no native bf16), float32"}],
        "hardware": "2 CPU cores",
        "validation": {"data": "TinyStories validation, 902 stories", "loss": scores.loss,
                       "perplexity": scores.perplexity, "bits_per_byte": scores.bits_per_byte,
                       "tokens": scores.tokens, "bytes": scores.bytes},
        "weights": "float16 (trained in float32; v1 under bf16 autocast)",
        "reproduce": "see README, 'Reproducing the bundled model' (configs/bundled.yaml, then configs/story.yaml)",
        "training": training,
    }
    save_model(loaded.model, loaded.tokenizer, bundled_model_path(), card=card, dtype=torch.float16)
    print(json.dumps(card["validation"], indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
