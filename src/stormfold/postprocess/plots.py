"""Figures of the post-processing steps: the drift trajectory and the FRC curve.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no global state)
and written atomically as PNG by :func:`save_figure`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd


def _figure(width_in: float = 7.0, height_in: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def drift_figure(drift: pd.DataFrame, points: Optional[pd.DataFrame] = None,
                 title: str = "drift"):
    """Drift trajectory dx, dy (nm) against frame, with the measured points.

    Parameters
    ----------
    drift : pandas.DataFrame
        ``frame``, ``dx_nm``, ``dy_nm`` per frame.
    points : pandas.DataFrame, optional
        The measurements behind it (RCC bins or fiducial frames), same columns.
    title : str
        Figure title.
    """
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(drift["frame"], drift["dx_nm"], color="tab:blue", lw=1.2, label="dx")
    ax.plot(drift["frame"], drift["dy_nm"], color="tab:orange", lw=1.2, label="dy")
    if points is not None and 0 < len(points) <= 500:
        ax.plot(points["frame"], points["dx_nm"], "o", color="tab:blue", ms=4)
        ax.plot(points["frame"], points["dy_nm"], "o", color="tab:orange", ms=4)
    ax.set_xlabel("frame")
    ax.set_ylabel("drift (nm)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def frc_figure(curve: pd.DataFrame, resolution_nm: Optional[float], threshold: float):
    """FRC curve (raw and smoothed) against spatial frequency, threshold and resolution."""
    fig = _figure()
    ax = fig.add_subplot()
    q_um = curve["q_per_nm"].to_numpy() * 1000.0
    ax.plot(q_um, curve["frc"], color="0.7", lw=0.8, label="FRC")
    ax.plot(q_um, curve["frc_smoothed"], color="tab:blue", lw=1.5, label="smoothed")
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    if resolution_nm is not None:
        ax.axvline(1000.0 / resolution_nm, color="k", ls=":", lw=1)
        title = f"FRC resolution {resolution_nm:.1f} nm"
    else:
        title = "FRC: threshold not crossed (resolution below 2 pixels)"
    ax.set_xlabel("spatial frequency (1/µm)")
    ax.set_ylabel("FRC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as PNG (atomically)."""
    from stormfold.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
