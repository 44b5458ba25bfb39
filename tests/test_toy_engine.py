"""The worked example of docs/architecture.md: a toy engine registered from outside the
package, trained through the registry, run by ``stormfold localize`` and ``stormfold run``."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["n_rows=24", "n_cols=24", "activation.density_per_um2=0.5"]


@pytest.fixture()
def toy(monkeypatch):
    """Register the toy engine for one test (the registry is restored afterwards)."""
    from stormfold.localize.registry import ENGINES, EngineEntry

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.setitem(ENGINES, "toy", EngineEntry(loader="toy_engine:load_engine",
                                                    trainer="toy_engine:train"))


def test_the_document_shows_the_example_file_and_it_is_under_100_lines():
    code = (ROOT / "examples" / "toy_engine.py").read_text(encoding="utf-8")
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert code in blocks
    assert len(code.splitlines()) < 100


def test_toy_engine_trains_and_localizes_from_the_cli(toy, tmp_path, run_cli):
    from stormfold.localize.registry import train_model

    model = train_model("toy", tmp_path / "model", preset="zerocost", overrides=SMALL, seed=1,
                        progress=False)
    meta = yaml.safe_load((model / "model.yaml").read_text())
    assert meta["engine"] == "toy" and meta["threshold"] > 0 and meta["jaccard"] > 0.3
    assert (model / "checkpoint" / "state.json").is_file()
    code, _, err = run_cli("simulate", "--preset", "zerocost", "--frames", "4", "--seed", "9",
                           *[a for s in SMALL for a in ("--set", s)], "--out", tmp_path / "sim",
                           "--quiet")
    assert code == 0, err
    code, out, err = run_cli("localize", tmp_path / "sim" / "movie.tif", "--model", model,
                             "--out", tmp_path / "loc", "--quiet")
    assert code == 0, err
    run = yaml.safe_load((tmp_path / "loc" / "run.yaml").read_text())
    assert run["engine"] == {"engine": "toy", "threshold": meta["threshold"]}
    locs = pd.read_csv(tmp_path / "loc" / "localizations.csv")
    assert len(locs) > 0 and set(locs["frame"]) <= {1, 2, 3, 4}
    code, out, err = run_cli("evaluate", "--truth", tmp_path / "sim" / "truth.csv",
                             "--locs", tmp_path / "loc" / "localizations.csv")
    assert code == 0, err
    jaccard_100 = float(re.search(r"jaccard\s+([\d.]+)\s+([\d.]+)", out).group(2))
    assert jaccard_100 > 0.3


def test_stormfold_run_trains_the_toy_engine_through_the_registry(toy, tmp_path, run_cli):
    from stormfold.simulate import build_config, simulate_to_folder

    sim = simulate_to_folder(build_config("zerocost", n_frames=4, seed=2, overrides=SMALL),
                             tmp_path / "sim", progress=False)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "movie": str(sim / "movie.tif"), "output": str(tmp_path / "out"), "report": False,
        "engine": {"train": {"engine": "toy", "preset": "zerocost", "overrides": SMALL}},
        "evaluation": {"truth": str(sim / "truth.csv")}}))
    code, out, err = run_cli("run", config, "--quiet")
    assert code == 0, err
    record = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())
    assert record["engine"]["engine"] == "toy"
    assert (tmp_path / "out" / "model" / "model.yaml").is_file()
    # An engine without a trainer is refused before anything is written.
    config.write_text(config.read_text().replace("engine: toy", "engine: classic"))
    code, _, err = run_cli("run", config, "--quiet")
    assert code == 2 and "cannot train 'classic'" in err
