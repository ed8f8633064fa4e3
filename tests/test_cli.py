"""The command line as a whole: one way to name a model, a device and a decoding method in every command, every
default in --help, hints that name flags that exist, and a missing optional extra as one line with its fix."""
from __future__ import annotations

import ast
import json
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

import tinytales
from tinytales.cli import app
from tinytales.defaults import DECODING_METHODS, OFF

runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands
MODEL_COMMANDS = ("generate", "info", "eval", "compare", "grade", "export", "serve")
PROMPT = "Once upon a time, there was a little girl named Lily."


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def unwrapped_help(*command: str) -> str:
    text = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "300"}).stdout
    return " ".join(text.replace("│", " ").split())


# --- --version ----------------------------------------------------------------------------------------------

def test_version_prints_the_installed_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout == f"tinytales {metadata.version('tinytales')}\n"


def test_version_without_an_installed_package_falls_back_to_the_source_tree(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    result = run("--version")
    assert result.exit_code == 0 and result.stdout == f"tinytales {tinytales.__version__}\n"


# --- -m/--model and the name `bundled` ----------------------------------------------------------------------

@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_command_that_takes_a_model_takes_dash_m(command):
    options = [p for p in COMMANDS[command].params if "--model" in getattr(p, "opts", [])]
    assert options and set(options[0].opts) == {"-m", "--model"}
    assert "bundled" in unwrapped_help(command)


def test_info_and_eval_take_dash_m(tiny_model_dir, jsonl_file, tiny_model):
    info = run("info", "-m", tiny_model_dir, "--json")
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["parameters"] == tiny_model.num_params()
    scored = run("eval", "-m", tiny_model_dir, "--data", jsonl_file, "--max-documents", 2, "--device", "auto",
                 "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["documents"] == 2


def test_bundled_names_the_bundled_model_from_any_folder(tmp_path, monkeypatch):
    from tinytales.formats import bundled_model_path, load_model, resolve_tokenizer

    monkeypatch.chdir(tmp_path)
    assert load_model("bundled").path == load_model(None).path == bundled_model_path()
    assert resolve_tokenizer("bundled").vocab_size == 4096
    info = run("info", "-m", "bundled", "--json")
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["path"] == str(bundled_model_path())


def test_fine_tuning_the_bundled_model_from_any_folder(tmp_path, monkeypatch, jsonl_file):
    from tinytales.formats import load_model

    monkeypatch.chdir(tmp_path)
    result = run("train", "--init-from", "bundled", "--data", jsonl_file, "--out", "runs/mine", "--max-steps", 1,
                 "--batch-size", 2, "--precision", "fp32", "--json")
    assert result.exit_code == 0, result.output
    tuned = load_model(json.loads(result.stdout)["model_dir"])
    assert tuned.model.config == load_model("bundled").model.config
    assert tuned.card["training"]["init_from"] == "bundled"


# --- one vocabulary of decoding methods -----------------------------------------------------------------------

def test_the_named_methods_start_from_generation_configs_defaults():
    from dataclasses import fields

    from tinytales.generate import GenerationConfig

    defaults = {f.name: f.default for f in fields(GenerationConfig)}
    assert {k: defaults[k] for k in OFF} == OFF
    for name, settings in DECODING_METHODS.items():
        GenerationConfig(**settings)  # every one is valid


@pytest.mark.parametrize("command", ["generate", "compare", "grade"])
def test_help_lists_every_method(command):
    text = unwrapped_help(command)
    assert all(f"{name} (" in text or f"{name}," in text for name in DECODING_METHODS), text


@pytest.mark.parametrize("method", ["top-p", "min-p", "multinomial", "beam"])
def test_generate_and_compare_tell_the_same_story_for_a_method_name(tiny_model_dir, method):
    told = run("generate", PROMPT, "-m", tiny_model_dir, "--method", method, "--seed", 0, "--max-new-tokens", 8,
               "--json")
    assert told.exit_code == 0, told.output
    compared = run("compare", "-m", tiny_model_dir, "--prompt", PROMPT, "--method", method, "--seed", 0,
                   "--max-new-tokens", 8, "--json")
    assert compared.exit_code == 0, compared.output
    told, compared = json.loads(told.stdout), json.loads(compared.stdout)
    assert told["stories"][0]["text"] == compared["outputs"][0]["text"]
    assert told["settings"] == {k: v for k, v in compared["methods"][method].items() if k != "use_cache"}


def test_flags_change_a_named_methods_settings(tiny_model_dir):
    result = run("generate", PROMPT, "-m", tiny_model_dir, "--method", "top-p", "--top-p", 0.5, "--temperature", 0.7,
                 "--max-new-tokens", 3, "--json")
    settings = json.loads(result.stdout)["settings"]
    assert (settings["method"], settings["top_p"], settings["temperature"]) == ("sample", 0.5, 0.7)


def test_an_unknown_method_names_the_choices(tiny_model_dir):
    line = one_line_error(run("generate", PROMPT, "-m", tiny_model_dir, "--method", "nucleus"))
    assert "unknown decoding method 'nucleus'; choose from " + ", ".join(DECODING_METHODS) in line


# --- --help shows every default; hints name flags that exist ----------------------------------------------------

def test_help_shows_every_default():
    missing = []
    for name, command in COMMANDS.items():
        for param in command.params:
            if getattr(param, "is_flag", False) and not getattr(param, "secondary_opts", None):
                continue  # an on/off flag: off unless given
            if getattr(param, "required", False) or param.name == "help":
                continue
            shown = param.default is not None and param.show_default is not False
            if not shown and "default" not in (param.help or "").lower():
                missing.append(f"{name} {param.name}")
    assert not missing


def test_every_command_that_reads_stories_chooses_the_text_field():
    for command in ("train", "prepare", "train-tokenizer", "eval", "compare"):
        assert "--text-field" in unwrapped_help(command), command


def error_hints() -> dict[str, list[str]]:
    """Every --flag that the package's error and warning messages name, and where."""
    package = Path(tinytales.__file__).parent
    hints: dict[str, list[str]] = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            called = isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "warn", "fail", "need", "report", "print")
            if not (isinstance(node, ast.Raise) or called):
                continue
            for text in (n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)):
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", text):
                    hints.setdefault(flag, []).append(f"{path.relative_to(package)}")
    return hints


