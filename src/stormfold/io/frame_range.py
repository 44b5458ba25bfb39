"""Frame ranges ``A:B`` (0-based, B exclusive): parsed and checked against a movie's length,
with messages that name the range as given and the movie's length."""
from __future__ import annotations

import warnings
from typing import Optional

from stormfold.errors import UserError, whole_number


def parse_frame_range(text: Optional[str], source: str = "--frames") -> tuple[int, Optional[int]]:
    """``"A:B"``, ``"A:"`` or ``":B"`` → ``(A, B or None)``; None → ``(0, None)``.

    Raises
    ------
    UserError
        Not of the form A:B, a negative frame, or B ≤ A.
    """
    if text is None:
        return 0, None
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        first = int(parts[0]) if parts[0].strip() else 0
        stop = int(parts[1]) if parts[1].strip() else None
    except ValueError:
        raise UserError(f"{source} expects A:B (0-based, B exclusive, e.g. 0:100), "
                        f"got {text!r}") from None
    return check_bounds(first, stop, source, text)


def check_bounds(first: int, stop: Optional[int], source: str = "--frames",
                 given: Optional[str] = None) -> tuple[int, Optional[int]]:
    """Refuse negative frames and empty ranges (B ≤ A) before the movie is known."""
    given = given if given is not None else f"{first}:{'' if stop is None else stop}"
    for value in (first, stop):
        if value is not None:
            whole_number(value, f"a frame number in {source} {given}", minimum=None)
    if first < 0 or (stop is not None and stop < 0):
        raise UserError(f"{source} {given}: frames are counted from 0 (0-based), so they "
                        f"cannot be negative")
    if stop is not None and stop <= first:
        raise UserError(f"{source} {given} is empty: B must be greater than A (B is exclusive)")
    return int(first), None if stop is None else int(stop)


def check_frame_range(first: int, stop: Optional[int], n_frames: int,
                      source: str = "--frames") -> tuple[int, int]:
    """The range ``first:stop`` within a movie of ``n_frames`` frames.

    A range that starts at or after the end is an error naming the range as given and the
    movie's length; a ``stop`` past the end is cut to the end with a warning.

    Returns
    -------
    (int, int)
        ``first`` and ``stop`` (≤ ``n_frames``).
    """
    given = f"{first}:{'' if stop is None else stop}"
    first, stop = check_bounds(first, stop, source, given)
    if first >= n_frames:
        raise UserError(f"{source} {given} is empty for a {n_frames}-frame movie (frames 0 to "
                        f"{n_frames - 1})")
    if stop is None:
        return first, n_frames
    if stop > n_frames:
        warnings.warn(f"{source} {given} goes past the end of the {n_frames}-frame movie: "
                      f"using frames {first}:{n_frames}", UserWarning, stacklevel=2)
        stop = n_frames
    return first, stop
