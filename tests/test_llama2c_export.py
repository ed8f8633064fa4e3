"""Exports for llama2.c: the real run.c and runq.c tell the same greedy story as TinyTales, and the files load back.

run.c and runq.c are karpathy's, unchanged, from ../shared/peers/llama2.c, compiled here with the system C compiler.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from tinytales.formats import load_model
from tinytales.formats.llama2c import Llama2cTokenizer
from tinytales.formats.llama2c_export import export_llama2c, llama2c_vocabulary
from tinytales.generate import GenerationConfig, _collect, _token_steps
from tinytales.model import GPT, GPTConfig
from tinytales.tokenizer import story_start_id

from conftest import SHARED, needs_shared

LLAMA2C = SHARED / "peers" / "llama2.c"
STEPS = 200  # run.c's -n: the positions it reads; from an empty prompt (BOS alone) that many new tokens
COMPILER = shutil.which("cc")
needs_llama2c = pytest.mark.skipif(
    COMPILER is None or not (LLAMA2C / "run.c").exists(),
    reason="no C compiler (cc)" if COMPILER is None else f"{LLAMA2C} not found (../shared is not beside the repo)")


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict:
    """run and runq, compiled as llama2.c's README says (without OpenMP: one thread)."""
    folder = tmp_path_factory.mktemp("llama2c")
    built = {}
    for name in ("run", "runq"):
        subprocess.run([COMPILER, "-O2", "-o", str(folder / name), str(LLAMA2C / f"{name}.c"), "-lm"], check=True,
                       capture_output=True, timeout=120)
        built[name] = folder / name
    return built


def run_llama2c(program, model, steps: int = STEPS) -> tuple[bytes, float]:
    """(stdout, tokens per second) of a greedy story from an empty prompt: `./run model.bin -z tokenizer.bin
    -t 0 -n steps -i ""`; it stops at BOS (id 1) or after `steps` tokens and prints a newline."""
    done = subprocess.run([str(program), str(model), "-z", str(model.parent / "tokenizer.bin"), "-t", "0",
                           "-n", str(steps), "-i", ""], capture_output=True, timeout=60, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    speed = re.search(rb"achieved tok/s: ([\d.]+)", done.stderr)
    return done.stdout, float(speed.group(1)) if speed else 0.0


def greedy_story(loaded, steps: int = STEPS) -> list[int]:
    """TinyTales' greedy story from the start-of-story token alone, as run.c's -i "" starts from BOS: the engine's
    own decoding loop (`generate` asks for a prompt). The new ids, without the end-of-story token."""
    tokenizer = loaded.tokenizer
    config = GenerationConfig(method="greedy", max_new_tokens=steps)
    [(ids, finished, _)] = _collect(_token_steps(loaded.model, tokenizer, [story_start_id(tokenizer)], config),
                                    tokenizer.eot_id)
    return ids[:-1] if finished else ids


def run_c_prints(pieces: list[bytes], ids: list[int]) -> bytes:
    """What run.c prints for these ids after BOS: its decode (a leading space after BOS dropped, <0xHH> as that
    byte, pieces read as C strings) and safe_printf (a one-byte piece only if printable ASCII or whitespace)."""
    out, previous = b"", 1
    for i in ids:
        piece = pieces[i].split(b"\0")[0]
        if previous == 1 and piece.startswith(b" "):
            piece = piece[1:]
        byte = re.match(rb"<0x([0-9A-Fa-f]{1,2})", piece)
        if byte:
            piece = bytes([int(byte.group(1), 16)]).split(b"\0")[0]
        if len(piece) == 1 and not (0x20 <= piece[0] < 0x7F or piece in b" \t\n\v\f\r"):
            piece = b""
        out, previous = out + piece, i
    return out


def agreeing_tokens(pieces: list[bytes], ids: list[int], printed: bytes) -> int:
    """How many of the ids, from the first, run.c printed: the longest prefix whose text starts its output."""
    return next((k for k in range(len(ids), -1, -1) if printed.startswith(run_c_prints(pieces, ids[:k]))), 0)


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0]  # (T, V)


@pytest.fixture(scope="module")
def bundled():
    return load_model()