def test_error_messages_name_only_flags_that_exist():
    group = typer.main.get_command(app)
    flags = {"--help"}
    for command in [group, *group.commands.values()]:
        for param in command.params:
            flags.update(getattr(param, "opts", []), getattr(param, "secondary_opts", []))
    hints = error_hints()
    assert "--text-field" in hints and "--tokenizer" in hints  # the scan finds them
    assert {flag: where for flag, where in hints.items() if flag not in flags} == {}


# --- --device auto: CUDA, then MPS, then the CPU -------------------------------------------------------------------

@pytest.mark.parametrize("cuda, mps, chosen", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, chosen):
    from tinytales.core import auto_device, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert auto_device() == chosen
    assert resolve_device("auto").type == chosen


def test_mps_without_an_apple_gpu_is_a_clear_error(monkeypatch):
    from tinytales.core import resolve_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"no usable Apple GPU \(MPS\); use --device cpu"):
        resolve_device("mps")


# --- a missing optional extra: one line with the install command ---------------------------------------------------

def missing(monkeypatch, *modules: str) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ModuleNotFoundError


def test_serve_without_the_serve_extra(monkeypatch):
    missing(monkeypatch, "uvicorn")
    line = one_line_error(run("serve"))
    assert line == 'error: tinytales serve needs uvicorn, which is not installed: pip install "tinytales[serve]"'
    monkeypatch.undo()
    missing(monkeypatch, "fastapi")
    assert 'needs fastapi, which is not installed: pip install "tinytales[serve]"' in one_line_error(run("serve"))


def test_a_hub_dataset_without_the_hub_extra(monkeypatch, tiny_model_dir):
    missing(monkeypatch, "datasets")
    line = one_line_error(run("eval", "-m", tiny_model_dir, "--data", "hf:roneneldan/TinyStories"))
    assert "hf:roneneldan/TinyStories needs datasets" in line and line.endswith('pip install "tinytales[hub]"')


def test_parquet_files_without_pyarrow(monkeypatch, tmp_path, tiny_model_dir):
    (tmp_path / "stories.parquet").write_bytes(b"PAR1")
    missing(monkeypatch, "pyarrow", "pyarrow.parquet")
    line = one_line_error(run("eval", "-m", tiny_model_dir, "--data", tmp_path / "stories.parquet"))
    assert "needs pyarrow" in line and line.endswith('pip install "tinytales[hub]"')


def test_a_hub_model_without_the_hub_extra(monkeypatch):
    missing(monkeypatch, "huggingface_hub")
    line = one_line_error(run("generate", "-m", "hf:roneneldan/TinyStories-33M"))
    assert line == ('error: the hub model hf:roneneldan/TinyStories-33M needs huggingface_hub, which is not '
                    'installed: pip install "tinytales[hub]"')


def test_a_transformers_model_without_the_hf_extra(monkeypatch, tmp_path):
    neo = tmp_path / "neo"
    neo.mkdir()
    (neo / "config.json").write_text(json.dumps({"model_type": "gpt_neo", "architectures": ["GPTNeoForCausalLM"]}))
    missing(monkeypatch, "transformers")
    line = one_line_error(run("info", "-m", neo))
    assert f"the 'gpt_neo' model in {neo}" in line and line.endswith('pip install "tinytales[hf]"')


def test_the_gpt2_tokenizer_without_the_hub_extra_names_both_fixes(monkeypatch, tmp_path, jsonl_file):
    monkeypatch.delenv("TINYTALES_GPT2_DIR", raising=False)
    missing(monkeypatch, "huggingface_hub")
    line = one_line_error(run("prepare", jsonl_file, "--tokenizer", "gpt2", "--out", tmp_path / "data"))
    assert "set $TINYTALES_GPT2_DIR to a folder with vocab.json and merges.txt" in line
    assert line.endswith('pip install "tinytales[hub]"')


def test_require_names_a_module_that_is_there_but_broken(monkeypatch, tmp_path):
    from tinytales.core import MissingDependency, require

    (tmp_path / "broken_extra.py").write_text("import no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingDependency, match=r"cannot be imported \(No module named 'no_such_module_anywhere'\)"):
        require("broken_extra", "serve", "this")
    assert require("json", "serve", "this") is json
