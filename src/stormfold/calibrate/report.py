"""The calibration figure (PNG) and a self-contained HTML page with it embedded."""
from __future__ import annotations

import base64
import html
import io
import math

import numpy as np


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}g}"


def calibration_figure(result) -> bytes:
    """Six panels, one per estimate, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cam, em, line, stats = result.camera, result.emitters, result.line, result.stats
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))

    ax = axes[0, 0]
    hist = stats.background_hist
    nz = np.flatnonzero(hist)
    if nz.size:
        lo, hi = nz[0], nz[-1] + 1
        ax.step(np.arange(lo, hi), hist[lo:hi], where="mid", color="0.3")
        ax.set_yscale("log")
    ax.axvline(cam.baseline_adu, color="C3", label=f"baseline {cam.baseline_adu:.1f} ADU")
    ax.axvline(cam.background_mean_adu, color="C0", ls="--",
               label=f"background mean {cam.background_mean_adu:.1f} ADU")
    ax.set(title=f"background pixels (n = {int(result.background['n'])}): "
                 f"std {cam.background_std_adu:.2f} ADU, read noise {cam.read_noise_adu:.2f} ADU",
           xlabel="ADU", ylabel="pixels")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    if line.x.size:
        ax.errorbar(line.x, line.v, yerr=line.v_se, fmt=".", ms=3, color="0.3",
                    label="spot residuals (binned)")
    ax.errorbar([cam.background_mean_adu], [cam.background_std_adu ** 2],
                fmt="s", color="C0", label="background pixels")
    if np.isfinite(line.slope):
        xs = np.linspace(min(cam.baseline_adu, line.x.min() if line.x.size else 0),
                         max(line.x.max() if line.x.size else 1, cam.background_mean_adu), 50)
        ax.plot(xs, line.slope * xs + line.intercept, "C3",
                label=f"fit: slope {line.slope:.4g} ADU")
    ax.set(title=f"mean–variance: e_per_adu = {result.e_per_adu:.4g} e⁻/ADU "
                 f"(F = {cam.excess_factor:g})",
           xlabel="expected ADU", ylabel="variance (ADU²)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)

    spots = result.spots
    keep = spots["kept"]
    ax = axes[0, 2]
    if keep.any():
        ax.hist(spots["sigma_nm"][keep], bins=60, color="0.6")
    ax.axvline(em.sigma_nm, color="C3", label=f"σ = {_fmt(em.sigma_nm)} nm ({em.source})")
    if np.isfinite(em.sigma_fluct_nm):
        ax.axvline(em.sigma_fluct_nm, color="C2", ls=":",
                   label=f"fluctuations: {em.sigma_fluct_nm:.4g} nm")
    ax.set(title=f"PSF σ of {int(keep.sum())} isolated spots", xlabel="σ (nm)", ylabel="spots")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    if keep.any():
        ax.hist(spots["photons"][keep], bins=60, color="0.6")
    ax.axvline(em.photons_mean, color="C3",
               label=f"mean {_fmt(em.photons_mean)} ± {_fmt(em.photons_std, 3)} photons")
    if np.isfinite(em.photons_fluct):
        ax.axvline(em.photons_fluct, color="C2", ls=":",
                   label=f"fluctuations: {em.photons_fluct:.4g}")
    ax.set(title="photons per emitter (before QE)", xlabel="photons", ylabel="spots")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    fl = em.fluctuation
    if fl is not None and fl.lags:
        lags = np.asarray(fl.lags)
        dist = np.hypot(lags[:, 0], lags[:, 1])
        ax.plot(dist, fl.covariance, "o", color="0.3", ms=4, label="measured")
        if fl.model:
            ax.plot(dist, fl.model, "x", color="C3", label=f"model, σ = {fl.sigma_px:.3g} px")
    ax.set(title="covariance of frame-to-frame fluctuations", xlabel="lag (px)",
           ylabel="covariance (ADU²)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)

    ax = axes[1, 2]
    h = stats.fits_per_frame_hist
    ax.bar(np.arange(len(h)), h, width=1.0, color="0.6")
    area = stats.frame_shape[0] * stats.frame_shape[1]
    px_um2 = (result.provenance["pixel_size_nm"] / 1000.0) ** 2
    ax.axvline(em.fits_per_frame, color="C1",
               label=f"counted {em.density_counted_per_um2:.3g}/µm² (lower bound)")
    if np.isfinite(em.density_per_um2):
        ax.axvline(em.density_per_um2 * area * px_um2, color="C3",
                   label=f"signal / photons: {em.density_per_um2:.3g}/µm²")
    ax.set(title="emitters per frame", xlabel="good fits per frame", ylabel="frames")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def calibration_html(result, png: bytes) -> str:
    """Self-contained HTML: estimates with their sources, notes, the figure, the YAML."""
    from stormfold.config import dump_yaml

    cam, em = result.camera, result.emitters
    sim = result.simulation
    rows = [
        ("baseline", f"{cam.baseline_adu:.2f} ADU", cam.split_source),
        ("e_per_adu (photo-electrons per ADU)",
         f"{result.e_per_adu:.4g}" + (f" at EM gain {sim['camera']['em_gain']:g}"
                                      if sim["camera"]["em_gain"] > 1 else ""),
         cam.gain_source),
        ("read noise", f"{cam.read_noise_adu:.3g} ADU", "background variance minus shot noise"),
        ("background", f"{sim['background']['photons']:.4g} photons/px/frame",
         "background mean minus baseline"),
        ("background pixels", f"mean {cam.background_mean_adu:.2f}, std {cam.background_std_adu:.3g} "
                              f"ADU", "pixels far from any signal"),
        ("PSF σ", f"{_fmt(em.sigma_nm)} ± {_fmt(em.sigma_std_nm, 3)} nm", em.source),
        ("photons per emitter", f"{_fmt(em.photons_mean)} ± {_fmt(em.photons_std, 3)}", em.source),
        ("density", f"{_fmt(em.density_per_um2, 3)} /µm²", "signal per frame / photons per emitter"),
        ("density (counted)", f"{em.density_counted_per_um2:.3g} /µm²",
         "good fits per frame / area — a lower bound"),
    ]
    table = "\n".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td>"
                      f"<td>{html.escape(c)}</td></tr>" for a, b, c in rows)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.provenance.get("notes", [])) \
        or "<li>none</li>"
    prov = result.provenance
    b64 = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>stormfold calibration</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>Calibration of {html.escape(str(prov['movie']))}</h1>
<p>Frames {prov['frames'][0]}–{prov['frames'][1]}, region x {prov['roi'][0]}–{prov['roi'][2]},
y {prov['roi'][1]}–{prov['roi'][3]} px, pixel {prov['pixel_size_nm']:g} nm;
{prov['counts']['candidates']} candidates, {prov['counts']['good_fits']} good fits,
{prov['counts']['isolated_spots']} isolated spots. stormfold {html.escape(prov['stormfold_version'])}.</p>
<table><tr><th>estimate</th><th>value</th><th>from</th></tr>
{table}</table>
<h2>Notes</h2><ul>{notes}</ul>
<img alt="calibration histograms" src="data:image/png;base64,{b64}" style="max-width:100%">
<h2>simulation.yaml</h2><pre>{html.escape(dump_yaml(sim))}</pre>
</body></html>
"""
