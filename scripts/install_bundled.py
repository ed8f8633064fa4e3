"""Install a trained model as the bundled storyteller: 16-bit weights plus a model card with its scores.

Example: python scripts/install_bundled.py runs/bundled-long/model
"""
import json
import sys

import torch

from tinytales.evaluate import evaluate
from tinytales.modeldir import bundled_model_path, load_model, save_model

VALID = "../shared/data/tinystories/valid.jsonl"


def main(run_model: str) -> None:
    loaded = load_model(run_model)
    scores = evaluate(loaded.model, loaded.tokenizer, VALID, progress=False)
    training = dict(loaded.card.get("training", {}))
    if not training.get("init_from"):  # trained from scratch (older runs copied a resumed checkpoint's card here)
        training.pop("base_model_card", None)
    card = {
        "name": "tinytales-stories",
        "description": "A small Llama-style GPT (RoPE, RMSNorm, SwiGLU) trained from scratch on TinyStories "
                       "for children's stories.",
        "parameters": loaded.card.get("parameters"),
        "parameters_without_embeddings": loaded.card.get("parameters_without_embeddings"),
        "data": "45,873 TinyStories training stories (CDLA-Sharing-1.0), cleaned; 4,096-token byte-level BPE "
                "trained on them",
        "steps": training.get("steps"),
        "tokens_seen": training.get("tokens_seen"),
        "cpu_hours": training.get("compute_hours"),
        "hardware": "2 CPU cores (AVX-512 BF16), bf16 autocast",
        "validation": {"data": "TinyStories validation, 902 stories", "loss": scores.loss,
                       "perplexity": scores.perplexity, "bits_per_byte": scores.bits_per_byte,
                       "tokens": scores.tokens, "bytes": scores.bytes},
        "weights": "float16 (trained in float32 with bf16 autocast)",
        "reproduce": "see README, 'Reproducing the bundled model' (configs/bundled.yaml)",
        "training": training,
    }
    save_model(loaded.model, loaded.tokenizer, bundled_model_path(), card=card, dtype=torch.float16)
    print(json.dumps(card["validation"], indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
