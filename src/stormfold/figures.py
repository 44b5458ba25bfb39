"""Figure helpers shared by every module that draws: a figure without global state, PNG
output (file or data URI), and the scale bar.

Figures are :class:`matplotlib.figure.Figure` objects with an Agg canvas (no pyplot, so no
global figure registry and no backend switching).
"""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path


def new_figure(width_in: float = 7.0, height_in: float = 4.0, dpi: int = 100,
               layout: str | None = "constrained"):
    """A matplotlib Figure with its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path, dpi: float | None = None) -> Path:
    """Write a figure as PNG (atomically)."""
    from stormfold.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def png_data_uri(fig, dpi: float = 110) -> str:
    """A figure as a ``data:image/png;base64,…`` URI (for self-contained HTML)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def scale_bar_nm(width_nm: float) -> float:
    """A round scale-bar length (1, 2 or 5 × 10^k nm) of at most a fifth of ``width_nm``."""
    target = max(width_nm / 5.0, 1e-9)
    power = 10.0 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target)


def length_label(nm: float) -> str:
    """``500 nm``, ``2 µm``."""
    return f"{nm / 1000:g} µm" if nm >= 1000 else f"{nm:g} nm"


def add_scale_bar(ax, pixel_nm: float, width_px: int, height_px: int,
                  font_pt: float = 8.0) -> None:
    """A white scale bar in the lower right corner of an image axis (one unit = one pixel)."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    bar_nm = scale_bar_nm(width_px * pixel_nm)
    ax.add_artist(AnchoredSizeBar(ax.transData, bar_nm / pixel_nm, length_label(bar_nm),
                                  "lower right", pad=0.4, color="white", frameon=False,
                                  size_vertical=max(height_px / 120, 0.5),
                                  fontproperties={"size": font_pt}))
