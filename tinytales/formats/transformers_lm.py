"""Any `transformers` causal LM in the TinyTales engine: `TransformersLM` gives a transformers model the
TinyTales model surface (forward, new_cache, hidden_states), and `HFTokenizer` a Hugging Face tokenizer the
TinyTales tokenizer surface, so that generation, evaluation and comparison use them unchanged.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import EOT, IGNORE_INDEX, LoadedModel, require
from ..tokenizer import TOKENIZER_FILE, BPETokenizer, save_backend
from .native import read_config


class HFTokenizer:
    """A Hugging Face tokenizer.json whose end-of-text token is not <|endoftext|> or that adds a BOS, wrapped.

    `encode` returns the text's tokens only; the BOS the tokenizer would add is `bos_id`,
    which the TinyTales prompt rule puts in front.
    """

    def __init__(self, backend, eot_id: int, bos_id: int | None):
        self.backend, self.eot_id, self.bos_id = backend, eot_id, bos_id

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def save(self, directory) -> Path:
        return save_backend(self.backend, directory)


def _first(value):
    return value[0] if isinstance(value, list) else value


def load_hf_tokenizer(directory, hf: dict | None = None) -> BPETokenizer | HFTokenizer:
    """The TinyTales tokenizer surface over a HF directory's tokenizer (tokenizer.json, else AutoTokenizer)."""
    directory = Path(directory)
    hf = hf if hf is not None else read_config(directory)
    if (directory / TOKENIZER_FILE).exists():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    else:
        transformers = require("transformers", "hf", f"the tokenizer of {directory} (no tokenizer.json)")
        refuse_remote_code(directory, hf)
        # never runs code from the model directory, and never asks whether to
        auto = transformers.AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False, local_files_only=True)
        backend = getattr(auto, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"the tokenizer of {directory} ({type(auto).__name__}) has no fast (tokenizers) version")
    generation = directory / "generation_config.json"
    eos = _first(json.loads(generation.read_text()).get("eos_token_id")) if generation.exists() else None
    eos = eos if eos is not None else _first(hf.get("eos_token_id"))
    eot_id = backend.token_to_id(EOT) if eos is None or backend.id_to_token(eos) is None else eos
    if eot_id is None:
        raise ValueError(f"{directory}: cannot tell the end-of-text token: config.json has no eos_token_id "
                         f"and the tokenizer no {EOT}; add eos_token_id to config.json")
    probe = "Once upon a time"
    plain, special = backend.encode(probe, add_special_tokens=False).ids, backend.encode(probe).ids
    bos_id = special[0] if len(special) > len(plain) and special[1:len(plain) + 1] == plain else None
    if plain == special and backend.id_to_token(eot_id) == EOT:
        return BPETokenizer(backend)
    return HFTokenizer(backend, eot_id, bos_id)


@dataclass
class TransformersConfig:
    """The part of GPTConfig that generation and evaluation read."""
    vocab_size: int
    context_length: int
    model_type: str

    def to_dict(self) -> dict:
        return asdict(self)


class TransformersCache:
    """The KVCache surface (length, reorder) over a transformers Cache."""

    def __init__(self, hf_cache, batch_size: int, max_length: int):
        self.hf_cache, self.batch_size, self.max_length = hf_cache, batch_size, max_length
        self.length = 0

    def reorder(self, batch_index: torch.Tensor) -> None:
        if self.length > 0:
            self.hf_cache.reorder_cache(batch_index)
        self.batch_size = batch_index.numel()


