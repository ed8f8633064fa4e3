import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tinytales import decoding
from tinytales.cli import app

runner = CliRunner()
PROMPT = "Once upon a time, there was a little girl named Lily."


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def library_story(model_dir, **settings):
    from tinytales.generate import GenerationConfig, generate
    from tinytales.formats import load_model

    loaded = load_model(model_dir)
    return generate(loaded.model, loaded.tokenizer, PROMPT, GenerationConfig(**settings))


def test_greedy_prints_the_prompt_then_its_continuation(tiny_model_dir):
    result = run("generate", PROMPT, "--model", tiny_model_dir, "--method", "greedy", "--max-new-tokens", 12,
                 "--no-stream")
    assert result.exit_code == 0, result.output
    expected = library_story(tiny_model_dir, method="greedy", max_new_tokens=12)[0].text
    assert result.stdout == PROMPT + expected + "\n"
    assert "tokens/s" in result.stderr
    again = run("generate", PROMPT, "--model", tiny_model_dir, "--method", "greedy", "--max-new-tokens", 12,
                "--no-stream")
    assert again.stdout == result.stdout  # deterministic


def test_streamed_output_is_the_same_text(tiny_model_dir):
    args = ["generate", PROMPT, "--model", tiny_model_dir, "--max-new-tokens", 15, "--seed", 4]
    streamed = run(*args, "--stream")
    printed = run(*args, "--no-stream")
    assert streamed.exit_code == 0 and printed.exit_code == 0, streamed.output
    assert streamed.stdout == printed.stdout
    assert streamed.stdout.startswith(PROMPT)


def test_default_settings_are_the_story_defaults(tiny_model_dir):
    result = run("generate", PROMPT, "--model", tiny_model_dir, "--max-new-tokens", 15, "--seed", 4, "--json")
    settings = json.loads(result.stdout)["settings"]
    from tinytales.defaults import STORY_DEFAULTS

    story_settings = {k: v for k, v in STORY_DEFAULTS.items() if k != "max_new_tokens"}
    assert settings["method"] == "sample" and {k: settings[k] for k in story_settings} == story_settings
    expected = library_story(tiny_model_dir, max_new_tokens=15, seed=4, **story_settings)[0].text
    assert json.loads(result.stdout)["stories"][0]["text"] == expected
    help_text = " ".join(run("generate", "--help").stdout.replace("│", " ").split())  # unwrapped
    assert "(sample 0.8, " in help_text and "(sample 0.95, " in help_text and "Examples" in help_text


