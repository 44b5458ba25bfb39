"""``stormfold calibrate``: estimate the simulation parameters of a movie.

Two passes over the chosen frames (:mod:`.scan`): the first, on up to
:data:`FIRST_PASS_FRAMES` frames with a guess of the camera from the pixel values, gives a
camera estimate; the second, over all chosen frames with that camera, gives the final
statistics. The estimates (:mod:`.estimate`) are written as

- ``simulation.yaml`` — a valid ``stormfold simulate --config`` / ``train --config`` file
  (details under ``provenance``, which both ignore);
- ``calibration.png`` and ``calibration.html`` — the histograms each estimate came from.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stormfold import __version__
from stormfold.calibrate.estimate import (CameraEstimate, EmitterEstimate, MeanVariance,
                                          estimate_camera, estimate_emitters)
from stormfold.calibrate.scan import (ProvisionalCamera, ScanSettings, ScanStats,
                                      provisional_camera, scan_movie)
from stormfold.errors import UserError
from stormfold.io.frame_range import check_frame_range

FIRST_PASS_FRAMES = 200
OUTPUTS = {"config": "simulation.yaml", "html": "calibration.html", "png": "calibration.png"}
#: Frames written into simulation.yaml at most (a training simulation, not the whole movie).
MAX_SIMULATED_FRAMES = 1000


@dataclass
class CalibrationResult:
    """Everything ``calibrate`` estimated, and the simulation it proposes."""

    camera: CameraEstimate
    emitters: EmitterEstimate
    line: MeanVariance
    background: dict
    stats: ScanStats
    spots: dict
    simulation: dict
    provenance: dict
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def e_per_adu(self) -> float:
        """Photo-electrons per ADU, as ``localize --e-per-adu`` and the camera files take it
        (for an EMCCD: at the output of the EM register, with ``em_gain``)."""
        return float(self.simulation["camera"]["e_per_adu"])

    def summary(self) -> str:
        """One line of the estimates (the gain as ``e_per_adu``, as everywhere)."""
        cam, em = self.camera, self.emitters
        gain = self.simulation["camera"]["em_gain"]
        spread = "" if not math.isfinite(em.photons_std) else f" +- {em.photons_std:.0f}"
        return (f"baseline {cam.baseline_adu:.1f} ADU, e_per_adu {self.e_per_adu:.4g} e-/ADU"
                + (f" (EM gain {gain:g})" if gain > 1 else "")
                + f", read noise {cam.read_noise_adu:.3g} ADU, background "
                f"{self.simulation['background']['photons']:.3g} photons; sigma "
                f"{em.sigma_nm:.1f} nm, {em.photons_mean:.0f}{spread} photons, "
                f"{em.density_per_um2:.3g}/um2 (counted: {em.density_counted_per_um2:.3g}, a "
                f"lower bound)")


def parse_roi(text: str, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` (pixels, x along columns, end exclusive) checked against the frame."""
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--roi expects x0,y0,x1,y1 (integers, pixels), got {text!r}") from None
    rows, cols = shape
    if not (0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows):
        raise UserError(f"--roi {text} is not inside the {cols}×{rows} px frame "
                        f"(need 0 ≤ x0 < x1 ≤ {cols}, 0 ≤ y0 < y1 ≤ {rows})")
    return x0, y0, x1, y1


def _finite(x: float, name: str, notes: Sequence[str] = ()) -> float:
    # Raised before any report is written: the estimators' notes go into the message.
    if not np.isfinite(x):
        why = "; ".join(str(n).rstrip(".") for n in notes) or "no usable spots found"
        raise UserError(f"calibration failed: {name} could not be estimated from this movie "
                        f"({why})")
    return float(x)


def _require_blinking(emitters: EmitterEstimate, path) -> None:
    # Spots that never blink (beads, a static sample) would otherwise be written as a
    # simulation of independently blinking emitters, with photons and density from noise.
    fl = emitters.fluctuation
    if fl is not None and fl.no_blinking:
        raise UserError(f"no blinking found in {Path(path).name}: {fl.reason}; calibrate needs a "
                        f"movie of blinking emitters (nothing was written)")


