"""The accuracy benchmark's code path on tiny movies (benchmarks/bench_accuracy.py): real simulator, the
shipped model through the streaming localizer, real files out; plus the evaluated-population rule that
keeps predictions of excluded (dim) emitters out of both TP and FP. Picasso is not run here."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest

from rtsmlm.analysis.metrics import match
from rtsmlm.core.locs import LOC_DTYPE
from rtsmlm.sim import TRUTH_DTYPE

# The interim shipped model (step 4500 of 15000) reaches 0.91 on this population, a fully trained one more;
# the bound only catches a broken path (wrong scaling, coordinates or matching give ~0) or a broken model.
LOOSE_JACCARD = 0.5


def load_benchmark(repo_root, name: str):
    """The module benchmarks/NAME.py, imported as a script would import it."""
    spec = importlib.util.spec_from_file_location(name, repo_root / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench(repo_root):
    return load_benchmark(repo_root, "bench_accuracy")


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("accuracy")
    argv = ["--size", "32", "--low-frames", "30", "--low-density", "0.3", "--bg", "75", "--high-frames", "8",
            "--high-density", "1.5", "--no-picasso", "--sections", "low", "high", "--threads", "2",
            "--json", str(out / "acc.json"), "--plot", str(out / "crlb.png")]
    assert bench.main(argv) == 0
    return json.loads((out / "acc.json").read_text()), out


def test_low_density_figures_are_sane(report):
    result, _ = report
    (movie,) = result["low_density"]["movies"]
    for key in ("all", "population"):
        m = movie[key]
        assert {"jaccard", "rmse_lat_nm", "n_pred", "n_true", "tp", "fp", "fn"} <= m.keys()
        assert m["n_pred"] > 0 and m["n_true"] > 0
        assert m["tp"] + m["fp"] == m["n_pred"] and m["tp"] + m["fn"] == m["n_true"]
    assert movie["population"]["jaccard"] > LOOSE_JACCARD
    # Matched within 250 nm: the RMSE cannot exceed the tolerance, and a working model is far inside it.
    assert 0 < movie["population"]["rmse_lat_nm"] < 100
    # The population is a subset of the ground truth, and a dropped prediction is one that was a TP.
    assert movie["population"]["n_true"] <= movie["all"]["n_true"]
    assert movie["all"]["n_pred"] - movie["population"]["n_pred"] == movie["n_pred_matched_to_excluded"]
    assert movie["all"]["tp"] - movie["population"]["tp"] == movie["n_pred_matched_to_excluded"]


def test_crlb_table_and_plot(report):
    result, out = report
    (movie,) = result["low_density"]["movies"]
    rows = [r for r in movie["crlb"] if r["n"]]
    assert rows, "no photon bin has matched emitters"
    for r in rows:
        # Eq. 5 (least squares) is never below the Fisher bound; both shrink with photons.
        assert r["crlb_lat_nm"] >= r["crlb_fisher_lat_nm"] > 0
        assert abs(r["crlb_fisher_numeric_at_mean_nm"] / r["crlb_fisher_lat_nm"] - 1) < 0.1
        assert r["verdict"] in ("PASS", "MISS")
        assert r["verdict"] == ("PASS" if r["rmse_lat_nm"] <= 1.2 * r["crlb_fisher_lat_nm"] else "MISS")
    fisher = [r["crlb_fisher_lat_nm"] for r in movie["crlb"] if r["n"]]
    assert fisher == sorted(fisher, reverse=True)
    (plot,) = result["plots"]
    assert plot == str(out / "crlb_bg75.png")
    assert (out / "crlb_bg75.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_high_density_section_without_picasso(report):
    result, _ = report
    (entry,) = result["high_density"]["movies"]
    assert entry["model"]["population"]["n_pred"] > 0
    assert entry["picasso"] is None and "--no-picasso" in entry["picasso_note"]
    assert result["model"]["step"] >= 0 and result["backend"]["name"] == "torch"


def _table(rows, dtype):
    t = np.zeros(len(rows), dtype)
    for i, (frame, x, y, *rest) in enumerate(rows):
        t[i]["frame"], t[i]["x"], t[i]["y"] = frame, x, y
        if rest:
            t[i]["photons"] = rest[0]
    return t


def test_prediction_on_excluded_emitter_is_neither_tp_nor_fp(bench):
    truth = _table([(0, 1000, 1000, 3000), (0, 3000, 3000, 400), (1, 2000, 2000, 2000), (1, 5000, 5000, 300)],
                   TRUTH_DTYPE)
    # Frame 0: one on the bright emitter, one on the dim one, one far from both (a false positive).
    # Frame 1: one on the bright emitter; the dim emitter is missed (excluded, so not a false negative).
    pred = _table([(0, 1010, 995), (0, 3020, 3000), (0, 600, 4000), (1, 1990, 2000)], LOC_DTYPE)
    scores, m_all, m_pop = bench.score(pred, truth, tolerance_nm=250.0, min_photons=1000.0)
    assert (m_all.tp, m_all.fp, m_all.fn) == (3, 1, 1)
    assert (m_pop.tp, m_pop.fp, m_pop.fn) == (2, 1, 0)
    assert scores["population"]["jaccard"] == pytest.approx(2 / 3)
    assert scores["n_pred_matched_to_excluded"] == 1
    # The kept pairs keep their offsets, and truth_index points into the kept rows.
    kept = truth[truth["photons"] >= 1000.0]
    assert np.allclose(pred["x"][m_pop.pred_index] - kept["x"][m_pop.truth_index], m_pop.dx)
    assert scores["population"]["rmse_lat_nm"] == pytest.approx(math.sqrt((10**2 + 5**2 + 10**2) / 2))


def test_restrict_match_keeps_everything_when_nothing_is_excluded(bench):
    rng = np.random.default_rng(3)
    truth = _table([(f, *rng.uniform(0, 6400, 2), 2000) for f in range(20) for _ in range(5)], TRUTH_DTYPE)
    pred = truth[rng.random(len(truth)) < 0.8].copy()
    pred["x"] += rng.normal(0, 20, len(pred)).astype(np.float32)
    m = match(pred, truth)
    r = bench.restrict_match(m, np.ones(len(truth), bool))
    assert (r.tp, r.fp, r.fn) == (m.tp, m.fp, m.fn)
    assert np.array_equal(r.truth_index, m.truth_index)


def test_single_frame_mask_follows_labels_across_frames(bench):
    truth = _table([(0, 100, 100), (1, 100, 100), (1, 900, 900), (3, 100, 100), (4, 700, 700), (5, 700, 700)],
                   TRUTH_DTYPE)
    assert bench.single_frame_mask(truth).tolist() == [False, False, True, True, False, False]


def test_error_anatomy_finds_duplicates_and_close_pairs(bench):
    # A close pair (200 nm apart) detected twice at its first member, and a lone emitter found once.
    truth = _table([(0, 1000, 1000, 2000), (0, 1200, 1000, 2000), (0, 4000, 4000, 2000)], TRUTH_DTYPE)
    pred = _table([(0, 1003, 1000), (0, 995, 1004), (0, 4010, 4000)], LOC_DTYPE)
    scores, m_all, _ = bench.score(pred, truth, tolerance_nm=150.0, min_photons=None)
    e = scores["errors_all"]
    assert (e["fp"], e["fn"]) == (m_all.fp, m_all.fn) == (1, 1)
    assert e["fp_within_50nm_of_truth"] == 1 and e["fn_with_emitter_within_300nm"] == 1
    assert e["fn_nearest_emitter_nm_median"] == pytest.approx(200.0)


def test_frame_counts_and_paired_jaccard_interval(bench):
    rng = np.random.default_rng(5)
    truth = _table([(f, *rng.uniform(0, 6400, 2), 2000) for f in range(100) for _ in range(4)], TRUTH_DTYPE)
    found = rng.random(len(truth)) < 0.9
    good = truth[found].copy()
    # The worse model misses a further fifth of the emitters and adds a false positive every other frame.
    worse = np.concatenate([good[rng.random(len(good)) < 0.8],
                            _table([(f, 100, 100) for f in range(0, 100, 2)], TRUTH_DTYPE)])
    counts = {}
    for name, pred in (("good", good), ("worse", worse)):
        m = match(pred, truth)
        counts[name] = bench.frame_counts(pred, truth, m, 100)
        assert counts[name].sum(axis=0).tolist() == [m.tp, m.fp, m.fn]
    assert counts["good"][:, 1].sum() == 0 and counts["worse"][::2, 1].min() == 1
    d, low, high = bench.jaccard_difference_interval(counts["worse"], counts["good"])
    jw = counts["worse"][:, 0].sum() / counts["worse"].sum()
    assert d == pytest.approx(jw - counts["good"][:, 0].sum() / counts["good"].sum())
    assert low < d < high < 0  # clearly worse: the interval excludes 0
    # A model against itself: exactly 0, no spread.
    assert bench.jaccard_difference_interval(counts["good"], counts["good"]) == (0.0, 0.0, 0.0)
    short = bench.jaccard_difference_interval(counts["worse"][:50], counts["good"][:50])
    assert short[0] < 0 and math.isnan(short[1]) and math.isnan(short[2])  # 5 blocks: no interval


def test_model_spec_options_reach_the_localizer(bench):
    """``+flips2`` and ``+bf16`` set the backend the benchmark's localizer runs; ``+mle`` its refinement; the label
    names them; an unknown option is one sentence naming it."""
    base, backend_cfg = bench.reference_backend()
    label, loc = bench.open_model_spec("broad_2d+mle+flips2+bf16", backend_cfg, base.model)
    assert label == "broad_2d+mle+flips2+bf16"
    assert (loc.backend_cfg.precision, loc.backend_cfg.test_time_flips) == ("bf16", 2)
    assert loc.refine == "mle"
    _, plain = bench.open_model_spec("broad_2d", backend_cfg, base.model)
    assert (plain.backend_cfg.precision, plain.backend_cfg.test_time_flips) == ("fp32", 1)
    with pytest.raises(SystemExit, match="unknown option 'fp8'"):
        bench.split_model_spec("broad_2d+fp8")


def test_two_checkpoints_of_one_file_name_are_refused_not_merged(bench, tmp_path):
    """Two runs' checkpoints both called ``m`` would share a label and one would vanish from the tables: the
    benchmark refuses them in one sentence; distinct labels each get their localizer."""
    from rtsmlm.localization.checkpoint import resolve

    shipped = resolve("default")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for suffix in (".safetensors", ".json"):
            (tmp_path / folder / ("m" + suffix)).write_bytes(shipped.with_suffix(suffix).read_bytes())
    base, backend_cfg = bench.reference_backend()
    with pytest.raises(SystemExit, match="has the label 'm' of an earlier one"):
        bench.open_model_specs([str(tmp_path / "a" / "m"), str(tmp_path / "b" / "m")], backend_cfg, base.model)
    both = bench.open_model_specs([str(tmp_path / "a" / "m"), "default+mle"], backend_cfg, base.model)
    assert list(both) == ["m", "default+mle"] and both["default+mle"].refine == "mle"


def test_edge_frame_benchmark_scores_both_paddings_and_restores_the_shipped_one(repo_root, capsys):
    """benchmarks/bench_edges.py on 12 frames, sequences of 2: every frame an edge frame, each padding scored
    against the same frames inside the movie, and the localizer's padding is the shipped one afterwards."""
    from rtsmlm.localization.localizer import StreamingLocalizer

    module = load_benchmark(repo_root, "bench_edges")
    assert module.main(["--frames", "12", "--lengths", "2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "L=2" in line]
    assert [line.split()[1].rstrip(":") for line in lines] == ["same", "reflect"] * 2  # two movies
    for line in lines:
        edge = float(line.split("edge frames ")[1].split()[0])
        inside = float(line.split("inside the movie ")[1].split()[0])
        assert 0.3 < edge <= 1.0 and 0.5 < inside <= 1.0, line
    assert StreamingLocalizer.edge_padding == "reflect"


def test_half_range_study_prints_the_range_and_fp16_rounding_below_bf16s(repo_root, monkeypatch, capsys):
    """benchmarks/study_half_range.py on one small batch: the CPU default's activations stay far under fp16's
    limit and fp16's rounding changes its p maps less than bf16's (8 against 11 bits of mantissa)."""
    study = load_benchmark(repo_root, "study_half_range")
    monkeypatch.setattr(sys, "argv", ["study_half_range.py", "--models", "broad_2d", "--batches", "1", "--size", "32"])
    study.main()
    row = capsys.readouterr().out.splitlines()[1].split()
    largest, limit, dp16, dp_bf16 = (float(v) for v in row[1:5])
    assert row[0] == "broad_2d" and limit == study.FP16_MAX and 10.0 < largest < limit / 10
    assert 0.0 < dp16 < dp_bf16