class TransformersLM(nn.Module):
    """Any `AutoModelForCausalLM` with the TinyTales model surface: forward(idx, ...) -> (logits, loss)."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model
        hf = hf_model.config
        context = next((getattr(hf, k) for k in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
                        if getattr(hf, k, None)), None)
        if context is None:
            raise ValueError(f"{type(hf_model).__name__}'s config names no context length (max_position_embeddings)")
        self.config = TransformersConfig(hf_model.get_output_embeddings().weight.size(0), int(context), hf.model_type)
        parameters = inspect.signature(hf_model.forward).parameters
        self._keeps_last = "logits_to_keep" in parameters
        # transformers 5.x renames past_key_values to cache (the old name is deprecated)
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"

    def num_params(self, embeddings: bool = True) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, max_length: int | None = None, dtype=None) -> TransformersCache:
        from transformers import DynamicCache

        try:
            hf_cache = DynamicCache(config=self.hf_model.config)  # sliding-window layers where the model has them
        except TypeError:  # transformers < 4.56
            hf_cache = DynamicCache()
        return TransformersCache(hf_cache, batch_size, max_length or self.config.context_length)

    @property
    def lm_head(self) -> nn.Module:
        return self.hf_model.get_output_embeddings()

    def _run(self, module, idx, cache: TransformersCache | None, attention_mask, **kwargs):
        """Call the HF (base) model on idx (B, T) with TinyTales' positions, padding mask and cache."""
        B, T = idx.size()
        start = cache.length if cache is not None else 0
        if start + T > self.config.context_length:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the model's context of {self.config.context_length}")
        if cache is not None and start + T > cache.max_length:
            raise ValueError(f"KV cache is full: {start + T} positions needed, {cache.max_length} allocated")
        out = module(
            input_ids=idx,
            attention_mask=attention_mask.long() if attention_mask is not None else None,
            # positions count from the cache like GPT's (not from the padding mask like HF's generate)
            position_ids=torch.arange(start, start + T, device=idx.device).expand(B, T),
            use_cache=cache is not None, **{self._cache_argument: cache.hf_cache if cache is not None else None},
            **kwargs)
        if cache is not None:
            cache.length += T
        return out

    def hidden_states(self, idx, cache: TransformersCache | None = None, attention_mask=None):
        """Final hidden states (B, T, C) that `lm_head` turns into logits (evaluation scores in chunks)."""
        return self._run(self.hf_model.base_model, idx, cache, attention_mask).last_hidden_state

    def forward(self, idx, targets=None, cache: TransformersCache | None = None, attention_mask=None, last_only=False):
        """Same contract as GPT.forward: positions continue from cache.length, padding from attention_mask."""
        keep_last = last_only and targets is None
        kwargs = {"logits_to_keep": 1} if keep_last and self._keeps_last else {}
        logits = self._run(self.hf_model, idx, cache, attention_mask, **kwargs).logits  # (B, T or 1, V)
        if keep_last:
            return logits[:, -1:, :], None
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss


def refuse_remote_code(directory, hf: dict | None = None) -> None:
    """A model directory whose config.json asks for its own Python code (auto_map) with a model type
    transformers does not know is refused: TinyTales never runs code that comes with a model."""
    hf = hf if hf is not None else read_config(directory)
    if not hf.get("auto_map"):
        return
    try:
        from transformers import CONFIG_MAPPING

        known = hf.get("model_type") in CONFIG_MAPPING
    except ImportError:
        known = False
    if not known:
        raise ValueError(f"{directory} needs its own Python code to load (config.json has auto_map and model_type "
                         f"{hf.get('model_type')!r}, which transformers does not know); TinyTales never runs code "
                         f"from a model directory: use a model of a standard architecture")


def load_transformers(path, device="cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Any causal LM directory transformers can load, wrapped as TransformersLM."""
    require("transformers", "hf", f"the {read_config(path).get('model_type')!r} model in {path} (it runs through "
                                  f"transformers)")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = Path(path)
    refuse_remote_code(path)
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a tiny local model loads in no time; keep the CLI's output clean
    try:
        # trust_remote_code=False: loading never runs code from the model directory (nor asks to)
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        reason = " ".join(str(e).split())
        raise ValueError(f"transformers cannot load {path} as a causal language model: {reason}") from e
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()
    model = TransformersLM(hf_model).to(device=device, dtype=dtype).eval()
    card = {"source": "huggingface", "hf_model_type": model.config.model_type, "runs_with": "transformers"}
    return LoadedModel(model, load_hf_tokenizer(path), path, card)