def test_json_reports_each_story(tiny_model_dir):
    result = run("generate", PROMPT, "--model", tiny_model_dir, "--num-samples", 3, "--seed", 1,
                 "--max-new-tokens", 8, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["prompt"] == PROMPT and len(data["stories"]) == 3
    for story in data["stories"]:
        assert {"text", "new_tokens", "finished", "seconds", "tokens_per_second"} <= story.keys()
        assert 1 <= story["new_tokens"] <= 8


def test_several_samples_are_separated(tiny_model_dir):
    result = run("generate", PROMPT, "--model", tiny_model_dir, "--num-samples", 2, "--seed", 1,
                 "--max-new-tokens", 8)
    assert result.exit_code == 0, result.output
    assert "--- story 1 of 2 ---" in result.stdout and "--- story 2 of 2 ---" in result.stdout
    assert result.stdout.count(PROMPT) == 2


def test_beam_search_from_the_command_line(tiny_model_dir):
    result = run("generate", PROMPT, "--model", tiny_model_dir, "--method", "beam", "--num-beams", 3,
                 "--max-new-tokens", 6, "--json")
    assert result.exit_code == 0, result.output
    story = json.loads(result.stdout)["stories"][0]
    # beam search blocks repeated 3-grams by default on the command line
    assert story["text"] == library_story(tiny_model_dir, method="beam", num_beams=3, max_new_tokens=6,
                                          no_repeat_ngram_size=3)[0].text
    assert story["score"] is not None
    plain = run("generate", PROMPT, "--model", tiny_model_dir, "--method", "beam", "--num-beams", 3,
                "--max-new-tokens", 6, "--no-repeat-ngram", 0, "--json")
    assert json.loads(plain.stdout)["stories"][0]["text"] == library_story(
        tiny_model_dir, method="beam", num_beams=3, max_new_tokens=6)[0].text


def test_long_prompt_warns_on_one_line(tiny_model_dir):
    prompt = " ".join(f"Tom saw {i} cats." for i in range(40))
    result = run("generate", prompt, "--model", tiny_model_dir, "--method", "greedy", "--max-new-tokens", 5)
    assert result.exit_code == 0, result.output
    assert "warning: the prompt has" in result.stderr and "kept its last" in result.stderr
    assert result.stdout.startswith(prompt)


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--top-k", "-3"], "top_k must be >= 0"),
    (["--min-p", "1"], "min_p must be in [0, 1)"),
    (["--repetition-penalty", "0"], "repetition_penalty must be > 0"),
    (["--no-repeat-ngram", "-1"], "no_repeat_ngram_size must be >= 0"),
    (["--num-beams", "0"], "num_beams must be >= 1"),
    (["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    (["--num-samples", "0"], "num_samples must be in [1, 256]"),
    (["--num-samples", "100000"], "num_samples must be in [1, 256] (one batch row each), got 100000"),
    (["--method", "nucleus"], "unknown decoding method 'nucleus'; choose from sample, greedy, beam"),
    (["--method", "beam", "--num-beams", "2", "--num-samples", "3"], "num_samples (3) must be <= num_beams (2)"),
    (["--method", "greedy", "--num-samples", "2"], "greedy decoding tells one story"),
    (["--device", "tpu9"], "unknown device"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--words", "a,b,c,d,e,f"], "6 words asked for; a story can take at most 5"),
    (["--features", "dialogue,plot"], "unknown feature 'plot'"),
])
def test_bad_values_give_one_line_and_exit_1(tiny_model_dir, args, message):
    result = run("generate", PROMPT, "--model", tiny_model_dir, *args)
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("prompt, message", [
    ("   ", "the prompt is empty; give the beginning of a story, e.g."),
    ("x" * 20_001, "more than the limit of 20,000"),
])
def test_bad_prompts_give_one_line_and_exit_1(tiny_model_dir, prompt, message):
    result = run("generate", prompt, "--model", tiny_model_dir)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_ingredients_without_a_prompt_let_the_model_begin(tiny_model_dir):
    result = run("generate", "--model", tiny_model_dir, "--words", "cat, ball", "--features", "Dialogue",
                 "--method", "greedy", "--max-new-tokens", 10, "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["prompt"] == "" and answer["settings"]["words"] == ["cat", "ball"]
    assert answer["settings"]["features"] == ["Dialogue"]
    from tinytales.generate import GenerationConfig, generate
    from tinytales.formats import load_model

    loaded = load_model(tiny_model_dir)
    expected = generate(loaded.model, loaded.tokenizer, "", GenerationConfig(
        method="greedy", max_new_tokens=10, words=("cat", "ball"), features=("Dialogue",)))[0]
    assert answer["stories"][0]["text"] == expected.text
    assert "not say it was trained with ingredients" in result.stderr  # the tiny model was not


def test_prompt_is_checked_before_the_model_is_loaded(tmp_path):
    result = run("generate", " ", "--model", tmp_path / "nowhere")
    assert result.exit_code == 1 and "the prompt is empty" in result.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_model_dir):
    result = run("generate", PROMPT, "--model", tiny_model_dir, "--device", "cuda")
    assert result.exit_code == 1 and "no usable CUDA GPU; use --device cpu" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_model_is_a_clear_error(tmp_path):
    result = run("generate", PROMPT, "--model", tmp_path / "nowhere")
    assert result.exit_code == 1
    assert "model not found" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_info_shows_architecture_parameters_tokenizer_and_card(tiny_model_dir, tiny_model, tiny_tokenizer):
    result = run("info", "-m", tiny_model_dir)
    assert result.exit_code == 0, result.output
    for text in ("n_layer", "context_length", f"{tiny_model.num_params():,}",
                 f"{tiny_model.num_params(embeddings=False):,}", "random weights"):
        assert text in result.stdout
    data = json.loads(run("info", "--model", tiny_model_dir, "--json").stdout)
    assert data["architecture"]["n_embd"] == 32
    assert data["parameters"] == tiny_model.num_params()
    assert data["parameters_without_embeddings"] == tiny_model.num_params(embeddings=False)
    assert data["tokenizer"] == {"vocab_size": tiny_tokenizer.vocab_size, "eot_id": tiny_tokenizer.eot_id,
                                 "bos_id": None}
    assert data["card"] == {"note": "random weights"}
    assert data["decoding"].startswith("C step") == decoding.available()  # or why the PyTorch step decodes
    missing = run("info", "-m", tiny_model_dir / "nowhere")
    assert missing.exit_code == 1 and "model not found" in missing.stderr


def test_cli_starts_without_importing_torch():
    code = "import sys, tinytales.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