def _camera_record(cam: CameraEstimate, sim_camera: dict) -> dict:
    """The camera estimate for the output files, its gain as ``e_per_adu`` (with its
    standard error) like every camera file, instead of the internal ADU per e⁻."""
    record = {k: v for k, v in asdict(cam).items() if k not in ("notes", "adu_per_e",
                                                                 "adu_per_e_se")}
    e_per_adu = float(sim_camera["e_per_adu"])
    record["e_per_adu"] = e_per_adu
    record["e_per_adu_se"] = e_per_adu * cam.adu_per_e_se / cam.adu_per_e
    record["em_gain"] = float(sim_camera["em_gain"])
    return record


def _or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def simulation_parameters(camera: CameraEstimate, emitters: EmitterEstimate, shape: tuple[int, int],
                          n_frames: int, pixel_size_nm: float, qe: float,
                          em_gain: float) -> dict[str, Any]:
    """The nested simulation parameters (``build_config`` keys) from the estimates.

    The EM gain only splits g (ADU per photo-electron) into ``em_gain`` / ``e_per_adu``;
    for an EMCCD any split gives the same simulated ADU statistics. A spread that could
    not be estimated (NaN) is written as ``None`` (null: unknown), which the simulator
    draws without spread — never as a measured 0.
    """
    g = camera.adu_per_e
    notes = [*camera.notes, *emitters.notes]
    gain = em_gain if camera.excess_factor > 1 else 1.0
    e_per_adu = gain / g
    rows, cols = shape
    return {
        "preset": "zerocost", "seed": 0, "n_frames": int(min(n_frames, MAX_SIMULATED_FRAMES)),
        "n_rows": int(rows), "n_cols": int(cols), "pixel_size_nm": float(pixel_size_nm),
        "structure": {"kind": "uniform"},
        "activation": {"model": "independent",
                       "density_per_um2": _finite(emitters.density_per_um2, "the density", notes),
                       "density_std_per_um2": 0.0},
        "emitters": {"photons_distribution": "normal",
                     "photons_mean": _finite(emitters.photons_mean, "the photons per emitter",
                                             notes),
                     "photons_std": _or_none(emitters.photons_std),
                     "sigma_nm": _finite(emitters.sigma_nm, "the PSF σ", notes),
                     "sigma_std_nm": _or_none(emitters.sigma_std_nm)},
        "background": {"photons": float(camera.background_e / qe)},
        "drift": {"velocity_nm_per_frame": [0.0, 0.0], "random_walk_nm": 0.0},
        "camera": {"qe": float(qe), "spurious_charge": 0.0, "em_gain": float(gain),
                   "readout_e": float(camera.read_noise_adu * e_per_adu),
                   "e_per_adu": float(e_per_adu), "baseline_adu": float(camera.baseline_adu),
                   "shot_noise": "poisson"},
    }


