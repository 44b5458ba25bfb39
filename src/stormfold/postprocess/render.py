"""Rendering of localization tables as images (SPEC §8): histogram and Gaussian.

The image grid follows SPEC §1: pixel (r, c) of a rendering with pixel size p covers
x ∈ [origin_x + c·p, origin_x + (c+1)·p), y likewise along rows, so with the default
origin (0, 0) the image lines up with the camera field of view. Localizations outside
the grid are dropped. Pixel values are localizations per pixel (every localization has
mass 1), for both methods, so images of the same table at the same pixel size compare
directly.

* **histogram**: each localization adds 1 to the pixel that contains it.
* **gaussian**: each localization is a normalised 2-D Gaussian. It is computed without a
  loop over localizations: positions are spread onto the four nearest pixel centres
  (bilinear weights, which keep each localization's centre of mass exactly) and the image
  is blurred by a Gaussian in Fourier space, with σ reduced by the spread's mean variance
  (1/6 px² per axis). With a per-localization σ (``uncertainty_nm``) the localizations are
  grouped into σ bins spaced by a factor ``sigma_ratio`` (default 1.1: σ within ±5 % of
  the bin's geometric centre); each bin costs one FFT.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import pandas as pd
import scipy.fft

from stormfold.errors import UserError
from stormfold.io.metadata import check_pixel_size
from stormfold.table import check_length_nm, validate_table

METHODS = ("histogram", "gaussian")
#: Largest rendered image (pixels); beyond this the pixel size is refused as too small.
MAX_PIXELS = 400_000_000
_SPLAT_CHUNK = 2_000_000


@dataclass
class RenderParams:
    """Parameters of :func:`render` (the ``render`` section of a post-processing YAML).

    Attributes
    ----------
    pixel_nm : float
        Pixel size of the rendered image (nm).
    method : {"histogram", "gaussian"}
        Rendering method.
    sigma : {"fixed", "uncertainty"}
        Gaussian width: ``sigma_nm`` for every localization, or each one's
        ``uncertainty_nm``.
    sigma_nm : float
        Fixed Gaussian σ (nm).
    formats : list of {"tif", "png"}
        Files written by ``stormfold postprocess`` (``render.tif``, ``render.png``).
    """

    pixel_nm: float = 10.0
    method: Literal["histogram", "gaussian"] = "histogram"
    sigma: Literal["fixed", "uncertainty"] = "fixed"
    sigma_nm: float = 20.0
    formats: tuple[str, ...] = ("tif", "png")

    def validate(self) -> None:
        check_length_nm(self.pixel_nm, "render: pixel_nm")
        check_length_nm(self.sigma_nm, "render: sigma_nm")
        bad = [f for f in self.formats if f not in ("tif", "png")]
        if bad or not self.formats:
            raise UserError(f"render: formats must be a list of tif and/or png, got "
                            f"{list(self.formats)}")


def grid_shape(table: pd.DataFrame, pixel_nm: float,
               fov_nm: Optional[Sequence[float]] = None) -> tuple[int, int]:
    """``(rows, cols)`` of a rendering from (0, 0) to ``fov_nm`` = (width, height) in nm
    (default: just covering every localization)."""
    pixel_nm = _check_pixel(pixel_nm)
    if fov_nm is not None:
        if len(fov_nm) != 2:
            raise UserError(f"render field of view must be (width, height) in nm, got {fov_nm!r}")
        width = check_length_nm(fov_nm[0], "render field-of-view width")
        height = check_length_nm(fov_nm[1], "render field-of-view height")
    elif len(table):
        # Every localization inside, also one exactly at a multiple of the pixel (pixel c
        # covers [c, c + 1)·pixel_nm).
        width = (math.floor(max(float(table["x_nm"].max()), 0.0) / pixel_nm) + 1) * pixel_nm
        height = (math.floor(max(float(table["y_nm"].max()), 0.0) / pixel_nm) + 1) * pixel_nm
    else:
        width = height = pixel_nm
    cols = max(1, math.ceil(width / pixel_nm - 1e-9))
    rows = max(1, math.ceil(height / pixel_nm - 1e-9))
    if rows * cols > MAX_PIXELS:
        raise UserError(f"rendering {width:.0f} × {height:.0f} nm at {pixel_nm:g} nm would "
                        f"make a {cols} × {rows} image: choose a larger pixel size")
    if len(table) and max(rows, cols) < 4 and pixel_nm > max(width, height) / 4:
        # A pixel size in the wrong unit (µm given as nm × 1000) gives an image of one pixel.
        warnings.warn(f"rendering {width:.0f} × {height:.0f} nm at {pixel_nm:g} nm makes a "
                      f"{cols} × {rows} image: is the pixel size in nm?", UserWarning,
                      stacklevel=3)
    return rows, cols


#: Warn when more than this share of the localizations falls outside the rendered field.
OUTSIDE_WARN = 0.01


def _warn_outside(table: pd.DataFrame, pixel_nm: float, shape: tuple[int, int]) -> None:
    """One warning when the table is empty or has no localization inside the rendered field
    (the image is still written: an empty result, e.g. after a filter, is a result)."""
    if not len(table):
        warnings.warn(f"the table holds no localization: the {shape[1]} × {shape[0]} image is "
                      f"empty", UserWarning, stacklevel=3)
        return
    inside = int(count_inside(table, pixel_nm, shape))
    if not inside:
        warnings.warn(f"none of the {len(table)} localizations lies inside the rendered field "
                      f"(0–{shape[1] * pixel_nm:g} × 0–{shape[0] * pixel_nm:g} nm): the image is "
                      f"empty; check the pixel size and the field of view", UserWarning,
                      stacklevel=3)
    elif len(table) - inside > OUTSIDE_WARN * len(table):
        # Drift correction moves a few past the camera's field: recorded (n_rendered), and
        # said when they are more (review 18).
        warnings.warn(f"{len(table) - inside} of {len(table)} localizations lie outside the "
                      f"rendered field (0–{shape[1] * pixel_nm:g} × 0–{shape[0] * pixel_nm:g} "
                      f"nm) and are not drawn", UserWarning, stacklevel=3)


def count_inside(table: pd.DataFrame, pixel_nm: float, shape: tuple[int, int]) -> int:
    """Localizations inside a rendering of ``shape`` (rows, cols) pixels of ``pixel_nm``."""
    x, y = table["x_nm"].to_numpy(), table["y_nm"].to_numpy()
    return int(np.count_nonzero((x >= 0) & (x < shape[1] * pixel_nm) & (y >= 0)
                                & (y < shape[0] * pixel_nm)))


def _check_pixel(pixel_nm: float) -> float:
    return check_length_nm(pixel_nm, "render pixel size")


def histogram_2d(x_nm: np.ndarray, y_nm: np.ndarray, pixel_nm: float, shape: tuple[int, int],
                 origin_nm: tuple[float, float] = (0.0, 0.0),
                 weights: np.ndarray | None = None) -> np.ndarray:
    """2-D histogram of positions on a grid of ``shape`` with square pixels.

    Parameters
    ----------
    x_nm, y_nm : (n,) float
        Positions (nm).
    pixel_nm : float
        Pixel size (nm).
    shape : (rows, cols)
        Image size.
    origin_nm : (x0, y0)
        Position (nm) of the top-left corner of pixel (0, 0).
    weights : (n,) float, optional
        Mass of each position (default 1).

    Returns
    -------
    numpy.ndarray of float64, shape ``shape``
    """
    rows, cols = int(shape[0]), int(shape[1])
    c = np.floor((np.asarray(x_nm, np.float64) - origin_nm[0]) / pixel_nm)
    r = np.floor((np.asarray(y_nm, np.float64) - origin_nm[1]) / pixel_nm)
    inside = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
    index = r[inside].astype(np.int64) * cols + c[inside].astype(np.int64)
    w = None if weights is None else np.asarray(weights, np.float64)[inside]
    return np.bincount(index, weights=w, minlength=rows * cols).reshape(rows, cols).astype(
        np.float64, copy=False)


def splat_bilinear(x_nm: np.ndarray, y_nm: np.ndarray, pixel_nm: float,
                   shape: tuple[int, int], origin_nm: tuple[float, float] = (0.0, 0.0)
                   ) -> np.ndarray:
    """Spread unit masses onto the four nearest pixel centres (bilinear weights).

    Each position's centre of mass is kept exactly (away from the border), unlike the
    histogram, which moves it to its pixel centre.

    Returns
    -------
    numpy.ndarray of float64, shape ``shape``
    """
    rows, cols = int(shape[0]), int(shape[1])
    x_nm = np.asarray(x_nm, np.float64)
    y_nm = np.asarray(y_nm, np.float64)
    image = np.zeros(rows * cols)
    # Chunks bound the temporaries (four corners per position) for 10⁷ positions.
    for start in range(0, len(x_nm), _SPLAT_CHUNK):
        # Pixel-centre coordinates: centre of pixel c is at u = c.
        u = (x_nm[start:start + _SPLAT_CHUNK] - origin_nm[0]) / pixel_nm - 0.5
        v = (y_nm[start:start + _SPLAT_CHUNK] - origin_nm[1]) / pixel_nm - 0.5
        c0, r0 = np.floor(u), np.floor(v)
        fu, fv = u - c0, v - r0
        c0, r0 = c0.astype(np.int64), r0.astype(np.int64)
        index, weight = [], []
        for dr, dc, w in ((0, 0, (1 - fv) * (1 - fu)), (0, 1, (1 - fv) * fu),
                          (1, 0, fv * (1 - fu)), (1, 1, fv * fu)):
            r, c = r0 + dr, c0 + dc
            inside = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
            index.append(r[inside] * cols + c[inside])
            weight.append(w[inside])
        image += np.bincount(np.concatenate(index), weights=np.concatenate(weight),
                             minlength=rows * cols)
    return image.reshape(rows, cols)


def render_histogram(table: pd.DataFrame, pixel_nm: float,
                     fov_nm: Optional[Sequence[float]] = None) -> np.ndarray:
    """Histogram rendering: localizations per pixel.

    Parameters
    ----------
    table : pandas.DataFrame
        Localization table.
    pixel_nm : float
        Pixel size of the image (nm).
    fov_nm : (width, height), optional
        Field of view (nm) from the origin (default: up to the largest coordinate).

    Returns
    -------
    numpy.ndarray of float32, shape (rows, cols)
    """
    table = validate_table(table)
    shape = grid_shape(table, pixel_nm, fov_nm)
    _warn_outside(table, pixel_nm, shape)
    image = histogram_2d(table["x_nm"].to_numpy(), table["y_nm"].to_numpy(), pixel_nm, shape)
    return image.astype(np.float32)


def render_gaussian(table: pd.DataFrame, pixel_nm: float, sigma_nm: float | str = 20.0,
                    fov_nm: Optional[Sequence[float]] = None, sigma_ratio: float = 1.1
                    ) -> np.ndarray:
    """Gaussian rendering: each localization a normalised Gaussian (mass 1).

    Parameters
    ----------
    table : pandas.DataFrame
        Localization table.
    pixel_nm : float
        Pixel size of the image (nm).
    sigma_nm : float or "uncertainty"
        Fixed σ (nm), or ``"uncertainty"`` for each localization's ``uncertainty_nm``.
    fov_nm : (width, height), optional
        Field of view (nm) from the origin (default: up to the largest coordinate).
    sigma_ratio : float
        Spacing factor of the σ bins for per-localization σ (> 1).

    Returns
    -------
    numpy.ndarray of float32, shape (rows, cols)

    Notes
    -----
    Each σ bin is spread bilinearly onto a zero-padded grid and Fourier transformed;
    the transforms are multiplied by the Gaussian transfer function
    exp(−2π²σ_eff²|f|²), σ_eff² = σ² − 1/6 px² (the bilinear spread's mean variance),
    summed, and transformed back once. The padding (4 σ) keeps the circular convolution
    from wrapping around.
    """
    table = validate_table(table)
    pixel_nm = _check_pixel(pixel_nm)
    shape = grid_shape(table, pixel_nm, fov_nm)
    _warn_outside(table, pixel_nm, shape)
    x = table["x_nm"].to_numpy()
    y = table["y_nm"].to_numpy()
    if isinstance(sigma_nm, str):
        if sigma_nm != "uncertainty":
            raise UserError(f"sigma must be a number of nm or 'uncertainty', got {sigma_nm!r}")
        sigma = _uncertainty(table)
    else:
        sigma = np.full(len(table), check_length_nm(sigma_nm, "Gaussian rendering σ"))
    if not sigma_ratio > 1:
        raise ValueError(f"sigma_ratio must be > 1, got {sigma_ratio}")
    if not len(table):
        return np.zeros(shape, np.float32)
    log_ratio = math.log(sigma_ratio)
    group = np.floor(np.log(sigma / pixel_nm) / log_ratio).astype(np.int64)
    if isinstance(sigma_nm, str):
        centres = {int(k): math.exp((k + 0.5) * log_ratio) for k in np.unique(group)}
    else:  # one exact σ
        group[:] = 0
        centres = {0: float(sigma_nm) / pixel_nm}
    pad = int(math.ceil(4 * max(centres.values()))) + 1
    if (shape[0] + 2 * pad) * (shape[1] + 2 * pad) > MAX_PIXELS:
        raise UserError(f"Gaussian rendering with σ up to {max(centres.values()) * pixel_nm:g} nm "
                        f"at {pixel_nm:g} nm per pixel needs a {shape[1] + 2 * pad} × "
                        f"{shape[0] + 2 * pad} image (a 4 σ margin): choose a smaller σ or a "
                        f"larger pixel size")
    rows = scipy.fft.next_fast_len(shape[0] + 2 * pad, real=True)
    cols = scipy.fft.next_fast_len(shape[1] + 2 * pad, real=True)
    origin = (-pad * pixel_nm, -pad * pixel_nm)
    fy2 = (scipy.fft.fftfreq(rows) ** 2).astype(np.float32)
    fx2 = (scipy.fft.rfftfreq(cols) ** 2).astype(np.float32)
    spectrum = np.zeros((rows, cols // 2 + 1), np.complex64)
    if len(centres) == 1:  # no need to sort or copy
        batches = [(next(iter(centres.values())), x, y)]
    else:
        order = np.argsort(group, kind="stable")
        edges = np.flatnonzero(np.diff(group[order])) + 1
        batches = ((centres[int(group[m[0]])], x[m], y[m]) for m in np.split(order, edges))
    for sigma_px, bx, by in batches:
        variance = max(sigma_px ** 2 - 1.0 / 6.0, 0.0)
        splat = splat_bilinear(bx, by, pixel_nm, (rows, cols), origin)
        transfer_y = np.exp(-2 * np.pi ** 2 * variance * fy2)
        transfer_x = np.exp(-2 * np.pi ** 2 * variance * fx2)
        spectrum += scipy.fft.rfft2(splat.astype(np.float32), workers=-1) \
            * transfer_y[:, None] * transfer_x[None, :]
        del splat
    image = scipy.fft.irfft2(spectrum, s=(rows, cols), workers=-1)[pad:pad + shape[0],
                                                                    pad:pad + shape[1]]
    # Round-off leaves tiny negative values where there is nothing.
    return np.maximum(image, 0).astype(np.float32)


def _uncertainty(table: pd.DataFrame) -> np.ndarray:
    if "uncertainty_nm" not in table.columns:
        raise UserError("--sigma uncertainty needs an uncertainty_nm column "
                        "(\"uncertainty [nm]\"): use --sigma-nm instead")
    sigma = pd.to_numeric(table["uncertainty_nm"], errors="coerce").to_numpy(np.float64)
    bad = ~(np.isfinite(sigma) & (sigma > 0))
    if bad.any():
        raise UserError(f"uncertainty_nm has {int(bad.sum())} missing or non-positive "
                        f"values: filter them out or use --sigma-nm")
    return sigma


def render(table: pd.DataFrame, pixel_nm: float = 10.0, method: str = "histogram",
           sigma_nm: float | str = 20.0, fov_nm: Optional[Sequence[float]] = None) -> np.ndarray:
    """Render a localization table with ``method`` (see :func:`render_histogram`,
    :func:`render_gaussian`); returns float32 localizations per pixel."""
    pixel_nm = check_pixel_size(pixel_nm, "render pixel_nm")
    if method == "histogram":
        return render_histogram(table, pixel_nm, fov_nm)
    if method == "gaussian":
        return render_gaussian(table, pixel_nm, sigma_nm, fov_nm)
    raise UserError(f"unknown rendering method {method!r}: choose one of {', '.join(METHODS)}")


# --------------------------------------------------------------------------- files
def write_png(path: str | Path, image: np.ndarray, pixel_nm: float,
              saturation_percentile: float = 99.5, cmap: str = "inferno") -> Path:
    """Write an image as PNG (one image pixel per PNG pixel) with a scale bar.

    Parameters
    ----------
    path : str or Path
        Output file.
    image : (rows, cols) array
        Rendered image.
    pixel_nm : float
        Its pixel size (nm), for the scale bar.
    saturation_percentile : float
        Display range 0 … this percentile of the non-zero pixels.
    cmap : str
        Matplotlib colour map.
    """
    from stormfold.figures import add_scale_bar, new_figure, save_png

    image = np.asarray(image, np.float32)
    rows, cols = image.shape
    positive = image[image > 0]
    vmax = float(np.percentile(positive, saturation_percentile)) if positive.size else 1.0
    dpi = 100
    fig = new_figure(cols / dpi, rows / dpi, dpi=dpi, layout=None)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image, cmap=cmap, vmin=0, vmax=max(vmax, 1e-12), interpolation="nearest")
    ax.set_axis_off()
    add_scale_bar(ax, pixel_nm, cols, rows, font_pt=float(np.clip(0.035 * rows * 72 / dpi, 4, 28)))
    return save_png(fig, path, dpi=dpi)


def write_image(path: str | Path, image: np.ndarray, pixel_nm: float,
                metadata: dict | None = None) -> Path:
    """Write a rendering as TIFF (``.tif``/``.tiff``: float32, pixel size in the tags,
    ``metadata`` as JSON) or PNG (``.png``: colour map and scale bar)."""
    from stormfold.io.tiff import write_tiff

    suffix = Path(path).suffix.lower()
    if suffix in (".tif", ".tiff"):
        return write_tiff(path, np.asarray(image, np.float32), pixel_size_nm=pixel_nm,
                          metadata=metadata)
    if suffix == ".png":
        return write_png(path, image, pixel_nm)
    raise UserError(f"{path}: unknown image format {suffix or '(none)'!r} (use .tif or .png)")