@pytest.fixture(scope="module")
def exports(bundled, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("exports")
    return {"f32": export_llama2c(bundled, folder / "f32" / "model.bin"),
            "q8": export_llama2c(bundled, folder / "q8" / "model.bin", quantize="q8_0")}


def llama2c_ids(tokenizer, vocab_size: int) -> tuple[list[int], dict[int, int]]:
    """(order, our id -> llama2.c id) of the export's ids."""
    _, _, order = llama2c_vocabulary(tokenizer, vocab_size)
    return order, {ours: theirs for theirs, ours in enumerate(order)}


# ----------------------------------------------------------------------------- the bundled model in run.c

@needs_llama2c
def test_run_c_tells_tinytales_greedy_story_exactly(programs, bundled, exports):
    """float32: run.c computes what TinyTales does up to summation order (the story's smallest top-two margin is
    0.0085, far above that), so the whole story agrees, text for text and token for token."""
    path = exports["f32"]["model"]
    printed, speed = run_llama2c(programs["run"], Path(path))
    ids = greedy_story(bundled)
    assert len(ids) > 100  # a whole story (the bundled model's has 170 tokens, then the end of story)
    assert printed == (bundled.tokenizer.decode(ids) + "\n").encode()
    exported = load_model(path)
    _, to_llama2c = llama2c_ids(bundled.tokenizer, bundled.model.config.vocab_size)
    assert greedy_story(exported) == [to_llama2c[i] for i in ids]  # TinyTales reading the export: the same tokens
    assert printed == run_c_prints(exported.tokenizer.pieces, greedy_story(exported)) + b"\n"
    assert speed > 0


@needs_llama2c
def test_runq_c_agrees_with_tinytales_on_the_same_q8_file(programs, exports):
    """Q8_0: TinyTales reads the 8-bit weights back as floats, runq.c also rounds every matrix's input to 8 bits.
    Rounding the activations as runq.c does (measured in PyTorch) moves a top-two margin by up to 0.13 on this
    story, so the stories must agree at least up to the first token whose margin is under 0.25 (token 14 here);
    measured on the bundled v3 model: the whole story, 150 of 150 tokens, agrees (its margin at token 18 is 0.005)."""
    path = exports["q8"]["model"]
    loaded = load_model(path)
    printed, _ = run_llama2c(programs["runq"], Path(path))
    ids = greedy_story(loaded)
    top2 = logits(loaded.model, [1, *ids]).topk(2, dim=-1).values  # (T, 2)
    margins = (top2[:, 0] - top2[:, 1])[:len(ids)].tolist()
    guaranteed = next((k for k, margin in enumerate(margins) if margin < 0.25), len(ids))
    agreed = agreeing_tokens(loaded.tokenizer.pieces, ids, printed)
    assert agreed >= max(guaranteed, 1), (agreed, guaranteed, len(ids))


def test_float32_export_loads_back_with_the_same_logits(bundled, exports):
    order, to_llama2c = llama2c_ids(bundled.tokenizer, bundled.model.config.vocab_size)
    ids = [bundled.tokenizer.eot_id, *bundled.tokenizer.encode("Once upon a time, Lily saw a big red ball.")]
    expected = logits(bundled.model, ids)[:, order]  # (T, V) in llama2.c's id order
    back = load_model(exports["f32"]["model"])
    assert back.card["export_version"] == 0 and back.model.config == bundled.model.config
    torch.testing.assert_close(logits(back.model, [to_llama2c[i] for i in ids]), expected, rtol=1e-5, atol=1e-5)
    q8 = logits(load_model(exports["q8"]["model"]).model, [to_llama2c[i] for i in ids])
    assert (q8 - expected).abs().max() < 0.5  # measured 0.18 on a story, logits up to 18
    assert (q8.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9


def test_export_files_follow_llama2c_layouts(bundled, exports):
    f32, q8 = exports["f32"], exports["q8"]
    c = bundled.model.config
    assert f32["bytes"] == 28 + 4 * (bundled.model.num_params() + c.context_length * c.head_dim)  # + freq_cis
    assert q8["version"] == 2 and q8["group_size"] == 64  # export.py's default; it divides dim and hidden_dim
    assert q8["bytes"] < f32["bytes"] / 3.5
    header = open(q8["model"], "rb").read(41)
    assert struct.unpack("<Ii7iBi", header) == (0x616B3432, 2, 256, 704, 4, 4, 4, 4096, 256, 1, 64)


# ----------------------------------------------------------------------------- ids and tokenizer.bin

def test_end_of_story_is_id_1_and_bytes_take_llama2c_byte_ids(bundled, exports):
    tokenizer = Llama2cTokenizer.from_file(exports["f32"]["tokenizer"])
    ours = bundled.tokenizer.token_bytes()
    order, _ = llama2c_ids(bundled.tokenizer, 4096)
    assert order[1] == bundled.tokenizer.eot_id == 0 and tokenizer.pieces[1] == b"<|endoftext|>"
    assert tokenizer.pieces[3:259] == [b"<0x00>", *(bytes([b]) for b in range(1, 256))]  # raw bytes; NUL spelled out
    assert tokenizer.pieces[259:] == ours[257:-2] and [tokenizer.pieces[0], tokenizer.pieces[2]] == ours[-2:]
    assert tokenizer.special_ids == {1}  # ids 0 and 2 are ordinary tokens here: skip_special keeps them
    assert tokenizer.decode([0, 2], skip_special=True) == (ours[-2] + ours[-1]).decode()


def test_tokenizer_bin_gives_the_same_text_and_run_c_drops_lone_bytes(bundled, exports):
    """Pieces are raw bytes: run.c prints pieces of two bytes or more as they are, so split characters join again
    ("\\xe2\\x80" + ...), but it drops every one-byte piece that is not printable ASCII (its safe_printf), so a
    character emitted as single bytes ("é" here) or the last byte of one ("—") is missing from its output."""
    _, to_llama2c = llama2c_ids(bundled.tokenizer, 4096)
    exported = Llama2cTokenizer.from_file(exports["f32"]["tokenizer"])
    text = "Lily said, “Look!” Tom’s café — 🐱\n\nThe end."
    ids = [to_llama2c[i] for i in bundled.tokenizer.encode(text)]
    assert exported.decode(ids) == text  # TinyTales reading the export keeps every byte
    printed = run_c_prints(exported.pieces, ids).decode("utf-8", errors="replace")
    assert printed.startswith("Lily said, “Look!” Tom’s caf ")  # curly quotes are whole tokens; é is two lone bytes
    assert "🐱" not in printed and printed.endswith("\n\nThe end.")


def test_run_c_encoder_reads_prompts_as_the_bpe_does_after_a_leading_space(bundled, exports):
    """run.c's encoder (ported in Llama2cTokenizer.encode) merges by the scores (minus the id: the BPE's merge order)
    and adds SentencePiece's leading space; it then gives the BPE's tokens of " " + text (measured: for 100 of 100
    validation stories)."""
    _, to_llama2c = llama2c_ids(bundled.tokenizer, 4096)
    exported = Llama2cTokenizer.from_file(exports["f32"]["tokenizer"])
    for text in ["Once upon a time", "Lily had a big, red ball. She said: \"Let's play!\"", "café"]:
        assert exported.encode(text) == [to_llama2c[i] for i in bundled.tokenizer.encode(" " + text)]


# ----------------------------------------------------------------------------- other models

def random_llama(vocab_size: int = 320, **options) -> GPT:
    torch.manual_seed(0)
    settings = dict(vocab_size=vocab_size, context_length=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                    mlp_hidden=48, bias=False, norm="rmsnorm", activation="swiglu", position="rope") | options
    model = GPT(GPTConfig(**settings)).eval()
    with torch.no_grad():
        for p in model.parameters():  # decisive logits: no near ties between run.c and TinyTales
            p.copy_(torch.randn_like(p) * 0.3)
    return model


@needs_llama2c
def test_grouped_heads_and_an_untied_classifier_run_in_run_c(programs, tiny_tokenizer, tmp_path):
    """n_kv_head < n_head and an untied classifier (negative vocab_size); the model's 20 rows beyond the tokenizer's
    300 tokens are left out. run.c prints TinyTales' greedy ids, byte for byte as run.c shows them."""
    from tinytales.core import LoadedModel

    model = random_llama(tie_embeddings=False)
    export_llama2c(model, tmp_path / "model.bin", tokenizer=tiny_tokenizer)
    printed, _ = run_llama2c(programs["run"], tmp_path / "model.bin", steps=40)
    exported = load_model(tmp_path / "model.bin")
    config = exported.model.config
    assert (config.n_kv_head, config.tie_embeddings, config.vocab_size) == (2, False, 300)
    ids = greedy_story(exported, steps=40)
    assert len(ids) >= 10 and printed == run_c_prints(exported.tokenizer.pieces, ids) + b"\n"
    _, to_llama2c = llama2c_ids(tiny_tokenizer, 320)
    ours = greedy_story(LoadedModel(model, tiny_tokenizer), steps=40)
    assert [to_llama2c[i] for i in ours] == ids


@needs_llama2c
@needs_shared("models", "stories260K")
def test_a_llama2c_model_exports_again_unchanged(programs, tmp_path):
    """stories260K (Q8_0) read by TinyTales and exported as float32: run.c tells llama2.c's reference story."""
    source = load_model(SHARED / "models" / "stories260K" / "stories260K_q80.bin")
    export_llama2c(source, tmp_path / "stories260K.bin")
    assert (tmp_path / "tokenizer.bin").read_bytes() == (SHARED / "models" / "stories260K" / "tok512.bin").read_bytes()
    printed, _ = run_llama2c(programs["run"], tmp_path / "stories260K.bin", steps=60)
    assert printed.startswith(b"Once upon a time, there was a little girl named Lily. She loved to play outside in "
                              b"the park.")
    assert printed == run_c_prints(source.tokenizer.pieces, greedy_story(source, steps=60)) + b"\n"


@pytest.mark.parametrize("options, named", [
    ({}, "position='learned', norm='layernorm', activation='gelu', bias=True"),  # GPT-2 style
    ({"position": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False, "rope_theta": 500000.0},
     "rope_theta=500000.0"),
    ({"position": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False, "qk_norm": True}, "qk_norm=True"),
    ({"position": "rope", "norm": "rmsnorm", "activation": "relu2", "bias": False, "norm_eps": 1e-6},
     "activation='relu2', norm_eps=1e-06"),
])
def test_models_run_c_cannot_compute_are_refused_naming_what_does_not_fit(options, named, tiny_tokenizer, tmp_path):
    model = GPT(GPTConfig(vocab_size=320, context_length=32, n_layer=1, n_head=2, n_embd=32, **options))
    with pytest.raises(ValueError, match="cannot export to llama2.c") as info:
        export_llama2c(model, tmp_path / "model.bin", tokenizer=tiny_tokenizer)
    assert named in str(info.value) and "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- files and the command

def test_existing_files_are_kept_without_overwrite_and_a_failed_write_leaves_none(tiny_tokenizer, tmp_path,
                                                                                  monkeypatch):
    from tinytales.formats import llama2c_export

    model = random_llama()
    out = tmp_path / "model.bin"
    export_llama2c(model, out, tokenizer=tiny_tokenizer)
    before = out.read_bytes()
    with pytest.raises(ValueError, match=r"model.bin already exists; .*--force"):
        export_llama2c(random_llama(tie_embeddings=False), out, tokenizer=tiny_tokenizer)
    export_llama2c(model, tmp_path / "model-q8.bin", quantize="q8_0", tokenizer=tiny_tokenizer)  # shares tokenizer.bin
    (tmp_path / "tokenizer.bin").write_bytes(b"another model's")
    with pytest.raises(ValueError, match=r"tokenizer.bin already exists and is another model's"):
        export_llama2c(model, tmp_path / "model-2.bin", tokenizer=tiny_tokenizer)
    export_llama2c(model, out, tokenizer=tiny_tokenizer, overwrite=True)
    assert out.read_bytes() == before and load_model(tmp_path / "model-q8.bin").tokenizer.vocab_size == 300

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(llama2c_export, "_write_version2", fail)
    with pytest.raises(OSError):
        export_llama2c(model, tmp_path / "new" / "model.bin", quantize="q8_0", tokenizer=tiny_tokenizer)
    assert list((tmp_path / "new").iterdir()) == []  # no half-written file, no temporary left
    for bad in ("model.txt", "tokenizer.bin"):
        with pytest.raises(ValueError, match="must be the model's .bin file"):
            export_llama2c(model, tmp_path / bad, tokenizer=tiny_tokenizer)


def test_cli_exports_for_llama2c_and_refuses_options_of_the_other_format(tiny_tokenizer, tmp_path):
    from typer.testing import CliRunner

    from tinytales.cli import app
    from tinytales.formats import save_model

    save_model(random_llama(), tiny_tokenizer, tmp_path / "llama")
    runner = CliRunner()
    out = tmp_path / "exported" / "tiny.bin"
    args = ["export", "-m", str(tmp_path / "llama"), "--format", "llama2c", "--out", str(out)]
    result = runner.invoke(app, [*args, "--quantize", "q8_0", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["version"] == 2 and summary["group_size"] == 16 and summary["bytes"] == out.stat().st_size
    assert (out.parent / "tokenizer.bin").exists() and load_model(out).card["export_version"] == 2
    assert runner.invoke(app, args).exit_code == 1  # the files exist
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0 and "./run " in result.stdout and load_model(out).card["export_version"] == 0
    for extra, message in [(["--dtype", "float16"], "--dtype float16 applies to --format hf"),
                           (["--quantize", "q4"], "--quantize must be q8_0")]:
        result = runner.invoke(app, [*args, "--force", *extra])
        assert result.exit_code == 1 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(app, ["export", "-m", str(tmp_path / "llama"), "--quantize", "q8_0", "--out", str(tmp_path / "h")])
    assert result.exit_code == 1 and "--quantize applies to --format llama2c" in result.stderr
