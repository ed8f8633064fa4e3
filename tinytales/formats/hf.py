"""Hugging Face conversion: export to and import from `transformers` model directories.

A TinyTales model with GPT-2's parts (learned positions, LayerNorm, tanh-GELU) exports as
GPT2LMHeadModel; one with Llama's parts (RoPE, RMSNorm, SwiGLU, optional GQA) as LlamaForCausalLM.
Export and import need only safetensors/tokenizers; any other causal LM directory (GPT-Neo, GPT-J, ...)
runs through `transformers_lm.TransformersLM` instead (`tinytales.formats.load_model` chooses).
An export is ready to upload to the Hugging Face Hub as it is: a README.md model card with the hub's
YAML metadata, and a generation_config.json with the story defaults (`tinytales.defaults`).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..core import EOT, LoadedModel, atomic_directory, write_json
from ..defaults import STORY_DEFAULTS
from ..model import GPT, GPTConfig
from ..tokenizer import TOKENIZER_FILE, BPETokenizer
from .native import CONFIG_FILE, WEIGHTS_FILE, read_config, save_model
from .transformers_lm import load_hf_tokenizer

TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # both are GPT-2's tanh approximation, like ours
IGNORED_HF_WEIGHTS = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")  # buffers, not weights
CARD_FILE = "README.md"
GENERATION_CONFIG_FILE = "generation_config.json"
# The hub's model card metadata. The licence is the data's: TinyTales models are trained on TinyStories
# (CDLA-Sharing-1.0), whose terms the weights share; a model trained on other stories needs its own.
HUB_METADATA = {
    "license": "cdla-sharing-1.0",
    "datasets": ["roneneldan/TinyStories"],
    "language": ["en"],
    "pipeline_tag": "text-generation",
    "library_name": "transformers",
    "tags": ["tinytales", "tinystories", "children-stories"],
}


class UnsupportedArchitecture(ValueError):
    """The Hugging Face model has no exact TinyTales equivalent (it can still run through TransformersLM)."""


# ----------------------------------------------------------------------------- architecture choice

GPT2_NEEDS = {"position": "learned", "norm": "layernorm", "activation": "gelu"}
LLAMA_NEEDS = {"position": "rope", "norm": "rmsnorm", "activation": "swiglu"}


def hf_architecture(config: GPTConfig) -> str:
    """"gpt2" or "llama": the transformers architecture that computes exactly what this model does."""
    def mismatches(needs: dict, gqa_ok: bool) -> list[str]:
        found = [f"{k}={getattr(config, k)!r}" for k, v in needs.items() if getattr(config, k) != v]
        if config.qk_norm:
            found.append("qk_norm=True")
        if not gqa_ok and config.n_kv_head != config.n_head:
            found.append(f"n_kv_head={config.n_kv_head} (grouped-query attention)")
        return found

    gpt2, llama = mismatches(GPT2_NEEDS, gqa_ok=False), mismatches(LLAMA_NEEDS, gqa_ok=True)
    if not gpt2:
        return "gpt2"  # without bias it still fits: the biases are exported as zeros
    if not llama:
        return "llama"
    raise ValueError(
        "cannot export to Hugging Face: no transformers architecture computes this model. "
        f"GPT-2 needs position='learned', norm='layernorm', activation='gelu', no qk_norm and no GQA, "
        f"but this model has {', '.join(gpt2)}; Llama needs position='rope', norm='rmsnorm', "
        f"activation='swiglu' and no qk_norm, but this model has {', '.join(llama)}. "
        "Keep it in TinyTales format (tinytales generate --model DIR), or train with one of those sets of options.")


# ----------------------------------------------------------------------------- weight names

def _gpt2_names(config: GPTConfig) -> list[tuple[str, str, bool]]:
    """(TinyTales name, HF name, transposed) for GPT2LMHeadModel; HF's Conv1D stores (in, out)."""
    names = [("tok_emb.weight", "transformer.wte.weight", False), ("pos_emb.weight", "transformer.wpe.weight", False)]
    for i in range(config.n_layer):
        ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b, conv in [("norm1", "ln_1", False), ("attn.qkv", "attn.c_attn", True),
                           ("attn.proj", "attn.c_proj", True), ("norm2", "ln_2", False),
                           ("mlp.fc", "mlp.c_fc", True), ("mlp.proj", "mlp.c_proj", True)]:
            names += [(f"{ours}{a}.weight", f"{hf}{b}.weight", conv), (f"{ours}{a}.bias", f"{hf}{b}.bias", False)]
    names += [("norm_f.weight", "transformer.ln_f.weight", False), ("norm_f.bias", "transformer.ln_f.bias", False)]
    if not config.tie_embeddings:
        names.append(("lm_head.weight", "lm_head.weight", False))
    return names


