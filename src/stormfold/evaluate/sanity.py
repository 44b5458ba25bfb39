"""Do a truth and a localization table describe the same movie in the same units?

Scoring against a truth is unforgiving of conventions: localizations written with 1-based
frames and read as 0-based score a Jaccard index near 0, positions in pixels or µm score 0,
and a truth that spans more frames than were localized counts every emitter of the other
frames as missed (review 18). None of these is an error the matching can see, so
:func:`input_warnings` looks for each from outside and returns one line per suspicion:

* **frame offset** — on up to :data:`SAMPLE_FRAMES` frames of the truth, the pairs found
  within :data:`SHIFT_TOLERANCE_NM` with the localizations' frames shifted by −1, 0 and +1.
  A correct table pairs best unshifted (emitters ON over several frames pair at ±1 too, but
  fewer); a shift that finds :data:`SHIFT_GAIN` × as many pairs, and at least
  :data:`SHIFT_MIN_PAIRS`, is named;
* **units** — the central 98 % extents of x and y of the two tables; a ratio above
  :data:`EXTENT_RATIO` names both extents;
* **frames beyond the localizations** (only when no frame range was given) — truth rows in
  frames before the first or after the last frame holding a localization, when they are at
  least :data:`OUTSIDE_SHARE` of the truth and span two frames or more.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from stormfold.evaluate.matching import candidate_pairs, match_arrays, table_arrays

SAMPLE_FRAMES = 200
SHIFT_TOLERANCE_NM = 100.0
SHIFT_GAIN = 1.3
SHIFT_MIN_PAIRS = 10
EXTENT_RATIO = 5.0
OUTSIDE_SHARE = 0.05


def input_warnings(truth: pd.DataFrame, locs: pd.DataFrame,
                   frames_given: bool = False) -> list[str]:
    """One line per suspected mismatch of ``truth`` and ``locs`` (see the module docstring).

    Parameters
    ----------
    truth, locs : pandas.DataFrame
        Tables with ``frame`` (0-based), ``x_nm`` and ``y_nm``.
    frames_given : bool
        The frames to score were chosen (``--frames`` or a run record): the frame-extent
        test is then left out.

    Returns
    -------
    list of str
    """
    t = table_arrays(truth, "ground truth")
    l = table_arrays(locs, "localizations")
    if len(t[0]) == 0 or len(l[0]) == 0:
        return []
    said = [line for line in (_frame_offset(t, l), _units(t, l)) if line]
    if not frames_given:
        line = _outside_frames(t[0], l[0])
        if line:
            said.append(line)
    return said


def _frame_offset(t, l) -> str | None:
    frames = np.unique(t[0])
    if frames.size > SAMPLE_FRAMES:
        frames = frames[np.linspace(0, frames.size - 1, SAMPLE_FRAMES).astype(int)]
    sample = np.isin(t[0], frames)
    ts = tuple(a[sample] for a in t)
    near = np.isin(l[0], np.concatenate([frames - 1, frames, frames + 1]))
    ls = tuple(a[near] for a in l)
    pairs = {}
    for shift in (-1, 0, 1):
        moved = (ls[0] + shift, ls[1], ls[2])
        candidates = candidate_pairs(ts, moved, SHIFT_TOLERANCE_NM)
        pairs[shift] = match_arrays(ts, moved, SHIFT_TOLERANCE_NM, "greedy",
                                    candidates=candidates).truth_index.size
    best = max((-1, 1), key=lambda s: pairs[s])
    if pairs[best] >= SHIFT_MIN_PAIRS and pairs[best] >= SHIFT_GAIN * pairs[0]:
        return (f"the localizations pair with the truth far better with their frame numbers "
                f"shifted by {best:+d} ({pairs[best]} pairs within "
                f"{SHIFT_TOLERANCE_NM:g} nm against {pairs[0]}, on {frames.size} frames): "
                f"is one table numbered from 1 and the other from 0? (ThunderSTORM CSV is "
                f"1-based, Picasso HDF5 0-based; a CSV's base can be given with --frame-base "
                f"in convert)")
    return None


def _extent(x: np.ndarray) -> float:
    low, high = np.percentile(x, [1, 99])
    return float(high - low)


def _units(t, l) -> str | None:
    truth_nm, locs_nm = (max(_extent(a[1]), _extent(a[2])) for a in (t, l))
    if min(truth_nm, locs_nm) <= 0 or min(len(t[0]), len(l[0])) < 10:
        return None
    ratio = max(truth_nm, locs_nm) / min(truth_nm, locs_nm)
    if ratio <= EXTENT_RATIO:
        return None
    return (f"the localizations span {locs_nm:.4g} nm and the truth {truth_nm:.4g} nm (central "
            f"98 %, the larger of x and y), {ratio:.0f}× apart: are the positions of one table "
            f"in another unit (pixels, µm), or from another field of view? stormfold reads "
            f"x_nm/y_nm in nm, 'x [px]' with the pixel size")


def _outside_frames(truth_frames: np.ndarray, locs_frames: np.ndarray) -> str | None:
    first, last = int(locs_frames.min()), int(locs_frames.max())
    outside = (truth_frames < first) | (truth_frames > last)
    n = int(outside.sum())
    if n < OUTSIDE_SHARE * truth_frames.size or np.unique(truth_frames[outside]).size < 2:
        return None
    # The table cannot tell unlocalized frames from frames where nothing was found: both
    # readings are named, and the choice left to the user (review 19).
    return (f"the truth spans frames {int(truth_frames.min())}:{int(truth_frames.max()) + 1} "
            f"but the localizations only {first}:{last + 1} (0-based): {n} truth rows outside "
            f"them count as missed — right if the engine found nothing there; if those frames "
            f"were not localized, give --frames {first}:{last + 1}")
