"""Localizations from sparse fine-grid reconstructions: thresholded connected components.

Used by the unrolled engine (SPEC §5): the fine pixels with a value ≥ ``threshold`` (and
> 0) are detections; 8-connected (or 4-connected) groups of them within one frame are
merged into one localization at the intensity-weighted centroid of the group. With
``merge=False`` every detected pixel is a localization at its centre. Vectorised over a
whole batch of frames: one :func:`scipy.ndimage.label` call with a structuring element
that never connects different frames, then weighted sums with :func:`numpy.bincount`.

Positions follow SPEC §1: fine pixel (r, c) has its centre at ((c + 0.5)·fine_px,
(r + 0.5)·fine_px) nm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from stormfold.errors import UserError
from stormfold.table import make_table


@dataclass
class Components:
    """Connected groups of detected pixels in a batch of images (arrays of length n).

    Attributes
    ----------
    index : int64
        Image (frame) index in the batch.
    y_px, x_px : float64
        Intensity-weighted centroid in fine pixels, origin at the top-left corner of fine
        pixel (0, 0) (a single pixel (r, c) gives (r + 0.5, c + 0.5)).
    total : float64
        Sum of the image over the group (photons when the image is in photons).
    peak : float64
        Largest value in the group.
    size : int64
        Number of pixels in the group.
    """

    index: np.ndarray
    y_px: np.ndarray
    x_px: np.ndarray
    total: np.ndarray
    peak: np.ndarray
    size: np.ndarray

    def __len__(self) -> int:
        return int(self.index.size)


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (4, 8):
        raise UserError(f"connectivity must be 4 or 8, got {connectivity}")
    plane = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = plane  # no connection across the frame axis
    return structure


def find_components(images: np.ndarray, threshold: float, connectivity: int = 8,
                    merge: bool = True) -> Components:
    """Detected pixels (≥ ``threshold`` and > 0) grouped into connected components.

    Parameters
    ----------
    images : ndarray, shape (B, H, W) or (H, W)
        Non-negative fine-grid images.
    threshold : float
        Detection threshold, in image units (inclusive).
    connectivity : {8, 4}
        Pixel neighbourhood that joins detected pixels into one group.
    merge : bool
        Merge each group into its centroid; otherwise every detected pixel is its own group.

    Returns
    -------
    Components
        Sorted by image index, then by the group's first pixel in row-major order.
    """
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise UserError(f"expected images of shape (B, H, W), got {images.shape}")
    mask = (images >= threshold) & (images > 0)
    if merge:
        labels, n = ndimage.label(mask, structure=_structure(connectivity))
        flat = np.flatnonzero(labels)
        lab = labels.ravel()[flat] - 1
    else:
        flat = np.flatnonzero(mask)
        n = flat.size
        lab = np.arange(n)
    f, r, c = np.unravel_index(flat, images.shape)
    w = images.ravel()[flat].astype(np.float64)
    total = np.bincount(lab, weights=w, minlength=n)
    size = np.bincount(lab, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        y_px = np.bincount(lab, weights=w * r, minlength=n) / total + 0.5
        x_px = np.bincount(lab, weights=w * c, minlength=n) / total + 0.5
    peak = np.zeros(n)
    np.maximum.at(peak, lab, w)
    index = np.zeros(n, dtype=np.int64)
    index[lab] = f  # every pixel of a group is in the same image
    return Components(index, y_px, x_px, total, peak, size.astype(np.int64))


def components_to_table(comp: Components, first_frame: int, fine_pixel_nm: float) -> pd.DataFrame:
    """Localization table of components: ``frame`` (absolute), ``x_nm``, ``y_nm``,
    ``photons`` (group sum) and ``confidence`` (group peak), both in image units."""
    return make_table(comp.index + int(first_frame), comp.x_px * fine_pixel_nm,
                      comp.y_px * fine_pixel_nm, photons=comp.total, confidence=comp.peak)
