"""examples/quickstart.ipynb runs from top to bottom (nbclient, a fresh kernel)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (the test extra)")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (the test extra)")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # "python3" is ipykernel's own spec; jupyter_client starts it with this interpreter.
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    print(f"quickstart.ipynb ran in {seconds:.1f} s")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # frame, Jaccard, drift, renderings: inline plots
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "deepstorm-zerocost" in text and "RCC drift" in text and "done in" in text
    for name in ("classic", "deepstorm-zerocost"):
        assert (tmp_path / "quickstart_output" / name / "localizations.csv").is_file()
