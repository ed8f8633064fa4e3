"""Hugging Face interoperability: exported models compute and generate exactly what TinyTales does."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
transformers = pytest.importorskip("transformers")

from tinytales.core import LoadedModel  # noqa: E402
from tinytales.generate import GenerationConfig, encode_prompt, generate  # noqa: E402
from tinytales.formats.hf import (  # noqa: E402
    UnsupportedArchitecture, export_hf, hf_architecture, import_hf, read_hf_weights,
)
from tinytales.formats.transformers_lm import HFTokenizer, TransformersLM  # noqa: E402
from tinytales.model import GPT, GPTConfig  # noqa: E402
from tinytales.formats import load_model, save_model  # noqa: E402

from conftest import SHARED, needs_shared  # noqa: E402

LLAMA = dict(position="rope", norm="rmsnorm", activation="swiglu", bias=False, n_head=4, n_kv_head=2)
ARCHS = {
    "gpt2": {},
    "gpt2-untied-nobias": dict(bias=False, tie_embeddings=False),
    "llama-gqa": LLAMA,
    "llama-bias-untied": {**LLAMA, "bias": True, "tie_embeddings": False, "n_kv_head": 4},
}
PROMPT = "Once upon a time, Lily"


def random_model(vocab_size: int, seed: int = 0, **options) -> GPT:
    """A tiny model whose every weight is random (biases and norm gains too, unlike a fresh init)."""
    torch.manual_seed(seed)
    settings = dict(vocab_size=vocab_size, context_length=64, n_layer=2, n_head=2, n_embd=32) | options
    model = GPT(GPTConfig(**settings)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def hf_model(directory):
    return transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval()


def hf_generate(model, prompt_ids: list[int], eot: int, **settings) -> list[int]:
    """New tokens of transformers' generate, up to and including the first eot (pad = eot).

    Plain decoding: an export's generation_config.json holds the story defaults (repetition penalty 1.1)."""
    ids = torch.tensor([prompt_ids])
    settings = {"repetition_penalty": 1.0, **settings}
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, eos_token_id=eot, pad_token_id=eot, **settings)
    new = out[0, ids.size(1):].tolist()
    return new[:new.index(eot) + 1] if eot in new else new


def make_eot_likely(row: torch.Tensor, tokenizer, next_ids: list[int]) -> None:
    """Give eot the output row of a token greedy decoding picks early, a bit larger: stories now end."""
    with torch.no_grad():
        row[tokenizer.eot_id] = 1.05 * row[next_ids[3]]


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("arch", ARCHS)
def test_exported_model_computes_the_same_logits_in_transformers(arch, tiny_tokenizer, tmp_path):
    model = random_model(320, **ARCHS[arch])
    out = export_hf(model, tmp_path / "hf", tokenizer=tiny_tokenizer)
    hf = hf_model(out)
    assert type(hf).__name__ == ("GPT2LMHeadModel" if arch.startswith("gpt2") else "LlamaForCausalLM")
    idx = torch.randint(0, 320, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_import_of_export_reproduces_the_model_exactly(arch, tiny_tokenizer, tmp_path):
    model = random_model(320, seed=1, **ARCHS[arch])
    out = export_hf(model, tmp_path / "hf", tokenizer=tiny_tokenizer)
    back = import_hf(out)
    assert back.model.config == model.config
    ours, theirs = model.state_dict(), back.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert back.tokenizer.encode("Tom and Sue.<|endoftext|>") == tiny_tokenizer.encode("Tom and Sue.<|endoftext|>")
    # and load_model takes the HF directory natively
    assert type(load_model(out).model) is GPT


def test_export_writes_gpt2_files_and_a_tokenizer_transformers_reads(tiny_model_dir, tiny_tokenizer, tmp_path):
    out = export_hf(load_model(tiny_model_dir), tmp_path / "hf")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "generation_config.json"} <= names
    config = json.loads((out / "config.json").read_text())
    eot = tiny_tokenizer.eot_id
    assert config["model_type"] == "gpt2" and config["activation_function"] == "gelu_new"
    assert config["n_positions"] == 64 and config["layer_norm_epsilon"] == 1e-5
    assert config["bos_token_id"] == config["eos_token_id"] == eot
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == eot

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf_tokenizer.eos_token == hf_tokenizer.bos_token == hf_tokenizer.unk_token == "<|endoftext|>"
    assert hf_tokenizer.eos_token_id == eot
    for text in ["Once upon a time, there was a cat.", "  Tom said: \"hi!\"\n\nThe end.<|endoftext|>Sue", "é 😀 ünï"]:
        ids = tiny_tokenizer.encode(text)
        assert hf_tokenizer(text)["input_ids"] == ids
        assert hf_tokenizer.decode(ids) == tiny_tokenizer.decode(ids)


