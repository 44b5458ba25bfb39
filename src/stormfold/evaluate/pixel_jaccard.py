"""Paper-style pixel Jaccard index on the fine (super-resolution) grid (SPEC §7).

Used by the unrolled-method experiments (Bonettini et al.): the reconstruction is an
image on the fine grid and the ground truth is the fine image of emitter positions.
A reconstructed pixel (value > ``threshold``) is a true positive when it lies within
``radius`` fine pixels of a ground-truth pixel that is not matched yet; matching is
one-to-one and greedy, closest pairs first (ties: lower ground-truth pixel, then lower
reconstructed pixel, in row-major order). Unmatched reconstructed pixels are false
positives, unmatched ground-truth pixels false negatives, and
Jaccard = TP / (TP + FP + FN).

Every non-zero ground-truth pixel counts once, however many emitters fall in it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stormfold.errors import UserError
from stormfold.evaluate.matching import candidate_pairs, greedy_pairs


@dataclass(frozen=True)
class PixelJaccard:
    """Result of :func:`pixel_jaccard`.

    Attributes
    ----------
    tp, fp, fn : int
        Totals over all images.
    jaccard : float
        TP / (TP + FP + FN) of the totals (NaN when both images are empty).
    tp_per_image, fp_per_image, fn_per_image : numpy.ndarray of int64
        The same counts per image (length 1 for a single 2D image).
    """

    tp: int
    fp: int
    fn: int
    jaccard: float
    tp_per_image: np.ndarray
    fp_per_image: np.ndarray
    fn_per_image: np.ndarray

    @property
    def jaccard_per_image(self) -> np.ndarray:
        """Jaccard index of each image (NaN for an image with no pixel on either side)."""
        den = (self.tp_per_image + self.fp_per_image + self.fn_per_image).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, self.tp_per_image / np.where(den > 0, den, 1), np.nan)


def _truth_pixels(truth: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Ground-truth pixel coordinates ``(image, row, col)`` from an image or coordinates."""
    truth = np.asarray(truth)
    if truth.shape == shape:
        coords = np.argwhere(truth != 0)
    elif truth.ndim == 2 and truth.shape[1] == len(shape) and (
            truth.size == 0 or np.issubdtype(truth.dtype, np.integer)):
        coords = truth.astype(np.int64).reshape(-1, len(shape))
        if len(coords) and (np.any(coords < 0) or np.any(coords >= np.asarray(shape))):
            raise UserError(f"pixel_jaccard: ground-truth coordinates outside the image "
                            f"of shape {shape}")
        coords = np.unique(coords, axis=0) if len(coords) else coords
    else:
        raise UserError(f"pixel_jaccard: ground truth must be an image of shape {shape} or "
                        f"integer pixel coordinates of shape (K, {len(shape)}), "
                        f"got shape {truth.shape}")
    if len(shape) == 2:
        coords = np.column_stack([np.zeros(len(coords), np.int64), coords])
    return coords.astype(np.int64).reshape(-1, 3)


def pixel_jaccard(reconstruction: np.ndarray, truth: np.ndarray, radius: float = 1.0,
                  threshold: float = 0.0) -> PixelJaccard:
    """Pixel Jaccard index of a fine-grid reconstruction against the ground truth.

    Parameters
    ----------
    reconstruction : numpy.ndarray, shape (H, W) or (N, H, W)
        Non-negative reconstructed image(s) or binary mask(s) on the fine grid. Pixels
        with a value > ``threshold`` are detections.
    truth : numpy.ndarray
        Either the ground-truth fine image(s), same shape as ``reconstruction``
        (non-zero pixels are emitters), or integer pixel coordinates of shape
        (K, 2) = (row, col) for a single image or (K, 3) = (image, row, col) for a
        batch (duplicates count once).
    radius : float
        Largest distance between a detected and a ground-truth pixel, in fine pixels
        (inclusive: 0 requires the same pixel, 1 allows the 4 neighbours, √2 the 8).
    threshold : float
        Detection threshold on the reconstruction (strict ``>``), in image units.

    Returns
    -------
    PixelJaccard
        Totals, per-image counts and the Jaccard index.

    Raises
    ------
    UserError
        When shapes do not fit or ``radius`` is negative.
    """
    recon = np.asarray(reconstruction)
    if recon.ndim not in (2, 3):
        raise UserError(f"pixel_jaccard: reconstruction must be 2D (H, W) or 3D (N, H, W), "
                        f"got shape {recon.shape}")
    try:
        radius = float(radius)
    except (TypeError, ValueError):
        raise UserError(f"pixel_jaccard: radius must be a number, got {radius!r}") from None
    if not np.isfinite(radius) or radius < 0:
        raise UserError(f"pixel_jaccard: radius must be ≥ 0, got {radius!r}")
    n_images = 1 if recon.ndim == 2 else recon.shape[0]
    det = np.argwhere(recon > threshold)
    if recon.ndim == 2:
        det = np.column_stack([np.zeros(len(det), np.int64), det])
    det = det.astype(np.int64).reshape(-1, 3)
    gt = _truth_pixels(truth, recon.shape)

    def fxy(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return c[:, 0], c[:, 2].astype(np.float64), c[:, 1].astype(np.float64)

    ti, li, d = candidate_pairs(fxy(gt), fxy(det), radius)
    sel = greedy_pairs(ti, li, d, len(gt), len(det))
    tp_i = np.bincount(gt[ti[sel], 0], minlength=n_images)
    n_gt = np.bincount(gt[:, 0], minlength=n_images)
    n_det = np.bincount(det[:, 0], minlength=n_images)
    tp, fp, fn = int(tp_i.sum()), int(len(det) - len(sel)), int(len(gt) - len(sel))
    den = tp + fp + fn
    return PixelJaccard(tp=tp, fp=fp, fn=fn, jaccard=tp / den if den else float("nan"),
                        tp_per_image=tp_i.astype(np.int64),
                        fp_per_image=(n_det - tp_i).astype(np.int64),
                        fn_per_image=(n_gt - tp_i).astype(np.int64))
