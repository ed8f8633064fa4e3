"""What every command shares: the console, clean one-line errors, JSON output."""
from __future__ import annotations

import functools
import json
import sys

import typer
from rich.console import Console

from ..core import BUNDLED, MissingDependency

console = Console()
err_console = Console(stderr=True)

# Errors a user can act on: their message is the whole story, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, KeyError,
               MissingDependency)

# The options every command that takes a model shares, with the same names, values and help.
MODEL_CHOICES = ("a TinyTales model directory, a llama2.c .bin file, a Hugging Face model directory, hf:owner/name "
                 "(a model on the Hugging Face hub) or bundled (the model that ships with TinyTales)")
MODEL_HELP = f"The model: {MODEL_CHOICES}."
TOKENIZER_HELP = "Tokenizer of a llama2.c .bin model (default: the tokenizer.bin beside it)."
DEVICE_HELP = "auto (a CUDA GPU, else Apple's MPS, else the CPU), cpu, cuda, cuda:1, mps."


def model_option(help: str = MODEL_HELP, many: bool = False):
    """-m/--model, default bundled; `many`: the option may be repeated."""
    return typer.Option([BUNDLED] if many else BUNDLED, "--model", "-m", help=help)


def fail(message: str, code: int = 1):
    from rich.markup import escape

    # escaped: a message may hold brackets that are not markup (tinytales[serve], a path, a list)
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn the library's user-facing exceptions into a one-line error and exit code 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            if isinstance(e, OSError) and e.strerror:  # raised by the system, not with a message of ours
                fail(one_line(os_error_message(e)))
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            fail(one_line(str(message)))
        except OSError as e:  # permission denied, read-only folder, disk full: name the path and the cause
            fail(one_line(os_error_message(e)))
    return wrapper


def one_line(message: str) -> str:
    return " ".join(message.split()) if "\n" in message else message


def os_error_message(e: OSError) -> str:
    """An OSError as one line naming the path: `runs/x/checkpoints/step-00000500: No space left on device; ...`."""
    import errno

    reason = e.strerror or str(e) or type(e).__name__
    where = "" if e.filename is None else f"{e.filename}: "
    if e.filename is not None and e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}: "
    hints = {errno.ENOSPC: "free some disk space or choose another --out",
             errno.EACCES: "check the folder's permissions or choose another path",
             errno.EPERM: "check the folder's permissions or choose another path",
             errno.EROFS: "the folder is read-only; choose a writable path",
             errno.EDQUOT: "the disk quota is exceeded; free some space"}
    hint = hints.get(e.errno)
    return f"{where}{reason}" + (f"; {hint}" if hint else "")


def print_json(data) -> None:
    """JSON on stdout; a NaN or infinite number is written as null (JSON has no NaN)."""
    sys.stdout.write(json.dumps(_finite(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(data):
    import math

    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def load_for_cli(model: str | None, tokenizer: str | None, device: str = "auto"):
    """The model a command names (None or "bundled": the bundled one) on the device it names (`resolve_device`)."""
    from ..core import resolve_device
    from ..formats import load_model

    return load_model(model, device=resolve_device(device), tokenizer_path=tokenizer)
