"""``stormfold sofi MOVIE --out OUT_DIR``: the SOFI cumulant image of a movie, and with a
trained model its semi-blind deconvolution.

One streaming pass over the movie (memory independent of its length) gives the temporal
mean and the second-order cumulant Ĝ₂(lag); the ADU → photon conversion (an affine map)
is applied to the statistics, so cumulants are in photons² when the camera is known.

Outputs in OUT_DIR:

``sofi.tif``
    Ĝ₂(lag), float32, camera pixels (pixel size in the resolution tags when known).
``mean.tif``
    Temporal mean (photons), the widefield image.
``reconstruction.tif`` (with ``--model``)
    Fine-grid intensity-cumulant image r (photons² per fine pixel; pixel size px/L).
``reconstruction_binary.tif`` (with ``--model``, unless ``binarise=False``)
    r ≥ τ as uint8 0/1.
``localizations.csv`` (with ``--model``)
    ThunderSTORM CSV: one row per 8-connected group of fine pixels ≥ τ (intensity-weighted
    centroid), frame 1 (the whole movie), ``confidence`` ≈ fluorophores in the group.
``sofi.yaml``
    Parameters, camera and its source, units, model, timings, command, version.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from stormfold import __version__
from stormfold.config import dump_yaml, to_dict
from stormfold.errors import UserError
from stormfold.sofi.statistics import CumulantAccumulator, check_order_lag

#: Largest --threshold (units of the variance scale, ≈ fluorophores per group): far above any
#: reconstruction, and τ × scale still fits the float32 images it is compared with.
MAX_THRESHOLD = 1e6
#: Fewer frames than this give a cumulant dominated by its sampling noise (relative error
#: ≈ √(2/T) for a variance): a warning, not a refusal (a quick look is still a look).
MIN_USEFUL_FRAMES = 100
#: The cumulant must exceed the camera noise's somewhere by this many standard errors
#: (99.9th percentile of the pixels; static emitters give about 3, blinking ones 10²–10³),
#: else a warning.
BLINK_MIN_SE = 8.0

#: The record's entries that make two SOFI runs the same (their fingerprint).
FINGERPRINT_KEYS = ("input", "frames", "order", "lag", "pixel_size_nm", "camera", "model")
OUTPUTS = {"cumulant": "sofi.tif", "mean": "mean.tif", "reconstruction": "reconstruction.tif",
           "binary": "reconstruction_binary.tif", "locs": "localizations.csv",
           "record": "sofi.yaml"}


def run_sofi(movie: Any, out_dir: str | Path, order: int = 2, lag: int | None = None,
             model: Any = None, camera: Any = None, pixel_size_nm: float | None = None,
             batch_frames: int = 256, start: int = 0, stop: int | None = None,
             threshold: float | None = None, binarise: bool = True, device: Any = "cpu",
             progress: bool = True, command: list[str] | None = None) -> dict[str, Any]:
    """Compute a movie's SOFI cumulant image (and reconstruct it with a model); write OUT_DIR.

    Parameters
    ----------
    movie : path or Movie
        TIFF stack, folder of TIFFs or Picasso ``.raw`` (ADU).
    out_dir : path
        Output folder (see the module notes).
    order : int
        Cumulant order; only 2.
    lag : {0, 1}, optional
        Time lag; default 0, or the model's lag (a different lag than the model's is refused).
    model : str, Path or SofiModel, optional
        A model folder / ``builtin:NAME`` with ``engine: sofi``, or a loaded model.
    camera : Camera or stormfold.localize.runner.CameraOverrides, optional
        ADU → photons; default: the movie's metadata, else the model's training camera,
        else an ideal camera (the cumulant is then in ADU²).
    pixel_size_nm : float, optional
        Camera pixel size (nm) when the movie has none (required with a model).
    batch_frames : int
        Frames read at once.
    start, stop : int
        Frame range (0-based, stop exclusive).
    threshold : float, optional
        Binarisation/extraction threshold in units of the model's variance scale (default:
        the learned τ).
    binarise : bool
        Also write the binarised reconstruction.
    device, progress, command
        Compute device, progress bar, command line to record.

    Returns
    -------
    dict
        The content written to ``sofi.yaml``.
    """
    from tqdm import tqdm

    from stormfold.io.atomic import write_text
    from stormfold.io.frame_range import check_frame_range
    from stormfold.io.movie import Movie, open_movie
    from stormfold.io.outputs import OutputFolder
    from stormfold.io.tables import write_table
    from stormfold.io.tiff import write_tiff
    from stormfold.localize.camera import CameraChoice, check_camera_on_movie, choose_camera
    from stormfold.localize.runner import resolve_pixel_size
    from stormfold.physics.camera import Camera
    from stormfold.sofi.model import SofiModel, load_sofi_model
    from stormfold.sofi.theory import noise_offset, noise_variance

    if int(batch_frames) < 1:
        raise UserError(f"--batch-frames must be ≥ 1, got {batch_frames}")
    if threshold is not None and not (np.isfinite(threshold) and 0 <= threshold <= MAX_THRESHOLD):
        raise UserError(f"--threshold must be a number in [0, {MAX_THRESHOLD:g}] (units of the "
                        f"model's variance scale), got {threshold}")
    model_spec = None
    if model is not None and not isinstance(model, SofiModel):
        model_spec = str(model)
        model = load_sofi_model(model, device)
    if lag is None:
        lag = model.lag if model is not None else 0
    check_order_lag(order, lag)
    if model is not None and lag != model.lag:
        raise UserError(f"the model was trained on lag-{model.lag} cumulants: use --lag "
                        f"{model.lag} (or omit --lag)")
    if threshold is not None and model is None:
        warnings.warn("--threshold is ignored without --model (it binarises the "
                      "reconstruction)", UserWarning, stacklevel=2)
    own = not isinstance(movie, Movie)
    mv = open_movie(movie, pixel_size_nm=pixel_size_nm) if own else movie
    try:
        px = resolve_pixel_size(mv, model) if model is not None else mv.pixel_size_nm
        choice = CameraChoice(camera, "given") if isinstance(camera, Camera) else \
            choose_camera(camera, mv, model)
        cam, cam_source = choice.camera, choice.source
        if choice.warning:
            warnings.warn(choice.warning, UserWarning, stacklevel=2)
        start, stop = check_frame_range(start, stop, mv.n_frames)
        if stop - start < 2:
            raise UserError(f"SOFI needs at least 2 frames, --frames {start}:{stop} gives 1")
        if stop - start < MIN_USEFUL_FRAMES:
            warnings.warn(f"SOFI from {stop - start} frames: a cumulant needs at least "
                          f"{MIN_USEFUL_FRAMES} (its sampling error is ≈ √(2/T) = "
                          f"{np.sqrt(2.0 / (stop - start)):.0%} of the signal)", UserWarning,
                          stacklevel=2)
        check_camera_on_movie(cam, cam_source, mv)
        names = ["cumulant", "mean", "record"] + (["reconstruction", "locs"] + (
            ["binary"] if binarise else []) if model is not None else [])
        rows, cols = mv.shape
        fine = 1 if model is None else model.upsampling ** 2
        out = OutputFolder(out_dir, "sofi", [OUTPUTS[k] for k in names], mv.open_spec()[0],
                           expected_bytes=8.0 * rows * cols * (1 + 2 * fine)).check()
        t0 = time.perf_counter()
        acc = CumulantAccumulator()
        with tqdm(total=stop - start, unit="frame", desc="sofi", disable=not progress,
                  leave=False) as bar:
            for _, frames in mv.iter_batches(int(batch_frames), start=start, stop=stop):
                acc.update(frames)
                bar.update(len(frames))
        stats = acc.result().to_photons(cam)
        t_stats = time.perf_counter() - t0
        n = stats.n_frames
        cumulant = stats.cumulant(lag)
        # Photons when the baseline and the gain were given (file, options, the movie's
        # own metadata), not assumed from an ideal camera.
        known_camera = not (cam_source.startswith("default") and choice.assumed)
        units = "photons^2" if known_camera else "(ADU-equivalent)^2"
        record: dict[str, Any] = {
            "input": str(mv.path), "frames": [int(start), int(stop)], "n_frames": int(n),
            "order": int(order), "lag": int(lag), "pixel_size_nm": px, "units": units,
            "camera": to_dict(cam), "camera_source": cam_source,
            "camera_assumed": list(choice.assumed),
            "estimator": ("(1/T) sum_t (F_t - mean)^2" if lag == 0 else
                          "(1/(T-1)) sum_t (F_t - mean)(F_t+1 - mean)"),
            "outputs": {k: OUTPUTS[k] for k in names},
        }
        meta = {"source": f"stormfold {__version__} sofi", "order": int(order), "lag": int(lag),
                "units": units, "n_frames": int(n)}
        record["nan_repairs"] = mv.repairs()
        blinking = True
        if known_camera:
            # The cumulant of a movie whose emitters do not blink is the camera noise's
            # (review 21: static emitters, 0.1 of a blinking movie's, no word said).
            v = noise_variance(cam, stats.mean)
            se = v * np.sqrt(2.0 / n) if lag == 0 else v / np.sqrt(n)
            excess = (cumulant - noise_offset(cam, stats.mean, n, lag)) / np.maximum(se, 1e-12)
            strongest = float(np.percentile(excess, 99.9))
            record["blinking_excess_se"] = round(strongest, 2)
            blinking = strongest >= BLINK_MIN_SE
            if not blinking:
                warnings.warn(f"no blinking found: the cumulant exceeds the camera noise's by at "
                              f"most {strongest:.1f} standard errors (99.9th percentile of the "
                              f"pixels; a blinking movie gives tens to hundreds): SOFI needs "
                              f"emitters that switch on and off between frames", UserWarning,
                              stacklevel=2)
        with out:
            paths = {k: out.path(OUTPUTS[k]) for k in names}
            write_tiff(paths["cumulant"], cumulant.astype(np.float32), px, meta)
            write_tiff(paths["mean"], stats.mean.astype(np.float32), px,
                       {**meta, "units": "photons" if known_camera else "ADU-equivalent"})
            if model is not None:
                t1 = time.perf_counter()
                offset = noise_offset(cam, stats.mean, n, lag)
                recon = model.reconstruct(cumulant, offset)
                tau = model.tau if threshold is None else float(threshold)
                locs = model.localizations(recon, tau)
                peak = float(np.max(recon)) / model.variance_scale if recon.size else 0.0
                if len(locs) == 0 and peak > 0 and blinking:
                    # τ applies per fine pixel and suits the training structure's density:
                    # an isolated emitter spreads its cumulant over many fine pixels.
                    warnings.warn(f"no localization: the reconstruction's largest pixel is "
                                  f"{peak:.3g} (units of the model's variance scale), below "
                                  f"the threshold {tau:.3g}; try --threshold {peak / 2:.2g}",
                                  UserWarning, stacklevel=2)
                fine_px = model.fine_pixel_nm
                fine_meta = {**meta, "units": "photons^2 per fine pixel",
                             "upsampling": model.upsampling}
                write_tiff(paths["reconstruction"], recon, fine_px, fine_meta)
                if binarise:
                    write_tiff(paths["binary"], model.binarise(recon, tau), fine_px,
                               {**fine_meta, "units": "0/1", "threshold": tau})
                write_table(paths["locs"], locs)
                record["model"] = {"path": model_spec, **model.describe(), "threshold_used": tau,
                                   "threshold_used_photons2": tau * model.variance_scale,
                                   "noise_offset_mean_photons2": float(np.mean(offset))}
                record["n_localizations"] = int(len(locs))
                record["reconstruction_seconds"] = round(time.perf_counter() - t1, 3)
            record["timing"] = {"statistics_s": round(t_stats, 3),
                                "frames_per_s": round(n / max(t_stats, 1e-9), 1)}
            record["command"] = command or []
            record["stormfold_version"] = __version__
            write_text(paths["record"], dump_yaml(record))
            out.commit({k: v for k, v in record.items() if k in FINGERPRINT_KEYS}, command)
        return record
    finally:
        if own:
            mv.close()