def front_matter(card: str) -> tuple[dict, str]:
    import yaml

    assert card.startswith("---\n"), card[:80]
    head, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_export_writes_a_model_card_ready_for_the_hub(tiny_model_dir, tmp_path):
    loaded = load_model(tiny_model_dir)
    card = {"name": "tiny-stories", "description": "A tiny test model.", "data": "TinyStories, 100 stories",
            "validation": {"data": "TinyStories validation, 9 stories", "bits_per_byte": 1.23456, "loss": 3.5}}
    out = export_hf(LoadedModel(loaded.model, loaded.tokenizer, loaded.path, card), tmp_path / "hf")
    metadata, body = front_matter((out / "README.md").read_text(encoding="utf-8"))
    assert metadata == {"license": "cdla-sharing-1.0", "datasets": ["roneneldan/TinyStories"], "language": ["en"],
                        "pipeline_tag": "text-generation", "library_name": "transformers",
                        "tags": ["tinytales", "tinystories", "children-stories"]}
    assert body.lstrip().startswith("# tiny-stories") and "A tiny test model." in body
    assert "TinyStories, 100 stories" in body and f"{loaded.model.num_params():,}" in body
    assert "bits per byte: 1.2346" in body and "TinyStories validation, 9 stories" in body
    assert "AutoModelForCausalLM.from_pretrained" in body and "AutoTokenizer.from_pretrained" in body
    assert "model.generate(ids)" in body and "tinytales generate" in body and "--model DIR" in body
    assert "GPT2LMHeadModel" in body

    # a card without figures: what is not there is left out
    plain = export_hf(loaded.model, tmp_path / "plain", tokenizer=loaded.tokenizer)
    metadata, body = front_matter((plain / "README.md").read_text(encoding="utf-8"))
    assert metadata["license"] == "cdla-sharing-1.0" and body.lstrip().startswith("# plain")
    assert "bits per byte" not in body and "## Evaluation" not in body


def test_bundled_models_card_has_its_bits_per_byte(tmp_path):
    loaded = load_model(None)
    out = export_hf(loaded, tmp_path / "hf", dtype=torch.float16)
    _, body = front_matter((out / "README.md").read_text(encoding="utf-8"))
    assert f"bits per byte: {loaded.card['validation']['bits_per_byte']:.4f}" in body
    assert body.lstrip().startswith("# tinytales-stories") and "LlamaForCausalLM" in body


def test_generation_config_carries_the_story_defaults(tiny_model_dir, tiny_tokenizer, tmp_path):
    from tinytales.defaults import STORY_DEFAULTS

    out = export_hf(load_model(tiny_model_dir), tmp_path / "hf")
    written = json.loads((out / "generation_config.json").read_text())
    eot = tiny_tokenizer.eot_id
    assert written["bos_token_id"] == written["eos_token_id"] == written["pad_token_id"] == eot
    assert written["do_sample"] is True
    for key in ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"):
        assert written[key] == STORY_DEFAULTS[key], key
    read = transformers.GenerationConfig.from_pretrained(str(out))  # transformers takes it as it is
    assert read.do_sample is True and read.temperature == STORY_DEFAULTS["temperature"]
    assert read.top_p == STORY_DEFAULTS["top_p"] and read.top_k == STORY_DEFAULTS["top_k"]
    assert read.repetition_penalty == STORY_DEFAULTS["repetition_penalty"]
    assert read.max_new_tokens == STORY_DEFAULTS["max_new_tokens"]
    assert (read.bos_token_id, read.eos_token_id, read.pad_token_id) == (eot, eot, eot)
    assert hf_model(out).generation_config.temperature == STORY_DEFAULTS["temperature"]  # and the model uses it


