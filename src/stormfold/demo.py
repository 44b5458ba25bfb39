"""``stormfold demo``: the product end to end on an embedded default.

Simulates a high-density microtubule-like movie with stage drift, localizes it with every
shipped model (Deep-STORM, the unrolled solver, the gridnet generalist), corrects the drift,
evaluates them against the ground truth and writes one HTML report comparing them.
"""
from __future__ import annotations

import time
from pathlib import Path

from stormfold.io.atomic import write_text
from stormfold.io.manifest import fingerprint, rewrite_paths
from stormfold.pipeline import EngineSpec, EvaluationSpec, RunConfig, run
from stormfold.pipeline.state import run_parameters
from stormfold.report import write_report
from stormfold.simulate import build_config, simulate_to_folder

DEMO_ENGINES = (("Deep-STORM", "builtin:deepstorm-zerocost"),
                ("unrolled (learned θ)", "builtin:unrolled-isbi2013"),
                ("gridnet (generalist)", "builtin:gridnet-generalist"))
#: A run's files that name its movie, truth and folder.
RUN_RECORDS = ("run.yaml", "run.log", "report.html")


def demo_simulation(n_frames: int = 200, seed: int = 2026):
    """Microtubule-like filaments, ~2 active emitters per µm² (≈ 80 per 64×64 frame), PSF
    σ 110 nm, 100 nm pixels, background 20 photons: a setting every shipped model knows.
    The stage drifts by about 80 × 50 nm over 200 frames (velocity plus a random walk)."""
    return build_config("zerocost", n_frames=n_frames, seed=seed, overrides={
        "structure": {"kind": "filaments", "n_filaments": 7, "label_spread_nm": 15.0},
        "activation": {"density_per_um2": 2.0},
        "emitters": {"photons_mean": 2000.0, "photons_std": 400.0, "sigma_nm": 110.0,
                     "sigma_std_nm": 5.0},
        "background": {"photons": 20.0},
        "drift": {"velocity_nm_per_frame": [0.4, -0.25], "random_walk_nm": 0.5},
        "camera": {"baseline_adu": 100.0, "e_per_adu": 1.0, "readout_e": 4.5},
    })


def _run_config(root: Path, model: str) -> RunConfig:
    """The run of ``model`` on the demo movie in ``root``, into ``root/<model name>``."""
    sim_dir = root / "simulation"
    return RunConfig(movie=str(sim_dir / "movie.tif"), output=str(root / model.split(":", 1)[1]),
                     engine=EngineSpec(model=model),
                     # A short demo (--frames 12) has too few localizations per drift bin:
                     # it says so and goes on uncorrected.
                     postprocess={"steps": ["drift", "frc"], "drift": {"on_unsupported": "warn"}},
                     evaluation=EvaluationSpec(truth=str(sim_dir / "truth.csv"),
                                               truth_drift=str(sim_dir / "drift.csv")),
                     report=True)


def run_demo(out: str | Path, n_frames: int = 200, quiet: bool = False) -> Path:
    """Run the demo into ``out``; returns the path of ``report.html``.

    The folder is one set (:class:`stormfold.io.outputs.OutputFolder`): the simulation, the
    runs and the report are written into a staging folder and moved in at the end.
    """
    from stormfold.io.outputs import OutputFolder

    out = Path(out).resolve()  # the runs' records name absolute paths: they run from anywhere
    folders = ["simulation", *(model.split(":", 1)[1] for _, model in DEMO_ENGINES)]
    # the simulated movie, one run per engine and the report: about 2 MB per 100 frames
    target = OutputFolder(out, "demo", [*folders, "report.html"], subfolders=folders,
                          expected_bytes=2e4 * n_frames + 5e6).check()
    t0 = time.perf_counter()
    with target:
        staging = target.open()
        simulate_to_folder(demo_simulation(n_frames), staging / "simulation", progress=not quiet)
        results = []
        # The runs are made in the staging folder; their records are rewritten to name the
        # final folder before the set is moved in, so that each run.yaml runs again.
        moves = [(str(staging), str(out))]
        for label, model in DEMO_ENGINES:
            name = model.split(":", 1)[1]
            result = run(_run_config(staging, model), quiet=quiet, label=label,
                         shown_as=moves[0])
            results.append(result)
            rewrite_paths(staging / name, moves, RUN_RECORDS,
                          fingerprint(run_parameters(_run_config(out, model))))
        write_report(staging / "report.html", results,
                     title=f"stormfold demo: {len(DEMO_ENGINES)} engines on a simulated "
                           f"high-density movie ({n_frames} frames, "
                           f"{time.perf_counter() - t0:.0f} s)")
        text = (staging / "report.html").read_text(encoding="utf-8")
        for old, new in moves:
            text = text.replace(old, new)
        write_text(staging / "report.html", text)
        target.commit({"n_frames": n_frames, "engines": [m for _, m in DEMO_ENGINES]})
    return out / "report.html"
