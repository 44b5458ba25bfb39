"""A self-contained HTML report of one or several runs (images embedded as PNG).

Sections per run: warnings (a camera that was assumed, a truth that spans more frames than
were localized...), summary, the widefield image and the super-resolved image of the
*post-processed* table side by side with zoomed insets, the drift trajectory with the
figures of its reliability, histograms of photons / confidence / uncertainty, counts per
frame, the FRC curve, and the evaluation table when a ground truth was given. Several
runs (the demo runs two engines on one movie) get a comparison table on top.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from stormfold import __version__
from stormfold.figures import add_scale_bar, new_figure, png_data_uri
from stormfold.io.atomic import write_text
from stormfold.table import INTENSITY_AU

SECTION_IDS = ("summary", "images", "drift", "histograms", "counts", "frc", "evaluation")


def _png(fig) -> str:
    return png_data_uri(fig, dpi=110)


def _img(src: str, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">'


def _display_range(image: np.ndarray) -> tuple[float, float]:
    """Contrast limits that keep sparse super-resolved images visible (99.5th percentile)."""
    positive = image[image > 0]
    if positive.size == 0:
        return 0.0, 1.0
    return float(np.percentile(image, 0.5)), float(np.percentile(positive, 99.5))


def images_figure(widefield: np.ndarray, superres: np.ndarray, pixel_size_nm: float,
                  upsampling: int, label: str, what: str = "super-resolved") -> str:
    """Widefield and super-resolved images side by side, each with a zoomed inset below.

    ``superres`` is ``upsampling`` times finer than ``widefield``; ``what`` names it in its
    title.
    """
    from matplotlib.patches import Rectangle
    from scipy.ndimage import uniform_filter

    rows, cols = widefield.shape
    # Zoom on the quarter of the field with the most super-resolved signal.
    qr, qc = max(rows // 4, 1), max(cols // 4, 1)
    coarse = superres.reshape(rows, upsampling, cols, upsampling).sum((1, 3))
    score = uniform_filter(coarse, size=(qr, qc), mode="constant")
    r0, c0 = np.unravel_index(np.argmax(score), score.shape)
    r0 = int(np.clip(r0 - qr // 2, 0, rows - qr))
    c0 = int(np.clip(c0 - qc // 2, 0, cols - qc))
    fig = new_figure(9, 9, layout="tight")
    axes = fig.subplots(2, 2)
    for col, (image, px, title) in enumerate([(widefield, pixel_size_nm, "widefield (sum of frames)"),
                                              (superres, pixel_size_nm / upsampling,
                                               f"{what} ({label}, ×{upsampling})")]):
        f = 1 if col == 0 else upsampling
        vmin, vmax = _display_range(image) if col else (float(image.min()), float(image.max()))
        cmap = "magma" if col else "gray"
        ax = axes[0, col]
        ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.add_patch(Rectangle((c0 * f - 0.5, r0 * f - 0.5), qc * f, qr * f, fill=False, ec="c",
                               lw=1.5))
        ax.set_title(title)
        add_scale_bar(ax, px, image.shape[1], image.shape[0])
        ax.axis("off")
        crop = image[r0 * f:(r0 + qr) * f, c0 * f:(c0 + qc) * f]
        ax = axes[1, col]
        ax.imshow(crop, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title("inset (cyan box)")
        add_scale_bar(ax, px, crop.shape[1], crop.shape[0])
        ax.axis("off")
    return _png(fig)


def drift_figure(drift: pd.DataFrame, true_drift: pd.DataFrame | None = None) -> str:
    """The post-processing drift figure, with the true drift when known."""
    from stormfold.postprocess.plots import drift_figure as figure

    return _png(figure(drift, title="drift", true_drift=true_drift, size_in=(7, 3)))


HISTOGRAM_COLUMNS = (("photons", "photons"), (INTENSITY_AU, "intensity (a.u.)"),
                     ("confidence", "confidence (a.u.)"),
                     ("uncertainty_nm", "uncertainty (nm)"), ("sigma_nm", "PSF σ (nm)"),
                     ("detections", "detections per merged localization"))


def histograms_figure(locs: pd.DataFrame) -> str | None:
    present = [(c, t) for c, t in HISTOGRAM_COLUMNS if c in locs.columns and len(locs)
               and np.isfinite(locs[c]).any()]
    if not present:
        return None
    fig = new_figure(3.2 * len(present), 2.8, layout="tight")
    axes = fig.subplots(1, len(present), squeeze=False)
    for ax, (col, title) in zip(axes[0], present):
        values = locs[col].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        hi = np.percentile(values, 99.5) if values.size else 1
        ax.hist(values, bins=60, range=(min(values.min(), 0), hi if hi > 0 else 1), color="0.3")
        ax.set_xlabel(title)
    axes[0, 0].set_ylabel("localizations")
    return _png(fig)


def counts_figure(locs: pd.DataFrame, frames: tuple[int, int]) -> str:
    start, stop = frames
    counts = np.bincount(locs["frame"].to_numpy() - start, minlength=stop - start)[: stop - start] \
        if len(locs) else np.zeros(stop - start)
    fig = new_figure(7, 2.6)
    ax = fig.add_subplot()
    ax.plot(np.arange(start, stop) + 1, counts, lw=0.8)
    ax.set_xlabel("frame")
    ax.set_ylabel("localizations")
    ax.grid(alpha=0.3)
    return _png(fig)


def frc_figure(frc: dict) -> str:
    """The post-processing FRC figure."""
    from stormfold.postprocess.frc import THRESHOLD
    from stormfold.postprocess.plots import frc_figure as figure

    curve = pd.DataFrame({"q_per_nm": frc["frequency_per_nm"], "frc": frc["frc"],
                          "frc_smoothed": frc.get("frc_smoothed", frc["frc"])})
    res = frc.get("resolution_nm")
    res = res if res is not None and np.isfinite(res) else None
    return _png(figure(curve, res, frc.get("threshold", THRESHOLD), size_in=(6, 3)))


#: Number formats of report columns (others: 3 decimals), to the precision they carry.
COLUMN_FORMATS = {"tolerance_nm": "{:g}", "rmse_lateral_nm": "{:.1f}",
                  "bias_x_nm": "{:.1f}", "bias_y_nm": "{:.1f}", "efficiency": "{:.1f}",
                  "frames/s": "{:.1f}"}


def _table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    def cell(v, column):
        if isinstance(v, (float, np.floating)):
            return "–" if not np.isfinite(v) else COLUMN_FORMATS.get(column, floatfmt).format(v)
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v, c)}</td>" for v, c in zip(row, df.columns))
                   + "</tr>" for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


EVAL_COLUMNS = ["tolerance_nm", "tp", "fp", "fn", "jaccard", "precision", "recall", "f1",
                "rmse_lateral_nm", "bias_x_nm", "bias_y_nm", "efficiency"]


COMPARISON_COLUMNS = ["tolerance_nm", "jaccard", "precision", "recall", "rmse_lateral_nm",
                      "efficiency"]


def _warnings_box(meta: dict) -> str:
    lines = meta.get("warnings") or []
    if not lines:
        return ""
    items = "".join(f"<li>{html.escape(str(line))}</li>" for line in lines)
    return f'<div class="warnings"><strong>Warnings</strong><ul>{items}</ul></div>'


def _camera_row(meta: dict) -> str:
    cam = meta["camera"]
    text = (f"baseline {cam['baseline_adu']:g} ADU, e_per_adu {cam['e_per_adu']:g}, "
            f"EM gain {cam['em_gain']:g}, QE {cam['qe']:g} (from {meta['camera_source']})")
    assumed = meta.get("camera_assumed") or []
    if assumed:
        text += f" — {', '.join(assumed)} ASSUMED, not from your data"
    return text


def _drift_figures(meta: dict) -> tuple[str, pd.DataFrame] | None:
    """The drift step's reliability check (RCC) or, without one (fiducials), its figures:
    a one-line verdict and a table."""
    results = ((meta.get("postprocess_results") or {}).get("drift") or {}).get("results")
    if not isinstance(results, dict):
        return None
    figures = results.get("reliability")
    if isinstance(figures, dict):
        verdict = str(figures.get("verdict", ""))
        problems = figures.get("problems") or []
        line = ("Reliability check: " + ("applied" if figures.get("applied") else
                                         f"{verdict}, nothing applied")
                + (f" ({'; '.join(map(str, problems))})" if problems else "") + ".")
    else:
        figures, line = results, "Figures of the drift estimate."
    rows = [(str(k), ", ".join(map(str, v)) if isinstance(v, list) else v)
            for k, v in figures.items() if not isinstance(v, dict)]
    return line, pd.DataFrame(rows, columns=["", ""])


def _run_section(result, index: int) -> str:
    meta = result.meta
    title = html.escape(result.label or meta["engine"].get("engine", "run"))
    frames = tuple(meta["movie"]["frames"])
    summary = pd.DataFrame([
        ("movie", ", ".join(meta["movie"]["paths"])),
        ("frames", f"{frames[0] + 1}–{frames[1]} of {meta['movie']['n_frames']}"),
        ("frame size", "{} × {} px, {:g} nm".format(*meta["movie"]["frame_shape"], result.pixel_size_nm)),
        ("engine", ", ".join(f"{k}: {v}" for k, v in meta["engine"].items() if not isinstance(v, (dict, list)))),
        ("camera", _camera_row(meta)),
        ("localizations", f"{meta['n_localizations']['raw']} raw, {meta['n_localizations']['final']} after post-processing"),
        ("speed", f"{meta['timing']['frames_per_s']:.1f} frames/s (localization), {meta['timing']['seconds']:.1f} s in all"),
    ] + [(f"post-processing: {k}", v) for k, v in meta.get("postprocess", {}).items()],
        columns=["", ""])
    image = getattr(result, "image", None)
    if image is not None:
        superres, factor, what = image, result.image_upsampling, "post-processed"
        caption = (f"Right: the {meta['n_localizations']['final']} localizations after "
                   f"post-processing ({', '.join(meta.get('postprocess_results') or {}) or 'no step'}), "
                   f"{result.image_title}. The engine's own super-resolved map, before "
                   f"post-processing, is superres.tif.")
    else:
        superres, factor, what = result.superres, result.upsampling, "super-resolved"
        caption = "Right: the engine's super-resolved map (before post-processing)."
    parts = [f'<section id="run-{index}"><h2>{title}</h2>', _warnings_box(meta),
             f'<div class="summary" id="summary-{index}">{_table(summary)}</div>',
             f'<h3 id="images-{index}">Widefield and super-resolved images</h3>',
             _img(images_figure(result.widefield, superres, result.pixel_size_nm,
                                factor, title, what), "widefield and super-resolved images"),
             f"<p>{html.escape(caption)}</p>"]
    drift = result.postprocess.get("drift")
    if drift is not None:
        parts += [f'<h3 id="drift-{index}">Drift</h3>',
                  _img(drift_figure(drift, result.true_drift), "drift trajectory")]
        figures = _drift_figures(meta)
        if figures is not None:
            parts += [f'<p id="drift-figures-{index}">{html.escape(figures[0])}</p>',
                      _table(figures[1], "{:.4g}")]
    hist = histograms_figure(result.locs)
    if hist is not None:
        parts += [f'<h3 id="histograms-{index}">Histograms</h3>', _img(hist, "histograms")]
    parts += [f'<h3 id="counts-{index}">Localizations per frame</h3>',
              _img(counts_figure(result.locs, frames), "localizations per frame")]
    frc = result.postprocess.get("frc")
    if frc is not None:
        parts += [f'<h3 id="frc-{index}">Fourier ring correlation</h3>', _img(frc_figure(frc), "FRC curve")]
    if result.evaluation is not None:
        ev = result.evaluation[[c for c in EVAL_COLUMNS if c in result.evaluation.columns]]
        parts += [f'<h3 id="evaluation-{index}">Evaluation against the ground truth</h3>', _table(ev)]
    parts.append("</section>")
    return "\n".join(parts)


def build_report(results: Sequence, title: str = "stormfold report") -> str:
    """HTML text of the report for one or several run results (``pipeline.RunResult``)."""
    sections = [_run_section(r, i) for i, r in enumerate(results)]
    comparison = ""
    evaluated = [r for r in results if r.evaluation is not None]
    if len(results) > 1 and evaluated:
        rows = []
        for r in evaluated:
            for rec in r.evaluation.to_dict(orient="records"):
                rows.append({"engine": r.label, **{k: rec[k] for k in COMPARISON_COLUMNS if k in rec},
                             "frames/s": r.meta["timing"]["frames_per_s"]})
        comparison = ('<section id="comparison"><h2>Comparison</h2>'
                      + _table(pd.DataFrame(rows)) + "</section>")
    style = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;display:block;overflow-x:auto}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:0.9em;text-align:right}td:first-child{text-align:left}img{max-width:100%}
h2{border-bottom:2px solid #444;margin-top:2em}
.warnings{border:2px solid #c60;background:#fff4e5;padding:0.3em 1em;margin:1em 0}"""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>stormfold {__version__}</p>{comparison}{''.join(sections)}</body></html>")


def write_report(path: str | Path, results: Sequence, title: str = "stormfold report") -> Path:
    """Write the self-contained HTML report (atomically)."""
    return write_text(path, build_report(results, title))