def test_export_in_float16_keeps_the_logits_close(tiny_tokenizer, tmp_path):
    model = random_model(320)
    out = export_hf(model, tmp_path / "hf", dtype=torch.float16, tokenizer=tiny_tokenizer)
    assert all(t.dtype == torch.float16 for t in read_hf_weights(out).values())
    idx = torch.randint(0, 320, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(out).float()(idx).logits, model(idx)[0], atol=0.05, rtol=0)


@pytest.mark.parametrize("options, named", [
    (dict(norm="rmsnorm"), "norm='rmsnorm'"),  # learned positions + RMSNorm: neither GPT-2 nor Llama
    (dict(activation="relu2"), "activation='relu2'"),
    ({**LLAMA, "qk_norm": True}, "qk_norm=True"),
    (dict(n_head=2, n_kv_head=1), "n_kv_head=1"),  # GQA with learned positions
    (dict(position="rope"), "position='rope'"),
])
def test_export_refuses_models_no_transformers_architecture_computes(options, named, tiny_tokenizer, tmp_path):
    model = random_model(320, **options)
    with pytest.raises(ValueError, match=named.replace("(", r"\(")) as error:
        export_hf(model, tmp_path / "hf", tokenizer=tiny_tokenizer)
    assert "TinyTales format" in str(error.value)
    assert not (tmp_path / "hf").exists()
    assert list(tmp_path.iterdir()) == []  # no half-written directory left behind