def _llama_names(config: GPTConfig) -> list[tuple[str, str]]:
    """(TinyTales name, HF name) for LlamaForCausalLM, except the fused qkv (split separately)."""
    names = [("tok_emb.weight", "model.embed_tokens.weight")]
    for i in range(config.n_layer):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        names += [(f"{ours}norm1.weight", f"{hf}input_layernorm.weight"),
                  (f"{ours}norm2.weight", f"{hf}post_attention_layernorm.weight")]
        for a, b in [("attn.proj", "self_attn.o_proj"), ("mlp.gate", "mlp.gate_proj"),
                     ("mlp.fc", "mlp.up_proj"), ("mlp.proj", "mlp.down_proj")]:
            names.append((f"{ours}{a}.weight", f"{hf}{b}.weight"))
            if config.bias:
                names.append((f"{ours}{a}.bias", f"{hf}{b}.bias"))
    names.append(("norm_f.weight", "model.norm.weight"))
    if not config.tie_embeddings:
        names.append(("lm_head.weight", "lm_head.weight"))
    return names


def rope_pairs_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k rows (n_heads*hs, ...) from RoPE on pairs (2i, 2i+1) to HF's halves (i, i + hs/2).

    Permuting q and k the same way leaves every q.k product unchanged (as in HF's convert scripts).
    """
    hs = w.size(0) // n_heads
    return w.reshape(n_heads, hs // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def rope_halves_to_pairs(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    hs = w.size(0) // n_heads
    return w.reshape(n_heads, 2, hs // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def to_hf_state(state: dict, config: GPTConfig, arch: str) -> dict[str, torch.Tensor]:
    """TinyTales state dict -> transformers state dict (tied lm_head left out, as HF saves it)."""
    hf = {}
    if arch == "gpt2":
        for ours, name, conv in _gpt2_names(config):
            if ours in state:
                hf[name] = state[ours].t() if conv else state[ours]
            else:  # a model without bias: GPT-2 always has them, zeros compute the same
                weight = state[ours.removesuffix(".bias") + ".weight"]
                hf[name] = torch.zeros(weight.size(0), dtype=weight.dtype)
        return hf
    for ours, name in _llama_names(config):
        hf[name] = state[ours]
    sizes = [config.n_head * config.head_dim, config.n_kv_head * config.head_dim, config.n_kv_head * config.head_dim]
    for i in range(config.n_layer):
        for kind in ("weight", "bias") if config.bias else ("weight",):
            q, k, v = state[f"blocks.{i}.attn.qkv.{kind}"].split(sizes)
            prefix = f"model.layers.{i}.self_attn."
            hf[f"{prefix}q_proj.{kind}"] = rope_pairs_to_halves(q, config.n_head)
            hf[f"{prefix}k_proj.{kind}"] = rope_pairs_to_halves(k, config.n_kv_head)
            hf[f"{prefix}v_proj.{kind}"] = v
    return hf


def from_hf_state(hf: dict, config: GPTConfig, arch: str) -> dict[str, torch.Tensor]:
    """transformers state dict -> TinyTales state dict; raises ValueError on missing or unknown weights."""
    hf = dict(hf)
    state = {}

    def take(name):
        if name not in hf:
            raise ValueError(f"the Hugging Face weights have no {name!r}; they do not match config.json")
        return hf.pop(name)

    if arch == "gpt2":
        hf = {k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k: v for k, v in hf.items()}
        for ours, name, conv in _gpt2_names(config):
            tensor = take(name)
            if config.bias or not ours.endswith(".bias"):
                state[ours] = tensor.t() if conv else tensor
    else:
        hf = {k if k.startswith(("model.", "lm_head.")) else "model." + k: v for k, v in hf.items()}
        for ours, name in _llama_names(config):
            state[ours] = take(name)
        for i in range(config.n_layer):
            prefix = f"model.layers.{i}.self_attn."
            for kind in ("weight", "bias") if config.bias else ("weight",):
                q = rope_halves_to_pairs(take(f"{prefix}q_proj.{kind}"), config.n_head)
                k = rope_halves_to_pairs(take(f"{prefix}k_proj.{kind}"), config.n_kv_head)
                state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([q, k, take(f"{prefix}v_proj.{kind}")])
    if config.tie_embeddings:
        hf.pop("lm_head.weight", None)  # a tied head may be saved too; it is the embedding
        state["lm_head.weight"] = state["tok_emb.weight"]
    unknown = sorted(k for k in hf if not k.endswith(IGNORED_HF_WEIGHTS))
    if unknown:
        raise ValueError(f"the Hugging Face weights hold {len(unknown)} tensors a {arch} TinyTales model has no "
                         f"place for, e.g. {unknown[:3]}; config.json does not describe these weights")
    return state


# ----------------------------------------------------------------------------- configs

def hf_config_dict(config: GPTConfig, arch: str, eot_id: int, bos_id: int, dtype: torch.dtype) -> dict:
    common = {"vocab_size": config.vocab_size, "tie_word_embeddings": config.tie_embeddings,
              "bos_token_id": bos_id, "eos_token_id": eot_id,
              "torch_dtype": str(dtype).removeprefix("torch."), "use_cache": True, "initializer_range": 0.02}
    if arch == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **common,
                "n_positions": config.context_length, "n_ctx": config.context_length, "n_embd": config.n_embd,
                "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": config.mlp_hidden,
                "activation_function": "gelu_new", "layer_norm_epsilon": config.norm_eps,
                "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
                # a model trained without biases records it, so import gives back the same config
                **({} if config.bias else {"tinytales_bias": False})}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common,
            "hidden_size": config.n_embd, "intermediate_size": config.mlp_hidden,
            "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
            "num_key_value_heads": config.n_kv_head, "head_dim": config.head_dim, "hidden_act": "silu",
            "max_position_embeddings": config.context_length, "rms_norm_eps": config.norm_eps,
            # rope_theta for transformers 4.x, rope_parameters for 5.x
            "rope_theta": config.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
            "attention_bias": config.bias, "mlp_bias": config.bias, "attention_dropout": config.dropout}


def tinytales_config(hf: dict) -> tuple[GPTConfig, str]:
    """(GPTConfig, "gpt2" | "llama") for a config.json; UnsupportedArchitecture when none matches exactly."""
    model_type = hf.get("model_type")

    def refuse(why: str):
        raise UnsupportedArchitecture(f"{model_type} model with {why} has no TinyTales equivalent")

    if model_type == "gpt2":
        if hf.get("activation_function", "gelu_new") not in TANH_GELUS:
            refuse(f"activation_function={hf['activation_function']!r} (TinyTales' GELU is {TANH_GELUS[0]})")
        for key, plain in [("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                           ("add_cross_attention", False)]:
            if hf.get(key, plain) != plain:
                refuse(f"{key}={hf[key]}")
        n_embd = hf.get("n_embd", 768)
        config = GPTConfig(
            vocab_size=hf.get("vocab_size", 50257), context_length=hf.get("n_positions", 1024),
            n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), n_embd=n_embd,
            mlp_hidden=hf.get("n_inner") or 4 * n_embd, dropout=float(hf.get("resid_pdrop", 0.1)),
            bias=hf.get("tinytales_bias", True), norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            activation="gelu", position="learned", tie_embeddings=hf.get("tie_word_embeddings", True))
        return config, "gpt2"
    if model_type == "llama":
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            refuse(f"RoPE scaling {rope}")
        if hf.get("hidden_act", "silu") != "silu":
            refuse(f"hidden_act={hf['hidden_act']!r}")
        if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
            refuse("bias in attention but not in the MLP (or the reverse)")
        n_embd, n_head = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
        if hf.get("head_dim") not in (None, n_embd // n_head):
            refuse(f"head_dim={hf['head_dim']} != hidden_size / num_attention_heads")
        config = GPTConfig(
            vocab_size=hf.get("vocab_size", 32000), context_length=hf.get("max_position_embeddings", 2048),
            n_layer=hf.get("num_hidden_layers", 32), n_head=n_head, n_embd=n_embd,
            n_kv_head=hf.get("num_key_value_heads") or n_head, mlp_hidden=hf.get("intermediate_size", 11008),
            dropout=float(hf.get("attention_dropout", 0.0)), bias=hf.get("attention_bias", False),
            norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), activation="swiglu", position="rope",
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            tie_embeddings=hf.get("tie_word_embeddings", False))
        return config, "llama"
    raise UnsupportedArchitecture(f"model_type {model_type!r} has no TinyTales equivalent (gpt2 and llama do)")


# ----------------------------------------------------------------------------- export

def export_hf(model, out_dir, dtype: torch.dtype = torch.float32, tokenizer=None, card: dict | None = None) -> Path:
    """Write a directory that transformers loads with AutoModelForCausalLM / AutoTokenizer.from_pretrained,
    ready to upload to the Hugging Face Hub (README.md model card, generation_config.json with the story defaults).

    `model`: a LoadedModel (from `tinytales.formats.load_model`; its card describes the model), or a GPT
    with its `tokenizer` (and optionally the TinyTales `card`: name, description, data, validation, ...).
    """
    name = None
    if isinstance(model, LoadedModel):
        card = model.card if card is None else card
        name = Path(model.path).name if model.path is not None else None
        model, tokenizer = model.model, tokenizer or model.tokenizer
    elif tokenizer is None:
        raise ValueError("export_hf(model) needs the model's tokenizer: export_hf(model, out_dir, tokenizer=tok)")
    if not isinstance(model, GPT):
        raise ValueError(f"{type(model).__name__} is already a transformers model: copy its directory instead")
    arch = hf_architecture(model.config)

    card = dict(card or {})
    name = card.get("name") or name or Path(out_dir).name
    with atomic_directory(out_dir) as tmp:
        _write_hf_files(model, tokenizer, arch, tmp, dtype)
        (tmp / CARD_FILE).write_text(model_card(model, arch, dtype, name, card), encoding="utf-8")
    return Path(out_dir)


def hf_generation_config(eot_id: int, bos_id: int) -> dict:
    """generation_config.json: the story defaults, so that `model.generate(ids)` tells a story as TinyTales does."""
    d = STORY_DEFAULTS
    config = {"bos_token_id": bos_id, "eos_token_id": eot_id, "pad_token_id": eot_id, "do_sample": True,
              "temperature": d["temperature"], "top_k": d["top_k"], "top_p": d["top_p"],  # top_k 0: off
              "repetition_penalty": d["repetition_penalty"], "max_new_tokens": d["max_new_tokens"]}
    if d["min_p"]:
        config["min_p"] = d["min_p"]
    if d["no_repeat_ngram_size"]:
        config["no_repeat_ngram_size"] = d["no_repeat_ngram_size"]
    return config


def _yaml(metadata: dict) -> str:
    """The hub's YAML front matter; every value is a string or a list of strings, written as JSON strings
    (valid YAML double-quoted scalars)."""
    lines = []
    for key, value in metadata.items():
        if isinstance(value, str):
            lines.append(f"{key}: {json.dumps(value)}")
        else:
            lines += [f"{key}:"] + [f"- {json.dumps(item)}" for item in value]
    return "\n".join(lines)


def model_card(model: GPT, arch: str, dtype: torch.dtype, name: str, card: dict) -> str:
    """README.md for the hub: YAML metadata, then what the model is, was trained on and measured, and how to use it.

    Figures come from the TinyTales card (card.json) where it has them; what it lacks is left out."""
    config, training, validation = model.config, card.get("training") or {}, card.get("validation") or {}
    architecture = "GPT2LMHeadModel" if arch == "gpt2" else "LlamaForCausalLM"
    defaults = STORY_DEFAULTS
    out = ["---", _yaml(HUB_METADATA), "---", "", f"# {name}", ""]
    if card.get("description"):
        out += [card["description"], ""]
    out += [f"A small GPT that tells short stories for children, trained with TinyTales and exported as "
            f"`{architecture}` for 🤗 transformers.", "", "## Training", ""]
    data = card.get("data") or training.get("data")
    out.append(f"- data: {data}" if data else "- data: TinyStories (roneneldan/TinyStories), stories written for "
                                              "3-4 year olds")
    for label, key in [("steps", "steps"), ("tokens seen", "tokens_seen")]:
        value = card.get(key, training.get(key))
        if isinstance(value, int):
            out.append(f"- {label}: {value:,}")
    hours = card.get("cpu_hours", training.get("compute_hours"))
    if hours:
        out.append(f"- compute: {hours:g} hours" + (f" on {card['hardware']}" if card.get("hardware") else ""))
    out += ["", "## Model", "", "| | |", "|---|---|",
            f"| architecture | `{architecture}` (`{arch}`) |",
            f"| parameters | {model.num_params():,} ({model.num_params(embeddings=False):,} without embeddings) |",
            f"| layers, heads, width | {config.n_layer}, {config.n_head}"
            + (f" ({config.n_kv_head} key/value)" if config.n_kv_head != config.n_head else "")
            + f", {config.n_embd} |",
            f"| context | {config.context_length} tokens |",
            f"| vocabulary | {config.vocab_size} tokens (byte-level BPE) |",
            f"| weights | {str(dtype).removeprefix('torch.')} |", ""]
    figures = [(label, validation[key]) for label, key in
               [("bits per byte", "bits_per_byte"), ("loss", "loss"), ("perplexity", "perplexity")]
               if isinstance(validation.get(key), (int, float))]
    if not figures and isinstance(training.get("val_loss"), (int, float)):
        figures = [("loss", training["val_loss"])]
    if figures:
        on = validation.get("data") or training.get("val_data")
        out += ["## Evaluation", "", f"On {on}:" if on else "On held-out stories:", ""]
        out += [f"- {label}: {value:.4f}" for label, value in figures] + [""]
    sampling = (f"do_sample=True, temperature={defaults['temperature']}, top_p={defaults['top_p']}, "
                f"top_k={defaults['top_k']}, repetition_penalty={defaults['repetition_penalty']}")
    out += ["## Use it with transformers", "",
            f"`generation_config.json` holds TinyTales' story defaults ({sampling}, "
            f"max_new_tokens={defaults['max_new_tokens']}), so `generate` tells a story without settings. "
            "Every training story follows the story-start token (`tokenizer.bos_token`): put it before the prompt.",
            "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            'model = AutoModelForCausalLM.from_pretrained("USER/NAME")  # or the exported directory',
            'tokenizer = AutoTokenizer.from_pretrained("USER/NAME")',
            'prompt = "Once upon a time, there was a little girl named Lily."',
            'ids = tokenizer(tokenizer.bos_token + prompt, return_tensors="pt").input_ids',
            "story = model.generate(ids)  # the story defaults; e.g. max_new_tokens=100 to change one",
            "print(prompt + tokenizer.decode(story[0, ids.shape[1]:], skip_special_tokens=True))",
            "```", "", "## Use it with TinyTales", "",
            "TinyTales reads this folder as it is (GPT-2 and Llama directories load natively):", "",
            "```bash", "hf download USER/NAME --local-dir DIR        # or the exported directory itself",
            'tinytales generate "Once upon a time" --model DIR',
            "tinytales serve --model DIR                      # the story page and the HTTP API", "```", "",
            "## Licence", "",
            "The weights were trained on TinyStories, released under the Community Data License Agreement "
            "Sharing 1.0 (CDLA-Sharing-1.0), and are shared under the same terms.", ""]
    return "\n".join(out)


def _write_hf_files(model: GPT, tokenizer, arch: str, directory: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    config = model.config
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    hf_state = {k: v.to(dtype).contiguous() for k, v in to_hf_state(state, config, arch).items()}
    save_file(hf_state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    no_json = (f"the model's tokenizer ({type(tokenizer).__name__}) has no Hugging Face tokenizer.json form; only "
               "models with a byte-level BPE tokenizer (TinyTales' own or GPT-2's) export to Hugging Face")
    try:
        tokenizer.save(directory)
    except ValueError as e:
        raise ValueError(no_json) from e
    if not (directory / TOKENIZER_FILE).exists():
        raise ValueError(no_json)
    backend = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    bos_id = tokenizer.eot_id if tokenizer.bos_id is None else tokenizer.bos_id  # GPT-2's convention: bos = eos
    eot, bos = backend.id_to_token(tokenizer.eot_id) or EOT, backend.id_to_token(bos_id) or EOT
    write_json(directory / CONFIG_FILE, hf_config_dict(config, arch, tokenizer.eot_id, bos_id, dtype))
    write_json(directory / GENERATION_CONFIG_FILE, hf_generation_config(tokenizer.eot_id, bos_id))
    special = {"bos_token": bos, "eos_token": eot, "unk_token": eot}
    write_json(directory / "special_tokens_map.json", special)
    write_json(directory / "tokenizer_config.json", {
        # the generic fast class loads tokenizer.json exactly as written, in transformers 4.x and 5.x
        "tokenizer_class": "PreTrainedTokenizerFast", **special, "model_max_length": config.context_length,
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False})


# ----------------------------------------------------------------------------- import

def read_hf_weights(directory) -> dict[str, torch.Tensor]:
    """All tensors of a HF directory: model.safetensors (sharded or not), else pytorch_model.bin (weights only)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name, load in [("model.safetensors", lambda p: load_file(str(p))),
                       ("pytorch_model.bin", lambda p: torch.load(p, map_location="cpu", weights_only=True))]:
        index = directory / f"{name}.index.json"
        files = _shard_files(index, directory) if index.exists() else [name]
        if all((directory / f).exists() for f in files):
            state = {}
            for f in files:
                try:
                    state.update(load(directory / f))
                except Exception as e:  # safetensors / pickle errors on a truncated file
                    raise ValueError(f"{directory / f} is corrupt or truncated ({e}); re-download the model") from e
            return state
    raise FileNotFoundError(f"{directory} has no model.safetensors or pytorch_model.bin (nor their sharded index)")


def _shard_files(index: Path, directory: Path) -> list[str]:
    """The shard files a sharded index names, each a file inside the model folder (no absolute path, no ..)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index} is not a valid sharded index (no \"weight_map\" of tensor -> file); "
                         f"re-download the model") from e
    root = directory.resolve()
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{index} names a shard {name!r} that is not a file name; re-download the model")
        resolved = (directory / name).resolve()
        if Path(name).is_absolute() or ".." in Path(name).parts or not resolved.is_relative_to(root):
            raise ValueError(f"{index} names the shard {name!r}, outside the model folder {directory}; "
                             f"shards must be files inside the folder (re-download the model)")
    return names


def import_hf(directory, out_dir=None, device="cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A GPT-2 or Llama HF directory as a native TinyTales model; with out_dir also saved as a model directory."""
    directory = Path(directory)
    hf = read_config(directory)
    try:
        config, arch = tinytales_config(hf)
    except UnsupportedArchitecture as e:
        raise UnsupportedArchitecture(f"cannot import {directory}: {e}. It runs as it is through transformers: "
                                      f"tinytales generate --model {directory}") from e
    tokenizer = load_hf_tokenizer(directory, hf)
    hf_state = read_hf_weights(directory)
    if not config.bias and any(v.any() for k, v in hf_state.items() if k.endswith(".bias") and v.dim() == 1):
        config = replace(config, bias=True)  # exported without biases, but they were trained since
    state = from_hf_state(hf_state, config, arch)
    model = GPT(config)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:  # wrong shapes: config.json and the weights disagree
        raise ValueError(f"the weights in {directory} do not match its config.json: {e}") from e
    model.to(device=device, dtype=dtype).eval()
    card = {"source": "huggingface", "hf_model_type": arch, "imported_from": str(directory)}
    if out_dir is None:
        return LoadedModel(model, tokenizer, directory, card)
    if type(tokenizer) is not BPETokenizer:
        end = tokenizer.backend.id_to_token(tokenizer.eot_id)
        raise ValueError(f"the tokenizer of {directory} ends texts with {end!r}"
                         f"{' and puts a BOS first' if tokenizer.bos_id is not None else ''}; a TinyTales model "
                         f"directory needs a BPE tokenizer ending texts with {EOT} and no BOS. Use the Hugging Face "
                         f"directory directly instead: tinytales generate --model {directory}")
    out_dir = save_model(model, tokenizer, out_dir, card=card, dtype=dtype)
    return LoadedModel(model, tokenizer, out_dir, card)


