"""What a training run writes besides the model: the history as CSV and as a figure.

The model itself (``weights.safetensors`` + ``model.yaml``) is written by the one model-file
writer, :func:`stormfold.modelfile.save_model`, which every engine's ``save_*`` calls.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pandas as pd


def write_history(folder: str | Path, records: list[dict], csv_name: str,
                  columns: Sequence[str] | None = None, float_format: str | None = None,
                  png_name: str | None = None,
                  plot: Callable[[object, pd.DataFrame], None] | None = None,
                  figsize: tuple[float, float] = (7.0, 3.6), dpi: int = 100) -> pd.DataFrame:
    """Write the training history as ``csv_name`` and, with ``plot``, as ``png_name``.

    Parameters
    ----------
    folder : path
        Model folder.
    records : list of dict
        One record per step (epoch, outer iteration …).
    csv_name : str
        CSV file name (written atomically; floats in full precision unless ``float_format``).
    columns : sequence of str, optional
        Columns written, in order (default: all, in the records' order).
    png_name, plot : optional
        ``plot(figure, history)`` draws the history into a fresh figure, saved as PNG.
    figsize, dpi
        Size of that figure.

    Returns
    -------
    DataFrame
        The history as written.
    """
    from stormfold.figures import new_figure, save_png
    from stormfold.io.atomic import atomic_path

    from stormfold.io.manifest import mark_incomplete

    folder = Path(folder)
    mark_incomplete(folder)  # the history of a complete model is about to change
    df = pd.DataFrame(records)
    if columns is not None:
        df = df.reindex(columns=list(columns))
    with atomic_path(folder / csv_name) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")
    if plot is not None and png_name is not None and not df.empty:
        fig = new_figure(*figsize, dpi=dpi, layout="tight")
        plot(fig, df)
        save_png(fig, folder / png_name)
    return df