@pytest.mark.shared
@needs_shared("models", "stories260K", "stories260K_q80.bin")
def test_export_of_a_llama2c_model_explains_its_tokenizer_has_no_hf_form(tmp_path):
    with pytest.raises(ValueError, match="Llama2cTokenizer.*no Hugging Face tokenizer.json"):
        export_hf(load_model(SHARED / "models" / "stories260K" / "stories260K_q80.bin"), tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_architecture_choice():
    assert hf_architecture(GPTConfig(n_embd=32, n_head=2)) == "gpt2"
    assert hf_architecture(GPTConfig(n_embd=32, **LLAMA)) == "llama"


# ----------------------------------------------------------------------------- import of transformers' own models

def save_transformers_model(model, tokenizer, directory):
    model.save_pretrained(str(directory))
    tokenizer.save(directory)
    return directory


def test_transformers_gpt2_imports_without_transformers(tiny_tokenizer, tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    directory = save_transformers_model(hf, tiny_tokenizer, tmp_path / "gpt2")
    idx = torch.randint(0, 320, (2, 30))
    with torch.no_grad():
        expected = hf(idx).logits

    monkeypatch.setitem(sys.modules, "transformers", None)  # any import of transformers now fails
    loaded = import_hf(directory)
    assert loaded.tokenizer.eot_id == 0 and loaded.model.config.dropout == pytest.approx(0.1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx)[0], expected, atol=1e-4, rtol=0)

    # the same weights as a pytorch_model.bin (read with weights_only=True)
    torch.save(read_hf_weights(directory), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    with torch.no_grad():
        torch.testing.assert_close(import_hf(directory).model(idx)[0], expected, atol=1e-4, rtol=0)
    (directory / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        import_hf(directory)


def llama_tokenizer_with_bos(tokenizer, directory):
    """tokenizer.json of the tiny BPE, re-dressed like Llama's: <s> added in front, </s> as end of text."""
    from tokenizers import Tokenizer, processors

    backend = Tokenizer.from_str(tokenizer.backend.to_str())
    backend.add_special_tokens(["<s>", "</s>"])
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    backend.save(str(directory / "tokenizer.json"))
    return bos, backend.token_to_id("</s>")


def test_transformers_llama_loads_natively_with_its_bos_and_eos(tiny_tokenizer, tmp_path):
    directory = tmp_path / "llama"
    directory.mkdir()
    bos, eos = llama_tokenizer_with_bos(tiny_tokenizer, directory)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=bos, eos_token_id=eos)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    hf.save_pretrained(str(directory))

    loaded = load_model(directory)
    assert type(loaded.model) is GPT and loaded.model.config.n_kv_head == 2
    idx = torch.randint(0, 320, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)
    tokenizer = loaded.tokenizer
    assert isinstance(tokenizer, HFTokenizer) and (tokenizer.bos_id, tokenizer.eot_id) == (bos, eos)
    assert tokenizer.encode("Tom had a cat.") == tiny_tokenizer.encode("Tom had a cat.")  # bos is the prompt rule's
    assert encode_prompt(tokenizer, "Tom had a cat.", 64)[0] == [bos] + tiny_tokenizer.encode("Tom had a cat.")
    with pytest.raises(ValueError, match="ends texts with '</s>' and puts a BOS first"):
        import_hf(directory, out_dir=tmp_path / "imported")


@pytest.mark.shared
@needs_shared("tokenizers", "gpt2", "vocab.json")
def test_gpt2_directory_with_only_vocab_and_merges_gets_gpt2s_tokenizer(tmp_path):
    import shutil

    from tinytales.tokenizer import gpt2_tokenizer

    directory = tmp_path / "gpt2"
    config = transformers.GPT2Config(n_positions=32, n_embd=16, n_layer=1, n_head=2)  # GPT-2's 50,257 ids
    transformers.GPT2LMHeadModel(config).save_pretrained(str(directory))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(SHARED / "tokenizers" / "gpt2" / name, directory / name)
    loaded = load_model(directory)
    reference = gpt2_tokenizer(SHARED / "tokenizers" / "gpt2")
    assert loaded.tokenizer.eot_id == reference.eot_id == 50256 and loaded.tokenizer.bos_id is None
    text = "Once upon a time, Lily saw a big, red ball.<|endoftext|> The end!"
    assert loaded.tokenizer.encode(text) == reference.encode(text)
    assert loaded.tokenizer.decode(reference.encode(text)) == text


def test_gpt2_variant_without_native_equivalent_runs_through_transformers(tiny_tokenizer, tmp_path):
    config = transformers.GPT2Config(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     activation_function="gelu")  # exact erf GELU, not TinyTales' tanh
    directory = save_transformers_model(transformers.GPT2LMHeadModel(config), tiny_tokenizer, tmp_path / "gpt2")
    with pytest.raises(UnsupportedArchitecture, match="activation_function='gelu'"):
        import_hf(directory)
    assert isinstance(load_model(directory).model, TransformersLM)


# ----------------------------------------------------------------------------- generation equals transformers'

@pytest.mark.parametrize("arch", ["gpt2", "llama-gqa"])
@pytest.mark.parametrize("ends", [False, True], ids=["no-eot", "eot-likely"])
def test_greedy_and_beam_search_equal_transformers_generate(arch, ends, tiny_tokenizer, tmp_path):
    # The vocabulary equals the tokenizer's: TinyTales never picks padding ids beyond it, transformers would.
    model = random_model(tiny_tokenizer.vocab_size, **ARCHS[arch])
    greedy = GenerationConfig(method="greedy", max_new_tokens=20)
    for _ in range(5 if ends else 0):  # eot's row is also the story-start token's embedding: the story moves
        first_story = generate(model, tiny_tokenizer, PROMPT, greedy)[0]
        if first_story.finished:
            break
        make_eot_likely(model.lm_head.weight, tiny_tokenizer, first_story.token_ids)
    hf = hf_model(export_hf(model, tmp_path / "hf", tokenizer=tiny_tokenizer))
    prompt_ids, _ = encode_prompt(tiny_tokenizer, PROMPT, 64, 20)
    eot = tiny_tokenizer.eot_id

    story = generate(model, tiny_tokenizer, PROMPT, greedy)[0]
    assert story.token_ids == hf_generate(hf, prompt_ids, eot, max_new_tokens=20, num_beams=1)
    assert story.finished == ends
    for length_penalty, early_stopping in [(1.0, True), (2.0, False), (0.5, True)]:
        beam = GenerationConfig(method="beam", num_beams=4, max_new_tokens=20, length_penalty=length_penalty,
                                early_stopping=early_stopping)
        ours = generate(model, tiny_tokenizer, PROMPT, beam)[0].token_ids
        assert ours == hf_generate(hf, prompt_ids, eot, max_new_tokens=20, num_beams=4,
                                   length_penalty=length_penalty, early_stopping=early_stopping)


# ----------------------------------------------------------------------------- the transformers adapter

@pytest.fixture
def gpt_neo_dir(tiny_tokenizer, tmp_path):
    """A tiny random GPTNeoForCausalLM (global + local attention) with the tiny tokenizer, eot made likely."""
    torch.manual_seed(0)
    config = transformers.GPTNeoConfig(
        vocab_size=tiny_tokenizer.vocab_size, max_position_embeddings=64, hidden_size=32, num_layers=2, num_heads=2,
        attention_types=[[["global", "local"], 1]], window_size=8, intermediate_size=64,
        bos_token_id=tiny_tokenizer.eot_id, eos_token_id=tiny_tokenizer.eot_id)
    hf = transformers.GPTNeoForCausalLM(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    prompt_ids = encode_prompt(tiny_tokenizer, PROMPT, 64, 20)[0]
    make_eot_likely(hf.get_output_embeddings().weight, tiny_tokenizer,
                    hf_generate(hf, prompt_ids, tiny_tokenizer.eot_id, max_new_tokens=6))
    return save_transformers_model(hf, tiny_tokenizer, tmp_path / "neo")


def test_transformers_adapter_has_the_model_surface(gpt_neo_dir):
    model = load_model(gpt_neo_dir).model
    assert isinstance(model, TransformersLM)
    assert (model.config.context_length, model.config.vocab_size) == (64, 300)
    idx = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2, 40)
        pieces = [model(idx[:, :5], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 24)]
        assert cache.length == 24
        torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-4, rtol=0)
        assert model(idx, last_only=True)[0].shape == (2, 1, 300)

        # loss: targets are already shifted (TinyTales), labels are not (transformers)
        _, loss = model(idx[:, :-1], targets=idx[:, 1:])
        torch.testing.assert_close(loss, model.hf_model(idx, labels=idx).loss)

        # beam search reorders the cache: continuing swapped rows equals recomputing them swapped
        cache = model.new_cache(2)
        model(idx[:, :10], cache=cache)
        cache.reorder(torch.tensor([1, 0]))
        step, _ = model(idx[[1, 0], 10:11], cache=cache)
        torch.testing.assert_close(step, model(idx[[1, 0], :11])[0][:, -1:], atol=1e-4, rtol=0)

        # evaluation's path: hidden states, then the output layer in chunks
        torch.testing.assert_close(model.lm_head(model.hidden_states(idx)), full, atol=1e-4, rtol=0)

    with pytest.raises(ValueError, match="context of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="already a transformers model"):
        export_hf(load_model(gpt_neo_dir), gpt_neo_dir.parent / "again")


def test_evaluation_runs_on_the_adapter_like_transformers_loss(gpt_neo_dir):
    from tinytales.evaluate import evaluate_texts, story_start_id

    loaded = load_model(gpt_neo_dir)
    story = "Once upon a time, there was a little girl named Sue. Sue had a red kite. The end."
    ids = torch.tensor([[story_start_id(loaded.tokenizer), *loaded.tokenizer.encode(story), loaded.tokenizer.eot_id]])
    assert ids.size(1) <= 64  # one window: evaluation scores every token once, as the HF loss does
    with torch.no_grad():
        expected = loaded.model.hf_model(ids, labels=ids).loss.item()
    assert evaluate_texts(loaded.model, loaded.tokenizer, [story]).loss == pytest.approx(expected, rel=1e-5)


def test_transformers_adapter_generates_like_transformers(gpt_neo_dir):
    loaded = load_model(gpt_neo_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    hf = hf_model(gpt_neo_dir)
    prompt_ids, _ = encode_prompt(tokenizer, PROMPT, 64, 20)
    greedy = generate(model, tokenizer, PROMPT, GenerationConfig(method="greedy", max_new_tokens=20))[0]
    assert greedy.finished
    assert greedy.token_ids == hf_generate(hf, prompt_ids, tokenizer.eot_id, max_new_tokens=20)
    beam = generate(model, tokenizer, PROMPT, GenerationConfig(method="beam", num_beams=4, max_new_tokens=20))[0]
    assert beam.token_ids == hf_generate(hf, prompt_ids, tokenizer.eot_id, max_new_tokens=20, num_beams=4,
                                         length_penalty=1.0, early_stopping=True)


# ----------------------------------------------------------------------------- CLI

def test_cli_export_then_import_round_trips(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tinytales.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["export", "-m", str(tiny_model_dir), "--format", "hf", "--out", str(tmp_path / "hf"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["architecture"] == "GPT2LMHeadModel" and "model.safetensors" in summary["files"]
    assert {"README.md", "generation_config.json"} <= set(summary["files"])  # ready to upload

    result = runner.invoke(app, ["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model_type"] == "gpt2"
    original, back = load_model(tiny_model_dir), load_model(tmp_path / "back")
    assert back.model.config == original.model.config
    assert all(torch.equal(v, back.model.state_dict()[k]) for k, v in original.model.state_dict().items())


def test_cli_errors_are_one_line_and_exit_1(tiny_tokenizer, tmp_path):
    from typer.testing import CliRunner

    from tinytales.cli import app

    save_model(random_model(320, norm="rmsnorm"), tiny_tokenizer, tmp_path / "rms")
    runner = CliRunner()
    cases = [
        (["export", "-m", str(tmp_path / "rms"), "--out", str(tmp_path / "hf")], "norm='rmsnorm'"),
        (["export", "-m", str(tmp_path / "rms"), "--format", "onnx", "--out", str(tmp_path / "hf")], "--format"),
        (["export", "-m", str(tmp_path / "rms"), "--dtype", "int8", "--out", str(tmp_path / "hf")], "--dtype"),
        (["import", str(tmp_path / "missing"), "--out", str(tmp_path / "x")], "not a directory"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_a_directory_with_its_own_code_is_refused_without_running_it(tmp_path, monkeypatch):
    """config.json with auto_map and an unknown model_type: a one-line ValueError, no [y/N] prompt, no code run."""
    directory = tmp_path / "evil"
    directory.mkdir()
    marker = tmp_path / "ran.txt"
    (directory / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    (directory / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked whether to run the directory's code"))
    with pytest.raises(ValueError) as info:
        load_model(directory)
    assert "never runs code" in str(info.value) and "\n" not in str(info.value)
    # transformers itself, as TinyTales calls it, refuses too (no prompt, no code run)
    from tinytales.formats import transformers_lm

    monkeypatch.setattr(transformers_lm, "refuse_remote_code", lambda *a: None)
    with pytest.raises(ValueError) as info:
        transformers_lm.load_transformers(directory)
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("shard", ["/etc/hostname", "../outside.safetensors", "sub/../../outside.safetensors"])
def test_a_sharded_index_cannot_name_files_outside_the_model_folder(tmp_path, shard):
    directory = tmp_path / "model"
    directory.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a.weight": shard}}))
    with pytest.raises(ValueError, match="outside the model folder") as info:
        read_hf_weights(directory)
    assert "\n" not in str(info.value)


def test_cli_export_refuses_to_replace_an_unrelated_folder_without_force(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tinytales.cli import app

    runner = CliRunner()
    unrelated = tmp_path / "my-photos"
    unrelated.mkdir()
    (unrelated / "holiday.jpg").write_bytes(b"precious")
    result = runner.invoke(app, ["export", "-m", str(tiny_model_dir), "--out", str(unrelated)])
    assert result.exit_code == 1 and "not a model directory" in result.stderr and "--force" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (unrelated / "holiday.jpg").read_bytes() == b"precious"
    result = runner.invoke(app, ["import", str(tiny_model_dir), "--out", str(unrelated)])
    assert result.exit_code == 1 and (unrelated / "holiday.jpg").exists()
    assert runner.invoke(app, ["export", "-m", str(tiny_model_dir), "--out", str(tmp_path / "hf")]).exit_code == 0
    again = runner.invoke(app, ["export", "-m", str(tiny_model_dir), "--out", str(tmp_path / "hf")])  # a model dir
    assert again.exit_code == 0, again.output
    forced = runner.invoke(app, ["export", "-m", str(tiny_model_dir), "--out", str(unrelated), "--force"])
    assert forced.exit_code == 0 and not (unrelated / "holiday.jpg").exists()
