"""Figures of the post-processing steps: the drift trajectory and the FRC curve.

Used by the post-processing files (``drift.png``, ``frc.png``) and by the HTML report.
Figures come from :func:`stormfold.figures.new_figure` (no pyplot, no global state) and are
written atomically as PNG by :func:`save_figure`.
"""
from __future__ import annotations

from typing import Optional

import pandas as pd

from stormfold.figures import new_figure
from stormfold.figures import save_png as save_figure

__all__ = ["drift_figure", "frc_figure", "save_figure"]


def drift_figure(drift: pd.DataFrame, points: Optional[pd.DataFrame] = None,
                 title: str = "drift", true_drift: Optional[pd.DataFrame] = None,
                 size_in: tuple[float, float] = (7.0, 4.0)):
    """Drift trajectory dx, dy (nm) against frame (1-based), with the measured points.

    Parameters
    ----------
    drift : pandas.DataFrame
        ``frame`` (0-based), ``dx_nm``, ``dy_nm`` per frame.
    points : pandas.DataFrame, optional
        The measurements behind it (RCC bins or fiducial frames), same columns.
    title : str
        Figure title.
    true_drift : pandas.DataFrame, optional
        The true trajectory (same columns), drawn dashed.
    size_in : (width, height)
        Figure size in inches.
    """
    fig = new_figure(*size_in)
    ax = fig.add_subplot()
    ax.plot(drift["frame"] + 1, drift["dx_nm"], color="tab:blue", lw=1.2, label="dx")
    ax.plot(drift["frame"] + 1, drift["dy_nm"], color="tab:orange", lw=1.2, label="dy")
    if points is not None and 0 < len(points) <= 500:
        ax.plot(points["frame"] + 1, points["dx_nm"], "o", color="tab:blue", ms=4)
        ax.plot(points["frame"] + 1, points["dy_nm"], "o", color="tab:orange", ms=4)
    if true_drift is not None:
        for axis, color in (("x", "tab:blue"), ("y", "tab:orange")):
            ax.plot(true_drift["frame"] + 1, true_drift[f"d{axis}_nm"], ls="--", color=color,
                    lw=0.8, label=f"d{axis} (truth)")
    ax.set_xlabel("frame")
    ax.set_ylabel("drift (nm)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def frc_figure(curve: pd.DataFrame, resolution_nm: Optional[float], threshold: float,
               size_in: tuple[float, float] = (7.0, 4.0)):
    """FRC curve (raw and smoothed) against spatial frequency, threshold and resolution.

    ``curve`` has ``q_per_nm``, ``frc`` and ``frc_smoothed``.
    """
    fig = new_figure(*size_in)
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
