"""notebooks/demo.ipynb: stored without outputs, and runs from top to bottom on a few training steps."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from conftest import needs_shared

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "demo.ipynb"
KERNEL_NAME = "tinytales-test-python"


def read_notebook():
    import nbformat

    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_stored_without_outputs():
    import nbformat

    notebook = read_notebook()
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells, "the demo notebook has no code cells"
    with_outputs = [i for i, cell in enumerate(code_cells) if cell.outputs or cell.execution_count is not None]
    assert not with_outputs, f"code cells {with_outputs} hold outputs; clear them before committing"


def kernel_manager(tmp_path: Path):
    """A kernel running this very interpreter, whatever kernelspecs the machine has (none are installed in CI)."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kernels = tmp_path / "kernels"
    write_kernel_spec(kernels / KERNEL_NAME)  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    specs = KernelSpecManager(kernel_dirs=[str(kernels)])
    assert specs.get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def outputs_of(cell) -> tuple[str, list[dict]]:
    """Printed text of a code cell, and its rich (display_data / execute_result) outputs' data."""
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    rich = [o.data for o in cell.outputs if o.output_type in ("display_data", "execute_result")]
    return text, rich


@pytest.mark.slow
@pytest.mark.shared
@needs_shared("data", "tinystories", "valid.jsonl")
@needs_shared("models", "stories260K", "stories260K_q80.bin")
def test_notebook_runs_end_to_end(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("TINYTALES_DEMO_STEPS", "30")  # read by the notebook's first cell (the kernel inherits it)
    monkeypatch.setenv("TINYTALES_DEMO_THREADS", "1")
    # the kernel starts in notebooks/: let it import this checkout's tinytales even when it is not installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = read_notebook()
    client = NotebookClient(notebook, km=kernel_manager(tmp_path), timeout=600,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails

    cells = [outputs_of(cell) for cell in notebook.cells if cell.cell_type == "code"]
    text = "\n".join(t for t, _ in cells)
    rich = [data for _, r in cells for data in r]

    assert "training steps: 30" in text
    assert re.search(r"\d+ steps in \d+ s: [\d,]+ parameters, train loss \d+\.\d+, validation loss \d+\.\d+", text)
    for method in ("greedy", "beam", "sample", "temperature", "top-k", "top-p", "min-p"):
        assert f"--- {method} " in text, f"no story told with {method}"

    bits = dict(re.findall(r"^(.+?): (\d+\.\d+) bits per byte on \d+ stories", text, flags=re.M))
    assert set(bits) == {"my tiny model", "bundled (tinytales-stories)", "stories260K (llama2.c)"}
    assert all(0 < float(b) < 10 for b in bits.values())
    # 30 steps of a tiny model cannot match models trained for hours
    assert float(bits["my tiny model"]) > float(bits["bundled (tinytales-stories)"])

    assert any("image/png" in data for data in rich), "the loss plot was not displayed"
    markdown = "\n".join(data.get("text/markdown", "") for data in rich)
    assert "| epoch | steps | train loss |" in markdown
    assert "## Decoding methods" in markdown and "my-tiny-model" in markdown and "stories260K_q80" in markdown
