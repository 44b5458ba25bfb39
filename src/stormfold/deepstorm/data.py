"""Training data of Deep-STORM: patches of camera frames and their target spike maps (SPEC §4).

Patches of ``patch_px`` × ``patch_px`` camera pixels are drawn at random positions of random
frames; a patch with fewer than ``min_emitters`` emitters inside it is rejected. A patch
keeps its camera-resolution image (photons) and the positions of the emitters inside it;
network inputs (×L pixel replication) and targets are built batch by batch, so memory stays
small for tens of thousands of patches.

Targets: each emitter adds 1 to the fine pixel that *contains* it,
``(floor(y·L/px), floor(x·L/px))`` (0-based; the original MATLAB generator placed it one
fine pixel early), the spike map is blurred by the normalised 7×7 Gaussian of σ = 1 fine
pixel and multiplied by ``target_scale``. Positions are decoded at fine-pixel centres
(+0.5), so the placement has no systematic bias.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from stormfold.deepstorm.loss import blur, gaussian_kernel_2d
from stormfold.errors import UserError
from stormfold.physics.geometry import fine_pixel_index

#: Candidate draws per needed patch before giving up on the min_emitters rule.
MAX_DRAWS_PER_PATCH = 200


@dataclass
class PatchSet:
    """Patches of camera frames with the emitters inside each.

    Attributes
    ----------
    images : (n, patch_px, patch_px) float32
        Photons per camera pixel.
    origin : (n, 3) int64
        (frame, row, col) of each patch's top-left camera pixel in the source movie.
    emitter_patch : (m,) int64
        Patch index of each emitter, sorted.
    emitter_fine : (m, 2) int64
        (row, col) of the fine pixel containing each emitter, relative to its patch, for
        ``upsampling`` L.
    emitter_xy_nm : (m, 2) float64
        (x, y) of each emitter in nm relative to its patch's top-left corner.
    upsampling : int
        Fine-grid factor L of ``emitter_fine``.
    """

    images: np.ndarray
    origin: np.ndarray
    emitter_patch: np.ndarray
    emitter_fine: np.ndarray
    emitter_xy_nm: np.ndarray
    upsampling: int

    def __len__(self) -> int:
        return len(self.images)

    @property
    def patch_px(self) -> int:
        return int(self.images.shape[-1])

    def counts(self) -> np.ndarray:
        """Emitters per patch."""
        return np.bincount(self.emitter_patch, minlength=len(self))

    def subset(self, index: np.ndarray) -> "PatchSet":
        """Patches ``index`` (in that order), with their emitters renumbered."""
        index = np.asarray(index, dtype=np.int64)
        new_of_old = np.full(len(self), -1, dtype=np.int64)
        new_of_old[index] = np.arange(len(index))
        keep = new_of_old[self.emitter_patch] >= 0
        patch = new_of_old[self.emitter_patch[keep]]
        order = np.argsort(patch, kind="stable")
        return PatchSet(self.images[index], self.origin[index], patch[order],
                        self.emitter_fine[keep][order], self.emitter_xy_nm[keep][order],
                        self.upsampling)

    def fingerprint(self) -> str:
        """SHA-1 of the patch data (to check that a resumed run sees the same data)."""
        h = hashlib.sha1()
        for arr in (self.images, self.origin, self.emitter_patch, self.emitter_fine):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def truth_table(self, pixel_size_nm: float) -> pd.DataFrame:
        """Emitters as a localization table with one 'frame' per patch (patch coordinates)."""
        from stormfold.table import make_table

        return make_table(self.emitter_patch, self.emitter_xy_nm[:, 0], self.emitter_xy_nm[:, 1])


def _window_counts(frames: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                   shape: tuple[int, int, int], patch_px: int) -> np.ndarray:
    """Emitters in every patch_px × patch_px window: (n_frames, rows−P+1, cols−P+1) int64.

    Computed with an integral image of the per-pixel emitter counts.
    """
    n_frames, n_rows, n_cols = shape
    hist = np.zeros(shape, dtype=np.int64)
    np.add.at(hist, (frames, rows, cols), 1)
    integral = np.zeros((n_frames, n_rows + 1, n_cols + 1), dtype=np.int64)
    integral[:, 1:, 1:] = hist.cumsum(1).cumsum(2)
    p = patch_px
    return (integral[:, p:, p:] - integral[:, :-p, p:] - integral[:, p:, :-p]
            + integral[:, :-p, :-p])


def extract_patches(photons: np.ndarray, truth: pd.DataFrame, pixel_size_nm: float,
                    n_patches: int, patch_px: int = 26, min_emitters: int = 7,
                    upsampling: int = 8, seed: int = 0) -> PatchSet:
    """Draw ``n_patches`` random patches with at least ``min_emitters`` emitters each.

    Parameters
    ----------
    photons : (n_frames, rows, cols) float
        Frames in photons (camera model already inverted).
    truth : DataFrame
        Ground truth (0-based ``frame``, ``x_nm``, ``y_nm``) of the frames.
    pixel_size_nm : float
        Camera pixel size.
    n_patches : int
        Patches to draw (uniformly over frames and positions, rejection of sparse ones).
    patch_px : int
        Patch side in camera pixels (26 → 208 fine pixels at L = 8); patch_px·L must be a
        multiple of 8.
    min_emitters : int
        Patches with fewer emitters inside are rejected.
    upsampling : int
        Fine-grid factor L for the targets.
    seed : int
        Seed of the draws.
    """
    photons = np.asarray(photons)
    if photons.ndim != 3:
        raise UserError(f"training frames must be (n_frames, rows, cols), got shape "
                        f"{photons.shape}")
    n_frames, n_rows, n_cols = photons.shape
    if patch_px < 1 or (patch_px * upsampling) % 8:
        raise UserError(f"patches.patch_px × upsampling ({patch_px}×{upsampling}) must be a "
                        f"positive multiple of 8")
    if n_rows < patch_px or n_cols < patch_px:
        raise UserError(f"training frames of {n_rows}×{n_cols} px are smaller than the "
                        f"{patch_px}×{patch_px} px patches (patches.patch_px)")
    if n_patches < 1:
        raise UserError(f"number of patches must be ≥ 1, got {n_patches}")
    frame = truth["frame"].to_numpy().astype(np.int64)
    x_nm = truth["x_nm"].to_numpy(dtype=np.float64)
    y_nm = truth["y_nm"].to_numpy(dtype=np.float64)
    if len(frame) and (frame.min() < 0 or frame.max() >= n_frames):
        raise UserError(f"ground truth has frames outside the movie's {n_frames} frames "
                        f"(truth frames {frame.min() + 1}–{frame.max() + 1}, 1-based)")
    # Camera pixels derived from the fine pixels, so both roundings always agree.
    fine_row = fine_pixel_index(y_nm, pixel_size_nm, upsampling)
    fine_col = fine_pixel_index(x_nm, pixel_size_nm, upsampling)
    row, col = fine_row // upsampling, fine_col // upsampling
    inside = (row >= 0) & (row < n_rows) & (col >= 0) & (col < n_cols)
    frame, x_nm, y_nm, row, col, fine_row, fine_col = (
        a[inside] for a in (frame, x_nm, y_nm, row, col, fine_row, fine_col))
    counts = _window_counts(frame, row, col, photons.shape, patch_px)
    eligible = counts >= min_emitters
    if not eligible.any():
        raise UserError(f"no {patch_px}×{patch_px} px patch of the training frames holds "
                        f"≥ {min_emitters} emitters: raise the emitter density or lower "
                        f"patches.min_emitters")
    rng = np.random.default_rng([seed, 0xDA7A])
    draws = []
    n_accepted = 0
    n_drawn = 0
    batch = max(1024, 4 * n_patches)
    # Rejection sampling as in the original (uniform frame and position, reject sparse ones),
    # vectorised in batches of candidates.
    while n_accepted < n_patches and n_drawn < MAX_DRAWS_PER_PATCH * n_patches:
        f = rng.integers(0, n_frames, batch)
        r = rng.integers(0, n_rows - patch_px + 1, batch)
        c = rng.integers(0, n_cols - patch_px + 1, batch)
        ok = eligible[f, r, c]
        draws.append(np.stack([f[ok], r[ok], c[ok]], axis=1))
        n_accepted += int(ok.sum())
        n_drawn += batch
    origin = np.concatenate(draws)[:n_patches]
    if len(origin) < n_patches:
        raise UserError(f"only {len(origin)} of {n_patches} random patches had ≥ {min_emitters} "
                        f"emitters: lower patches.min_emitters or use denser training data")
    # Emitters of each patch: pair every patch with its frame's emitters, keep those inside.
    order = np.argsort(frame, kind="stable")
    frame, x_nm, y_nm, row, col, fine_row, fine_col = (
        a[order] for a in (frame, x_nm, y_nm, row, col, fine_row, fine_col))
    starts = np.searchsorted(frame, np.arange(n_frames))
    ends = np.searchsorted(frame, np.arange(n_frames), side="right")
    per_patch = ends[origin[:, 0]] - starts[origin[:, 0]]
    patch_of_pair = np.repeat(np.arange(n_patches), per_patch)
    offsets = np.arange(per_patch.sum()) - np.repeat(np.cumsum(per_patch) - per_patch, per_patch)
    emitter = starts[origin[patch_of_pair, 0]] + offsets
    r0, c0 = origin[patch_of_pair, 1], origin[patch_of_pair, 2]
    keep = ((row[emitter] >= r0) & (row[emitter] < r0 + patch_px)
            & (col[emitter] >= c0) & (col[emitter] < c0 + patch_px))
    emitter, patch_of_pair, r0, c0 = emitter[keep], patch_of_pair[keep], r0[keep], c0[keep]
    fine_r = fine_row[emitter] - r0 * upsampling
    fine_c = fine_col[emitter] - c0 * upsampling
    xy = np.stack([x_nm[emitter] - c0 * pixel_size_nm, y_nm[emitter] - r0 * pixel_size_nm], axis=1)
    f, r, c = origin.T
    images = photons[f[:, None, None], r[:, None, None] + np.arange(patch_px)[None, :, None],
                     c[:, None, None] + np.arange(patch_px)[None, None, :]].astype(np.float32)
    return PatchSet(images, origin, patch_of_pair, np.stack([fine_r, fine_c], axis=1), xy,
                    upsampling)


def spike_maps(n_maps: int, size_fine: tuple[int, int], index: torch.Tensor,
               fine_rc: torch.Tensor) -> torch.Tensor:
    """(n_maps, rows, cols) float32 maps with +1 at each (index, row, col); repeats add up."""
    maps = torch.zeros((n_maps, *size_fine), dtype=torch.float32, device=fine_rc.device)
    if index.numel():
        ones = torch.ones(index.numel(), dtype=torch.float32, device=fine_rc.device)
        maps.index_put_((index, fine_rc[:, 0], fine_rc[:, 1]), ones, accumulate=True)
    return maps


def target_maps(n_maps: int, size_fine: tuple[int, int], index: torch.Tensor,
                fine_rc: torch.Tensor, target_scale: float) -> torch.Tensor:
    """Targets: spikes blurred by the normalised 7×7 Gaussian (σ = 1 fine px) × target_scale."""
    kernel = gaussian_kernel_2d().to(fine_rc.device)
    return blur(spike_maps(n_maps, size_fine, index, fine_rc), kernel) * float(target_scale)


def batch_targets(patches: PatchSet, index: np.ndarray, target_scale: float,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(len(index), 1, P·L, P·L) target maps of patches ``index``."""
    index = np.asarray(index, dtype=np.int64)
    lo = np.searchsorted(patches.emitter_patch, index)
    hi = np.searchsorted(patches.emitter_patch, index, side="right")
    n = hi - lo
    which = np.repeat(np.arange(len(index)), n)
    rows = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(n.sum())
    size = patches.patch_px * patches.upsampling
    fine = torch.from_numpy(patches.emitter_fine[rows]).to(device)
    return target_maps(len(index), (size, size), torch.from_numpy(which).to(device), fine,
                       target_scale)[:, None]