def _clean(obj: Any) -> Any:
    """YAML-safe copy: numpy scalars → float, NaN → None, tuples → lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


#: EM gain written for an EMCCD when none is given (any split gives the same statistics).
DEFAULT_EM_GAIN = 100.0
#: Largest EM gain taken: EMCCD registers are specified up to ×1000 (beyond, the gain ages
#: the register and a value like 1e9 is a typo that would write e_per_adu ≈ 1e9).
MAX_EM_GAIN = 1000.0


def calibrate(movie, out_dir: str | Path | None = None, roi: tuple[int, int, int, int] | None = None,
              start: int = 0, stop: int | None = None, pixel_size_nm: float | None = None,
              emccd: bool = False, qe: float = 1.0, em_gain: float | None = None,
              baseline_adu: float | None = None, e_per_adu: float | None = None,
              settings: ScanSettings | None = None, progress: bool = False,
              command: list[str] | None = None) -> CalibrationResult:
    """Estimate camera, PSF, photons, background and density of ``movie``.

    Parameters
    ----------
    movie : path or Movie
        Raw movie in ADU.
    out_dir : path, optional
        Write ``simulation.yaml``, ``calibration.html`` and ``calibration.png`` here.
    roi : (x0, y0, x1, y1), optional
        Analysed region in pixels (columns x0..x1, rows y0..y1, end exclusive).
    start, stop : int
        Frame range (0-based, stop exclusive; default all frames).
    pixel_size_nm : float, optional
        Camera pixel size when the movie's metadata has none.
    emccd : bool
        EMCCD: excess-noise factor 2 (see :mod:`.estimate`).
    qe : float
        Quantum efficiency: photons are reported before QE (photo-electrons / QE).
    em_gain : float, optional
        EM gain written to ``simulation.yaml`` with ``emccd`` (default 100; only splits the
        measured ADU per photo-electron into EM gain and e⁻/ADU; the statistics do not depend
        on it). Ignored, with a warning, without ``emccd``.
    baseline_adu, e_per_adu : float, optional
        Known camera values that replace the estimates (``e_per_adu`` in electrons per ADU
        at the output of the EM register, so g = EM gain / e_per_adu).
    settings : ScanSettings, optional
        Detection and fitting parameters.
    """
    from stormfold.io.movie import Movie, open_movie

    if not 0 < qe <= 1:
        raise UserError(f"--qe must be in (0, 1], got {qe}")
    given_gain, em_gain = em_gain is not None, DEFAULT_EM_GAIN if em_gain is None else em_gain
    if emccd and not 1 < em_gain <= MAX_EM_GAIN:
        raise UserError(f"--em-gain must be in (1, {MAX_EM_GAIN:g}] for an EMCCD (EM registers "
                        f"are made for gains up to about 1000), got {em_gain}")
    if e_per_adu is not None and not e_per_adu > 0:
        raise UserError(f"--e-per-adu must be > 0, got {e_per_adu}")
    settings = settings or ScanSettings()
    t0 = time.perf_counter()
    own = not isinstance(movie, Movie)
    mv = open_movie(movie, pixel_size_nm=pixel_size_nm) if own else movie
    try:
        px = mv.require_pixel_size()
        rows, cols = mv.shape
        x0, y0, x1, y1 = roi if roi is not None else (0, 0, cols, rows)
        if min(x1 - x0, y1 - y0) < 2 * settings.roi_px:
            raise UserError(f"the analysed region {x1 - x0}×{y1 - y0} px is too small: need at "
                            f"least {2 * settings.roi_px} px on each side")
        start, stop = check_frame_range(start, stop, mv.n_frames)
        if given_gain and not emccd:
            warnings.warn("--em-gain is ignored without --emccd (a camera without EM gain)",
                          UserWarning, stacklevel=2)
        from stormfold.io.movie_checks import sample_statistics, saturation_warning
        from stormfold.physics.camera import check_baseline

        sampled = sample_statistics(mv)
        if baseline_adu is not None:
            check_baseline(baseline_adu, sampled["p99"], "--baseline")
        # Clipped pixels bias the mean–variance gain and the photons (review 14, D6).
        saturated = saturation_warning(sampled)
        if saturated:
            warnings.warn(f"{mv.path}: {saturated}", UserWarning, stacklevel=2)
        out = None
        if out_dir is not None:
            from stormfold.io.outputs import OutputFolder

            out = OutputFolder(out_dir, "calibrate", OUTPUTS.values(), mv.open_spec()[0],
                               expected_bytes=2e6).check()
        g_known = em_gain / e_per_adu if (e_per_adu is not None and emccd) else \
            (1.0 / e_per_adu if e_per_adu is not None else None)
        # Pass 1: a camera guess from the pixel values, on the first frames.
        first = mv.read(start, min(start + 16, stop))[:, y0:y1, x0:x1]
        guess = provisional_camera(first)
        stop1 = min(start + FIRST_PASS_FRAMES, stop)
        stats1 = scan_movie(mv, start, stop1, (x0, y0, x1, y1), guess, settings)
        cam1, _, _ = estimate_camera(stats1, emccd=emccd, baseline_adu=baseline_adu,
                                     adu_per_e=g_known)
        # Pass 2: every chosen frame, fitted with the estimated camera.
        camera2 = ProvisionalCamera(cam1.baseline_adu, cam1.adu_per_count,
                                    cam1.read_noise_adu ** 2 + 1.0 / 12.0)
        stats = scan_movie(mv, start, stop, (x0, y0, x1, y1), camera2, settings,
                           progress=progress)
        cam, line, bg = estimate_camera(stats, emccd=emccd, baseline_adu=baseline_adu,
                                        adu_per_e=g_known)
        if cam.mismatch:
            warnings.warn(cam.mismatch, UserWarning, stacklevel=2)
        emitters, spots = estimate_emitters(stats, cam, px, qe=qe)
        _require_blinking(emitters, mv.path)
        simulation = simulation_parameters(cam, emitters, (y1 - y0, x1 - x0), stop - start, px,
                                           qe, em_gain)
        notes = cam.notes + emitters.notes
        if emccd:
            notes.append("EMCCD: the read noise is not identifiable next to the amplified shot "
                         "noise; it is taken as 0 (its effect is below 1 photo-electron)")
        provenance = _clean({
            "stormfold_version": __version__, "command": command, "movie": str(mv.path),
            "frames": [start, stop], "roi": [x0, y0, x1, y1], "pixel_size_nm": px,
            "options": {"emccd": emccd, "qe": qe, "em_gain": em_gain, "baseline_adu": baseline_adu,
                        "e_per_adu": e_per_adu, "scan": asdict(settings)},
            "camera": _camera_record(cam, simulation["camera"]),
            "mean_variance": {"slope_adu": line.slope, "intercept_adu2": line.intercept,
                              "slope_se_adu": line.slope_se, "identifiable": line.identifiable,
                              "reason": line.reason},
            "background_pixels": {k: bg[k] for k in ("n", "mean", "var", "m3")},
            "emitters": {k: v for k, v in asdict(emitters).items()
                         if k not in ("notes", "fluctuation")},
            "fluctuation": {k: v for k, v in asdict(emitters.fluctuation).items()
                            if k in ("sigma_px", "amplitude_adu2", "mean_signal_adu",
                                     "emitter_adu", "density_per_px2", "ok", "reason")}
            if emitters.fluctuation is not None else None,
            "counts": {"frames": stats.n_frames, "candidates": stats.n_candidates,
                       "good_fits": stats.n_fits, "isolated_spots": stats.n_isolated},
            "notes": notes,
            "nan_repairs": mv.repairs(),
            "seconds": round(time.perf_counter() - t0, 3),
        })
        result = CalibrationResult(cam, emitters, line, bg, stats, spots, simulation, provenance)
        if out is not None:
            with out:
                _write_outputs(result, {k: out.path(v) for k, v in OUTPUTS.items()})
                out.commit(provenance["options"], command)
            result.outputs = {k: Path(out_dir) / v for k, v in OUTPUTS.items()}
        return result
    finally:
        if own:
            mv.close()


def _write_outputs(result: CalibrationResult, paths: dict[str, Path]) -> None:
    from stormfold.calibrate.report import calibration_figure, calibration_html
    from stormfold.config import dump_yaml
    from stormfold.io.atomic import write_bytes, write_text
    from stormfold.simulate import build_config
    from stormfold.simulate.simulator import simulation_metadata

    config = build_config(overrides=result.simulation)  # validates every value
    meta = simulation_metadata(config, **result.provenance)
    png = calibration_figure(result)
    write_text(paths["config"], dump_yaml(meta))
    write_bytes(paths["png"], png)
    write_text(paths["html"], calibration_html(result, png))
