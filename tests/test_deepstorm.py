"""Deep-STORM: network, loss, targets, patches, extraction, tiling, model files, resume, CLI."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.ndimage import correlate

from stormfold.deepstorm.data import (batch_targets, extract_patches, fine_pixel_index,
                                      target_maps)
from stormfold.deepstorm.engine import DeepStormEngine, engine_from_meta
from stormfold.deepstorm.loss import DeepStormLoss, gaussian_kernel_2d
from stormfold.deepstorm.model import DeepSTORM, count_parameters
from stormfold.deepstorm.normalization import Normalization, fit_normalization, upsample
from stormfold.deepstorm.train import build_train_config, train_deepstorm, train_from_cli
from stormfold.errors import UserError
from stormfold.localize.peaks import find_peaks, peaks_to_table
from stormfold.table import make_table

TINY = [4, 4, 8, 8]


def tiny_args(extra=(), **kw):
    """Arguments of a training run that takes seconds: tiny network, few patches and frames."""
    over = ["architecture.channels=[4, 4, 8, 8]", "schedule.precision=float32",
            "simulation.n_frames=6", "calibration.n_frames=2",
            "calibration.thresholds=[0.001, 0.01, 0.1]", *extra]
    args = dict(preset="zerocost", overrides=over, seed=2, epochs=3, n_patches=40, batch_size=8)
    args.update(kw)
    return args


def tiny_config(**kw):
    return build_train_config(**tiny_args(**kw))


def random_bn_model(channels=TINY, seed=0) -> DeepSTORM:
    """A model in eval mode with non-trivial BN statistics (so tiling errors would show)."""
    torch.manual_seed(seed)
    model = DeepSTORM(channels)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.5)
    return model.eval()


# ------------------------------------------------------------------------- network
def test_faithful_network_parameter_count_and_init():
    model = DeepSTORM()
    assert count_parameters(model) == 1_368_128
    # Keras equivalents: BN momentum 0.99 ↔ torch 0.01, eps 1e-3; no conv bias.
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 7 and all(m.momentum == 0.01 and m.eps == 1e-3 for m in bns)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 512, 128, 64, 32, 1]
    assert all(c.bias is None for c in convs)
    # Orthogonal init with gain 1: the rows of each flattened kernel are orthonormal.
    w = convs[1].weight.detach().reshape(64, -1)
    np.testing.assert_allclose((w @ w.T).numpy(), np.eye(64), atol=1e-5)
    x = torch.rand(2, 1, 48, 56)
    assert model.eval()(x).shape == (2, 1, 48, 56)


# ------------------------------------------------------------------------- loss
def test_loss_matches_independent_computation():
    rng = np.random.default_rng(0)
    pred = rng.normal(0, 3, (3, 1, 20, 24)).astype(np.float32)
    target = rng.uniform(0, 10, (3, 1, 20, 24)).astype(np.float32)
    loss = DeepStormLoss()(torch.from_numpy(pred), torch.from_numpy(target)).item()
    ax = np.arange(-3, 4)
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / 2.0)
    g = 2.0 * g / g.sum()
    blurred = np.stack([correlate(p[0].astype(np.float64), g, mode="constant") for p in pred])
    expected = np.mean((target[:, 0] - blurred) ** 2) + np.mean(np.abs(pred))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_loss_is_only_l1_at_half_scale_spike():
    # One emitter: the target is 100·K; a spike of 50 blurs by 2K to exactly the target.
    spikes = torch.zeros(1, 1, 32, 32)
    spikes[0, 0, 16, 11] = 1.0
    target = target_maps(1, (32, 32), torch.tensor([0]), torch.tensor([[16, 11]]), 100.0)[:, None]
    loss = DeepStormLoss()
    assert loss(50 * spikes, target).item() == pytest.approx(50.0 / 32 ** 2, rel=1e-5)
    assert loss(50 * spikes, target) < loss(100 * spikes, target)
    assert loss(50 * spikes, target) < loss(25 * spikes, target)


# ------------------------------------------------------------------------- targets
def test_target_placement_in_containing_fine_pixel():
    px, L = 100.0, 8
    x_nm = np.array([0.0, 12.49, 12.5, 99.99, 637.3])
    assert list(fine_pixel_index(x_nm, px, L)) == [0, 0, 1, 7, 50]
    t = target_maps(2, (64, 64), torch.tensor([0, 1, 1]), torch.tensor([[10, 20], [30, 40], [30, 40]]),
                    100.0)
    assert t[0].argmax().item() == 10 * 64 + 20
    assert t[0].sum().item() == pytest.approx(100.0, rel=1e-5)  # normalised blur × scale
    assert t[1].sum().item() == pytest.approx(200.0, rel=1e-5)  # two emitters, same pixel
    k = gaussian_kernel_2d()
    np.testing.assert_allclose(t[0, 7:14, 17:24].numpy(), 100 * k.numpy(), rtol=1e-5)


def test_target_decoding_has_no_bias():
    """Spikes in the containing fine pixel, decoded at fine-pixel centres: bias < 2 nm."""
    rng = np.random.default_rng(1)
    px, L, n = 100.0, 8, 800
    # One emitter per 8×8-camera-pixel cell so that peaks do not interact.
    cell = np.arange(n)
    x_nm = ((cell % 40) * 8 + rng.uniform(2, 6, n)) * px
    y_nm = ((cell // 40) * 8 + rng.uniform(2, 6, n)) * px
    rows = fine_pixel_index(y_nm, px, L)
    cols = fine_pixel_index(x_nm, px, L)
    size = (int(rows.max()) + 16, int(cols.max()) + 16)
    maps = target_maps(1, size, torch.zeros(n, dtype=torch.long),
                       torch.from_numpy(np.stack([rows, cols], 1)), 100.0)
    table = peaks_to_table(find_peaks(maps, 1.0), 0, px / L)
    assert len(table) == n
    # Pair each detection with the emitter of its cell.
    cell_of = (table["y_nm"].to_numpy() // 800).astype(int) * 40 + (table["x_nm"].to_numpy() // 800).astype(int)
    assert sorted(cell_of) == list(range(n))
    dx = table["x_nm"].to_numpy() - x_nm[cell_of]
    dy = table["y_nm"].to_numpy() - y_nm[cell_of]
    fine = px / L
    assert np.abs(dx).max() <= fine / 2 + 1e-6 and np.abs(dy).max() <= fine / 2 + 1e-6
    assert abs(dx.mean()) < 0.3 and abs(dy.mean()) < 0.3  # measured 0.014, 0.034 nm
    # The original 1-based rounding (one fine pixel early) would be biased by about −6 nm.
    assert abs((dx - fine).mean()) > 5.0


# ------------------------------------------------------------------------- patches
def test_patch_extraction_rules():
    rng = np.random.default_rng(3)
    frames = rng.uniform(0, 50, (3, 40, 50)).astype(np.float32)
    # Frame 0: a dense block in the top-left corner; frame 1: sparse; frame 2: empty.
    n_dense = 30
    truth = make_table(np.r_[np.zeros(n_dense, int), np.ones(3, int)],
                       np.r_[rng.uniform(0, 1200, n_dense), [500, 1500, 2500]],
                       np.r_[rng.uniform(0, 1200, n_dense), [500, 1500, 2500]])
    patches = extract_patches(frames, truth, 100.0, n_patches=50, patch_px=16, min_emitters=7,
                              upsampling=8, seed=4)
    assert len(patches) == 50 and patches.images.shape == (50, 16, 16)
    assert (patches.origin[:, 0] == 0).all()  # only frame 0 has dense patches
    counts = patches.counts()
    x, y = truth["x_nm"].to_numpy()[:n_dense], truth["y_nm"].to_numpy()[:n_dense]
    for i, (f, r, c) in enumerate(patches.origin):  # brute force, per patch
        np.testing.assert_array_equal(patches.images[i], frames[f, r:r + 16, c:c + 16])
        inside = (x >= c * 100) & (x < (c + 16) * 100) & (y >= r * 100) & (y < (r + 16) * 100)
        assert counts[i] == inside.sum() >= 7
        sel = patches.emitter_patch == i
        np.testing.assert_allclose(np.sort(patches.emitter_xy_nm[sel, 0]), np.sort(x[inside] - c * 100))
        assert (patches.emitter_fine[sel] >= 0).all() and (patches.emitter_fine[sel] < 128).all()
    same = extract_patches(frames, truth, 100.0, 50, 16, 7, 8, seed=4)
    np.testing.assert_array_equal(same.origin, patches.origin)
    # Targets of a batch: one blurred spike per emitter at target_scale.
    t = batch_targets(patches, np.array([0, 5]), 100.0)
    assert t.shape == (2, 1, 128, 128)
    with pytest.raises(UserError, match="min_emitters"):
        extract_patches(frames, truth, 100.0, 5, 16, min_emitters=40, upsampling=8)
    with pytest.raises(UserError, match="smaller than"):
        extract_patches(frames, truth, 100.0, 5, patch_px=41, upsampling=8)


def test_normalisation_fixed_scale_and_replication():
    frames = np.stack([np.full((4, 4), 10.0), np.full((4, 4), 30.0)])
    frames[0, 1, 2] = 100.0
    norm = fit_normalization(frames)
    assert norm.scale_photons == pytest.approx(65.0)  # mean of the frame maxima
    x = upsample(norm.apply(torch.from_numpy(frames)), 4)
    assert x.shape == (2, 16, 16)
    np.testing.assert_allclose(x[0, 4:8, 8:12].numpy(), 100.0 / 65.0)
    with pytest.raises(UserError):
        fit_normalization(np.zeros((2, 4, 4)))


# ------------------------------------------------------------------------- extraction
def test_peak_extraction_on_hand_made_map():
    m = torch.zeros(2, 10, 12)
    m[0, 3, 4] = 10.0
    m[0, 3, 5] = 5.0  # neighbour: shifts the centre of gravity right
    m[0, 2, 4] = 5.0  # and up
    m[0, 7, 9] = 2.0  # a weak isolated peak
    m[1, 0, 0] = 8.0  # corner peak: outside pixels count as 0
    peaks = find_peaks(m, min_value=3.0)
    assert len(peaks) == 2
    table = peaks_to_table(peaks, first_frame=10, fine_pixel_nm=12.5, confidence_scale=100.0)
    assert list(table["frame"]) == [10, 11]
    a, b = table.iloc[0], table.iloc[1]
    assert a["x_nm"] == pytest.approx((4.5 + 5 / 20) * 12.5)
    assert a["y_nm"] == pytest.approx((3.5 - 5 / 20) * 12.5)
    assert a["confidence"] == pytest.approx(0.20)
    assert (b["x_nm"], b["y_nm"], b["confidence"]) == pytest.approx((6.25, 6.25, 0.08))
    assert len(find_peaks(m, 1.0)) == 3  # the threshold is strict on the peak value
    assert len(find_peaks(m, 10.0)) == 0


# ------------------------------------------------------------------------- tiling
@pytest.mark.parametrize("L, shape, batch_pixels", [(8, (30, 45), 10 ** 6), (4, (53, 38), 3 * 10 ** 4)])
def test_tiled_inference_equals_untiled(L, shape, batch_pixels):
    model = random_bn_model()
    norm = Normalization(scale_photons=300.0)
    frames = np.random.default_rng(0).gamma(2.0, 80.0, (2, *shape)).astype(np.float32)
    whole = DeepStormEngine(model, L, 100.0, norm, threshold=0.01, tile_px=1024)
    tiled = DeepStormEngine(model, L, 100.0, norm, threshold=0.01, tile_px=whole.margin_px * 2 + 8,
                            batch_pixels=batch_pixels)
    assert len(tiled.tiles(*shape)) > 4 and len(whole.tiles(*shape)) == 1
    a, b = whole.predict(frames), tiled.predict(frames)
    assert a.shape == (2, shape[0] * L, shape[1] * L) and (a >= 0).all()
    scale = float(a.abs().max())
    assert scale > 0
    torch.testing.assert_close(b, a, atol=1e-5 * scale, rtol=1e-5)
    # A too-small margin would not: check that the test has the power to fail.
    tiled.margin_px = tiled.align_px
    c = tiled.predict(frames)
    assert float((c - a).abs().max()) > 1e-3 * scale


def test_threshold_calibration_maximises_jaccard():
    from stormfold.deepstorm.train import calibrate_threshold

    class MapEngine(DeepStormEngine):
        """Returns hand-made maps: true emitters peak at 30, spurious peaks at 5."""

        def predict(self, photons):
            return maps

    n, size, px = 3, 64, 100.0
    rng = np.random.default_rng(0)
    truth_rows, maps = [], torch.zeros(n, size, size)
    for f in range(n):
        cells = rng.choice(64, 20, replace=False)
        r, c = 8 * (cells // 8) + 2, 8 * (cells % 8) + 2
        maps[f, r[:12], c[:12]] = 30.0  # 12 true emitters
        maps[f, r[12:], c[12:]] = 5.0  # 8 spurious peaks
        truth_rows.append(make_table(np.full(12, f), (c[:12] + 0.5) * px / 8, (r[:12] + 0.5) * px / 8))
    truth = pd.concat(truth_rows, ignore_index=True)
    engine = MapEngine(random_bn_model(), 8, 100.0, Normalization(), threshold=1.0)
    cal = calibrate_threshold(engine, np.zeros((n, 8, 8), np.float32), truth, px,
                              thresholds=[0.01, 0.1, 0.5], tolerance_nm=100.0)
    assert cal.threshold == 0.1 and cal.jaccard == pytest.approx(1.0)
    assert dict(cal.curve)[0.01] == pytest.approx(36 / 60) and dict(cal.curve)[0.5] == 0.0


# ------------------------------------------------------------------------- model files
def test_train_save_load_and_refusals(tmp_path):
    from stormfold.modelfile import load_model, save_model
    from stormfold.localize.registry import load_engine

    res = train_deepstorm(tiny_config(epochs=1), tmp_path / "m", progress=False)
    meta = yaml.safe_load((tmp_path / "m" / "model.yaml").read_text())
    assert meta["engine"] == "deepstorm" and meta["upsampling"] == 8
    assert meta["architecture"] == {"arch": "deepstorm", "channels": TINY,
                                    "n_parameters": count_parameters(DeepSTORM(TINY))}
    assert meta["pixel_size_nm"] == 100.0 and meta["camera"]["baseline_adu"] == 50.0
    assert meta["normalization"]["scale_photons"] > 0 and meta["threshold"] in (0.001, 0.01, 0.1)
    assert meta["training_data"]["simulation"]["emitters"]["sigma_nm"] == 110.0
    assert meta["training"]["seed"] == 2 and np.isfinite(meta["validation_loss"])
    engine = load_engine(model=tmp_path / "m", threshold=0.05, options={"tile_px": 32})
    assert engine.threshold == 0.05 and engine.tile_px == 32
    assert engine.training_pixel_size_nm() == 100.0
    assert engine.training_camera().baseline_adu == 50.0
    frames = np.random.default_rng(0).uniform(0, 500, (2, 16, 16)).astype(np.float32)
    torch.testing.assert_close(engine.predict(frames), res.engine.predict(frames))
    tensors, meta = load_model(tmp_path / "m", engine="deepstorm")

    def refused(bad_meta, bad_tensors=tensors, match=""):
        folder = tmp_path / "bad"
        save_model(folder, bad_tensors, bad_meta)
        with pytest.raises(UserError, match=match):
            load_engine(model=folder)

    refused({**meta, "architecture": {**meta["architecture"], "channels": [4, 4, 8, 16],
                                      "n_parameters": None}}, match="shape")
    refused({**meta, "upsampling": 5}, match="upsampling")
    refused({k: v for k, v in meta.items() if k != "normalization"}, match="normalization")
    refused({**meta, "architecture": {"arch": "unet", "channels": TINY}}, match="deepstorm")
    refused(meta, {k: v for k, v in tensors.items() if not k.startswith("out.")}, match="missing")
    # A bad value inside a section names the model folder.
    refused({**meta, "camera": {**meta["camera"], "em_gain": 0.5}},
            match=re.escape(str(tmp_path / "bad")) + ": camera")
    refused({**meta, "normalization": {**meta["normalization"], "scale_photons": 0.0}},
            match=re.escape(str(tmp_path / "bad")) + ": normalization")
    with pytest.raises(UserError, match="option"):
        engine_from_meta(meta, tensors, options={"tile": 3})
    with pytest.raises(UserError, match="threshold"):
        engine_from_meta(meta, tensors, threshold=0.0)


# ------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    # lr_patience 0: the learning rate drops whenever the validation loss does not improve,
    # so the scheduler state must survive the interruption too.
    plateau = ["schedule.lr_patience=0", "schedule.lr_factor=0.5"]
    config = tiny_config(epochs=4, extra=plateau)
    full = train_deepstorm(config, tmp_path / "full", progress=False)

    def kill(epoch, step):
        if epoch == 1 and step == 2:  # mid-epoch 2, after its first steps
            raise Killed

    with pytest.raises(Killed):
        train_deepstorm(config, tmp_path / "cut", progress=False, step_callback=kill)
    assert not (tmp_path / "cut" / "model.yaml").exists()
    assert len(pd.read_csv(tmp_path / "cut" / "training.csv")) == 1  # epoch 1 checkpointed
    with pytest.raises(UserError, match="--resume"):
        train_deepstorm(config, tmp_path / "cut", progress=False)
    # The API behind the CLI; resume=None continues an unfinished checkpoint (as the pipeline does).
    resumed = train_from_cli(tmp_path / "cut", resume=None, progress=False,
                             **tiny_args(epochs=4, extra=plateau))
    a = load_file(str(tmp_path / "full" / "weights.safetensors"))
    b = load_file(str(tmp_path / "cut" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    ha = pd.read_csv(tmp_path / "full" / "training.csv").drop(columns="seconds")
    hb = pd.read_csv(tmp_path / "cut" / "training.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(ha, hb)
    assert list(ha["epoch"]) == [1, 2, 3, 4]
    assert ha["lr"].iloc[-1] < ha["lr"].iloc[0]  # the plateau schedule acted after the kill
    assert resumed.meta["threshold"] == full.meta["threshold"]
    assert resumed.meta["validation_loss"] == full.meta["validation_loss"]
    with pytest.raises(UserError, match="already holds"):  # finished: no automatic resume
        train_from_cli(tmp_path / "cut", resume=None, progress=False,
                       **tiny_args(epochs=4, extra=plateau))
    # A different configuration cannot continue this checkpoint.
    with pytest.raises(UserError, match="differ"):
        train_deepstorm(tiny_config(epochs=5, lr=5e-4, extra=plateau), tmp_path / "cut", resume=True,
                        progress=False)


def test_train_config_from_files_and_overrides(tmp_path):
    from stormfold.config import dump_yaml
    from stormfold.simulate import build_config, simulate_to_folder

    # A simulation.yaml (from `stormfold simulate`/`calibrate`) becomes the simulation section.
    sim_cfg = build_config("challenge2016", n_frames=2, seed=4, overrides=["n_rows=32", "n_cols=32"])
    simulate_to_folder(sim_cfg, tmp_path / "sim", progress=False)
    cfg = build_train_config(config_file=tmp_path / "sim" / "simulation.yaml", seed=7, epochs=3)
    assert cfg.simulation.preset == "challenge2016" and cfg.simulation.camera.em_gain == 300.0
    assert cfg.simulation.n_rows == 32 and cfg.simulation.seed == 7 and cfg.seed == 7
    assert cfg.schedule.epochs == 3 and cfg.schedule.batch_size == 16
    # A training YAML with sections; --set wins over the file, explicit options over --set.
    (tmp_path / "train.yaml").write_text(dump_yaml({
        "simulation": {"emitters": {"sigma_nm": 150.0}},
        "patches": {"n_patches": 500}, "schedule": {"lr": 0.01}}))
    cfg = build_train_config(preset="zerocost", config_file=tmp_path / "train.yaml",
                             overrides=["schedule.lr=0.002", "patches.min_emitters=3"], lr=0.005)
    assert cfg.simulation.emitters.sigma_nm == 150.0 and cfg.simulation.pixel_size_nm == 100.0
    assert cfg.patches.n_patches == 500 and cfg.patches.min_emitters == 3
    assert cfg.schedule.lr == 0.005
    defaults = build_train_config()
    assert (defaults.patches.n_patches, defaults.patches.patch_px, defaults.patches.min_emitters,
            defaults.patches.val_fraction) == (10000, 26, 7, 0.3)
    s = defaults.schedule
    assert (s.epochs, s.batch_size, s.lr, s.lr_factor, s.lr_patience, s.lr_min) == \
        (100, 16, 1e-3, 0.1, 5, 5e-5)
    assert defaults.architecture.upsampling == 8 and defaults.architecture.target_scale == 100.0
    assert list(defaults.architecture.channels) == [32, 64, 128, 512]


# ------------------------------------------------------------------------- CLI
TINY_SETS = ["--set", "architecture.channels=[4,4,8,8]", "--set", "schedule.precision=float32",
             "--set", "simulation.n_frames=6", "--set", "calibration.n_frames=2"]


def test_cli_train_localize_evaluate(tmp_path, run_cli, monkeypatch):
    model = tmp_path / "model"
    argv = ["train", "deepstorm", "--preset", "zerocost", *TINY_SETS, "--patches", "32",
            "--epochs", "2", "--batch-size", "8", "--lr", "0.002", "--seed", "5", "--out",
            str(model), "--quiet"]
    monkeypatch.setattr("sys.argv", ["stormfold", *argv])  # as typed in a shell
    code, out, err = run_cli(*argv)
    assert code == 0, err
    assert "threshold" in out
    for name in ("weights.safetensors", "model.yaml", "training.csv", "loss.png",
                 "checkpoint/state.json"):
        assert (model / name).is_file(), name
    meta = yaml.safe_load((model / "model.yaml").read_text())
    assert meta["training"]["command"] == ["stormfold", *argv]
    assert meta["training"]["config"]["schedule"]["lr"] == 0.002
    assert meta["training"]["epochs_run"] == 2
    code, _, err = run_cli("simulate", "--preset", "zerocost", "--frames", "3", "--seed", "9",
                           "--out", tmp_path / "sim", "--quiet")
    assert code == 0, err
    code, out, err = run_cli("localize", tmp_path / "sim" / "movie.tif", "--model", model,
                             "--out", tmp_path / "loc", "--threshold", "0.001", "--quiet",
                             "--set", "tile_px=40")
    assert code == 0, err
    run = yaml.safe_load((tmp_path / "loc" / "run.yaml").read_text())
    assert run["engine"]["engine"] == "deepstorm" and run["engine"]["tile_px"] == 40
    code, out, err = run_cli("evaluate", "--truth", tmp_path / "sim" / "truth.csv",
                             "--locs", tmp_path / "loc" / "localizations.csv")
    assert code == 0, err
    assert "jaccard" in out
    # The same model file trained on an existing movie + truth pair.
    code, out, err = run_cli("train", "deepstorm", *TINY_SETS, "--movie", tmp_path / "sim" / "movie.tif",
                             "--truth", tmp_path / "sim" / "truth.csv", "--patches", "16",
                             "--epochs", "1", "--out", tmp_path / "m2", "--quiet")
    assert code == 0, err
    meta2 = yaml.safe_load((tmp_path / "m2" / "model.yaml").read_text())
    assert meta2["training_data"]["source"] == "movie"
    assert meta2["training_data"]["camera_source"] == "movie metadata"


@pytest.mark.parametrize("argv, message", [
    (["--movie", "nope.tif"], "--truth"),
    (["--movie", "nope.tif", "--truth", "nope.csv"], "not found"),
    (["--set", "schedule.epoch=3"], "schedule.epoch"),
    (["--set", "architecture.upsampling=5"], "upsampling"),
    (["--preset", "nosuch"], "preset"),
    (["--set", "patches.patch_px=100"], "smaller than"),
    (["--resume"], "no checkpoint"),
    (["--config", "missing.yaml"], "not found"),
])
def test_cli_train_bad_inputs_exit_2(tmp_path, run_cli, argv, message):
    out = tmp_path / "model"
    code, _, err = run_cli("train", "deepstorm", *TINY_SETS, "--patches", "8", "--epochs", "1",
                           *argv, "--out", out, "--quiet")
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (out / "model.yaml").exists() and not (out / "checkpoint").exists()


def test_cli_train_refuses_existing_model(tmp_path, run_cli):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.yaml").write_text("engine: deepstorm\n")
    code, _, err = run_cli("train", "deepstorm", "--out", tmp_path / "m", "--quiet")
    assert code == 2 and "already holds" in err


# ------------------------------------------------------------------------- shipped model
def test_shipped_model_on_real_demo_movie(shared_data):
    """builtin:deepstorm-zerocost on the Deep-STORM demo movie (never trained on)."""
    from stormfold.evaluate import evaluate
    from stormfold.io.tables import read_table
    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine
    from stormfold.localize.runner import CameraOverrides

    folder = shared_data / "deepstorm-demo1-train"
    engine = load_engine(model="builtin:deepstorm-zerocost")
    assert count_parameters(engine.model) == 1_368_128
    res = localize_movie(folder / "ArtificialDataset_demo1.tif", engine,
                         camera=CameraOverrides(baseline_adu=100.0, e_per_adu=0.446),
                         progress=False)
    metrics = evaluate(read_table(folder / "positions_demo1.csv"), res.locs,
                       tolerances_nm=(50, 100, 250)).set_index("tolerance_nm")
    # README, table (b), with background matching: Jaccard 0.795 / 0.878 / 0.899 (0.792 /
    # 0.876 / 0.902 without). Inference is deterministic; ±0.005 (±25 of 4956 emitters)
    # leaves room for float rounding on other CPUs only.
    for tolerance, jaccard in ((50, 0.795), (100, 0.878), (250, 0.899)):
        assert metrics.loc[tolerance, "jaccard"] == pytest.approx(jaccard, abs=0.005), tolerance
    assert metrics.loc[100, "precision"] == pytest.approx(0.949, abs=0.005)
    assert metrics.loc[100, "recall"] == pytest.approx(0.922, abs=0.005)


def test_shipped_model_on_fresh_simulation_is_accurate_and_unbiased():
    """builtin:deepstorm-zerocost on new zerocost frames: high Jaccard, bias < 2 nm."""
    from stormfold.evaluate import evaluate
    from stormfold.localize.registry import load_engine
    from stormfold.simulate import build_config, simulate

    cfg = build_config("zerocost", n_frames=8, seed=21)
    sim = simulate(cfg)
    engine = load_engine(model="builtin:deepstorm-zerocost")
    out = engine.process(cfg.camera.backward(sim.movie), 0, cfg.pixel_size_nm)
    m = evaluate(sim.truth, out.locs, tolerances_nm=(100,)).iloc[0]
    # Deterministic inference: measured Jaccard 0.870 (README, 100 frames: 0.872), bias
    # 0.95 / 0.04 nm.
    assert m["jaccard"] == pytest.approx(0.870, abs=0.01)
    assert abs(m["bias_x_nm"]) < 1.5 and abs(m["bias_y_nm"]) < 1.5
    # superres = the batch sum of the clamped predictions / target_scale, on the frames as
    # background matching leaves them (a dense frame's tiles can exceed the reference at
    # the edges, where the map is extrapolated).
    matched = engine.background(cfg.camera.backward(sim.movie))
    expected = engine.predict(matched).sum(0) / engine.target_scale
    np.testing.assert_allclose(out.superres, expected.numpy(), rtol=1e-5, atol=1e-7)
    assert out.superres.shape == (64 * 8, 64 * 8) and out.superres.min() >= 0
