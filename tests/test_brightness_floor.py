"""The brightness floor and its waiver for detections an adjacent frame confirms, whole-table and streamed."""

from __future__ import annotations

import numpy as np
import pytest

from rtsmlm.core.locs import LOC_DTYPE, concat
from rtsmlm.localization.brightness_floor import BrightnessFloor, kept_by_floor

FLOOR, RADIUS = 1000.0, 100.0


def _table(rows: list[tuple[int, float, float, float]]) -> np.ndarray:
    """(frame, x nm, y nm, photons) rows as a LOC_DTYPE table."""
    t = np.zeros(len(rows), LOC_DTYPE)
    for k, (f, x, y, n) in enumerate(rows):
        t[k]["frame"], t[k]["x"], t[k]["y"], t[k]["photons"] = f, x, y, n
    return t


def test_a_dim_detection_is_kept_only_beside_a_bright_one_in_an_adjacent_frame() -> None:
    t = _table([
        (5, 1000, 1000, 3000),  # bright: kept
        (6, 1050, 1000, 400),   # dim, 50 nm from frame 5's bright one: a molecule switching off mid-frame
        (4, 1000, 1080, 300),   # dim, 80 nm from it in the frame before: switching on
        (5, 1000, 1060, 300),   # dim beside a bright one of its own frame only: noise (or a duplicate)
        (7, 1000, 1000, 300),   # dim, two frames after: no
        (6, 1500, 1000, 300),   # dim, 500 nm from it: no
        (9, 3000, 3000, 500),   # dim confirmed by a dim one only: no
        (10, 3000, 3000, 500),
    ])
    assert kept_by_floor(t, FLOOR, RADIUS).tolist() == [True, True, True, False, False, False, False, False]
    assert kept_by_floor(t, 0.0, RADIUS).all()
    assert kept_by_floor(t[3:], FLOOR, RADIUS).sum() == 0  # no bright row at all


def _random_movie(seed: int, frames: int = 40) -> np.ndarray:
    """Molecules on for a few frames, dim in their first and last, plus dim noise: a stream with every case."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(30):
        start, length = int(rng.integers(0, frames)), int(rng.integers(1, 6))
        x, y = rng.uniform(0, 3000, 2)
        for f in range(start, min(frames, start + length)):
            edge = f in (start, start + length - 1)
            rows.append((f, x + rng.normal(0, 20), y + rng.normal(0, 20), rng.uniform(200, 900) if edge else 3000))
    for _ in range(60):
        rows.append((int(rng.integers(0, frames)), *rng.uniform(0, 3000, 2), rng.uniform(200, 900)))
    t = _table(rows)
    return t[np.argsort(t["frame"], kind="stable")]


def _key(t: np.ndarray) -> list[tuple]:
    return sorted(zip(t["frame"].tolist(), t["x"].tolist(), t["y"].tolist()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_in_any_batches_it_keeps_what_the_whole_table_keeps(seed: int) -> None:
    movie = _random_movie(seed)
    expected = movie[kept_by_floor(movie, FLOOR, RADIUS)]
    assert 0 < len(expected) < len(movie)
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, 40), size=12, replace=False))
    floor, out, dones = BrightnessFloor(FLOOR, RADIUS), [], []
    for lo, hi in zip([0, *cuts], [*cuts, 40]):
        got = floor.push(movie[(movie["frame"] >= lo) & (movie["frame"] < hi)], hi - 1)
        out.append(got)
        assert (got["frame"] <= floor.released_through).all()
        dones.append(floor.released_through)
    out.append(floor.finish())
    assert dones == [hi - 2 for hi in [*cuts, 40]]  # each push holds its newest frame back
    assert floor.released_through == 39
    got = concat(out)
    assert np.all(np.diff(got["frame"]) >= 0)  # released in frame order
    assert _key(got) == _key(expected)


def test_a_sequence_ends_with_finish_and_the_next_may_start_anywhere() -> None:
    movie = _random_movie(3)
    floor = BrightnessFloor(FLOOR, RADIUS)
    late = movie[movie["frame"] >= 20]
    first = concat([floor.push(late, 39), floor.finish()])
    assert _key(first) == _key(late[kept_by_floor(late, FLOOR, RADIUS)])
    early = movie[movie["frame"] < 20]  # frames skipped live, caught up after the run
    second = concat([floor.push(early[early["frame"] < 10], 9), floor.push(early[early["frame"] >= 10], 19),
                     floor.finish()])
    assert _key(second) == _key(early[kept_by_floor(early, FLOOR, RADIUS)])
    assert len(floor.push(movie[:0], -1)) == 0 and len(floor.finish()) == 0  # nothing pushed: nothing held


def test_without_a_floor_everything_passes_at_once() -> None:
    movie = _random_movie(4)
    floor = BrightnessFloor(0.0, RADIUS)
    got = floor.push(movie, 39)
    assert got is movie and floor.released_through == 39
    with pytest.raises(ValueError, match="min_photons"):
        BrightnessFloor(-1.0, RADIUS)


def test_holding_without_a_floor_releases_every_row_a_frame_late_with_its_neighbours() -> None:
    """``hold`` (the refiner's split check): no row dropped, each push holds its newest frame back, and what
    comes out has the localizations of the frames before and after it in ``neighbours``."""
    movie = _random_movie(5)
    floor, out = BrightnessFloor(0.0, RADIUS, hold=True), []
    for lo, hi in ((0, 7), (7, 8), (8, 25), (25, 40)):
        got = floor.push(movie[(movie["frame"] >= lo) & (movie["frame"] < hi)], hi - 1)
        assert floor.released_through == hi - 2 and (got["frame"] <= hi - 2).all()
        for f in set(got["frame"].tolist()):
            for g in (f - 1, f + 1):
                np.testing.assert_array_equal(floor.neighbours[floor.neighbours["frame"] == g], movie[movie["frame"] == g])
        out.append(got)
    out.append(floor.finish())
    assert _key(concat(out)) == _key(movie)
    assert set(floor.neighbours["frame"].tolist()) == {38, 39}  # the last frame's, and the one before


def test_batch_chunks_with_a_floor_keep_what_the_whole_movie_keeps(tmp_path) -> None:
    """A batch chunk reads one frame more on each side with a floor: its edge frames' verdicts read their
    neighbours' detections, which must come from whole windows, as in one pass over the movie."""
    from dataclasses import replace

    from rtsmlm.batch.plan import chunk_bounds
    from rtsmlm.batch.runner import _context
    from rtsmlm.batch.worker import ChunkTask, _camera, localize_chunk
    from rtsmlm.cli import main
    from rtsmlm.core import config as rconfig
    from rtsmlm.io.movies import open_movie
    from rtsmlm.localization.backends import open_backend
    from rtsmlm.localization.localizer import StreamingLocalizer, localize_movie

    assert main(["simulate", "--frames", "24", "--size", "32", "--seed", "3", "--density", "1.5",
                 "--out", str(tmp_path), "--quiet"]) == 0
    path = tmp_path / "movie.tif"
    cfg = rconfig.load(None, ["backend.threads=1", "backend.precision='fp32'", "backend.name='torch'"])
    with open_movie(path) as movie:
        frames, shape, camera = movie.read_range(0, movie.n_frames), movie.shape, _camera(cfg, str(path), movie)
    backend, meta = open_backend(cfg.backend, cfg.model.checkpoint)
    unfloored = localize_movie(StreamingLocalizer.for_run(backend, meta, camera, shape, cfg), frames)
    cfg = replace(cfg, model=replace(cfg.model, min_photons=float(np.median(unfloored["photons"]))))
    floored = StreamingLocalizer.for_run(backend, meta, camera, shape, cfg)
    whole = localize_movie(floored, frames)
    # What a chunk and a live run's catch-up of skipped frames read beyond their ends: one more with a floor.
    assert _context(cfg) == floored.context_frames == 2 and len(whole) < len(unfloored)
    chunks = [localize_chunk(cfg, ChunkTask(str(path), *b)).locs for b in chunk_bounds(len(frames), 3, _context(cfg))]
    got, want = np.array(_key(concat(chunks))), np.array(_key(whole))
    # The same rows; positions equal to float32 rounding (other batch compositions round differently).
    assert got.shape == want.shape and np.array_equal(got[:, 0], want[:, 0])
    assert np.abs(got[:, 1:] - want[:, 1:]).max() < 0.01


def test_batch_chunks_with_the_split_check_keep_what_the_whole_movie_keeps(tmp_path) -> None:
    """Refinement with its split check reads the adjacent frames' localizations like a floor: a chunk reads one
    frame more on each side, and the chunks give what one pass over the movie gives."""
    from dataclasses import replace

    from rtsmlm.batch.plan import chunk_bounds
    from rtsmlm.batch.runner import _context
    from rtsmlm.batch.worker import ChunkTask, _camera, localize_chunk
    from rtsmlm.cli import main
    from rtsmlm.core import config as rconfig
    from rtsmlm.io.movies import open_movie
    from rtsmlm.localization.backends import open_backend
    from rtsmlm.localization.localizer import StreamingLocalizer, localize_movie

    assert main(["simulate", "--frames", "24", "--size", "32", "--seed", "4", "--density", "1.5",
                 "--out", str(tmp_path), "--quiet"]) == 0
    path = tmp_path / "movie.tif"
    cfg = rconfig.load(None, ["backend.threads=1", "backend.precision='fp32'", "backend.name='torch'",
                              "model.refine='mle'"])
    with open_movie(path) as movie:
        frames, shape, camera = movie.read_range(0, movie.n_frames), movie.shape, _camera(cfg, str(path), movie)
    backend, meta = open_backend(cfg.backend, cfg.model.checkpoint)
    checked = StreamingLocalizer.for_run(backend, meta, camera, shape, cfg)
    whole = localize_movie(checked, frames)
    assert _context(cfg) == checked.context_frames == 2 and checked.floor.hold
    unchecked_cfg = replace(cfg, model=replace(cfg.model, merge_splits=False))
    assert _context(unchecked_cfg) == StreamingLocalizer.for_run(backend, meta, camera, shape, unchecked_cfg).context_frames == 1
    chunks = [localize_chunk(cfg, ChunkTask(str(path), *b)).locs for b in chunk_bounds(len(frames), 3, _context(cfg))]
    got, want = np.array(_key(concat(chunks))), np.array(_key(whole))
    assert got.shape == want.shape and np.array_equal(got[:, 0], want[:, 0])
    assert np.abs(got[:, 1:] - want[:, 1:]).max() < 0.01


def test_with_refinement_the_floor_judges_the_networks_photons_and_only_kept_rows_are_fitted() -> None:
    """The floor reads the network's read-out photons (what calibrate scores it on), not the fit's, and the fit
    runs on what the floor released, each frame's photon image kept until then."""
    from rtsmlm.core.config import BackendConfig, from_dict
    from rtsmlm.localization.backends import open_backend
    from rtsmlm.localization.brightness_floor import CONFIRM_RADIUS_PX
    from rtsmlm.localization.localizer import StreamingLocalizer
    from rtsmlm.sim import Simulator

    sim = Simulator(from_dict({"sim": {"seed": 9, "size": 32, "density": 0.3}}))
    movie, _ = sim.movie(12)
    backend, meta = open_backend(BackendConfig(name="torch", device="cpu", precision="fp32", threads=1), "default",
                                 jit=False)

    def run(**kwargs) -> tuple[np.ndarray, StreamingLocalizer]:
        loc = StreamingLocalizer(backend, meta, sim.camera, (32, 32), 0.6, 0.3, batch_size=1, psf_sigma_px=1.3,
                                 **kwargs)
        parts = [loc.push(movie[i : i + 1], np.array([i]))[0] for i in range(len(movie))]
        parts.append(loc.finish()[0])
        assert not loc._photon_frames  # every frame's image let go once its localizations were released
        return concat(parts), loc

    unfloored, _ = run()
    fitted, _ = run(refine="mle")  # the same rows, photons fitted
    radius = CONFIRM_RADIUS_PX * sim.camera.pixel_size_nm
    # A floor between a row's network and fitted photons where the two readings keep different rows: the
    # case that tells which photons the floor reads.
    floor = next(f for f in np.sort((unfloored["photons"] + fitted["photons"]) / 2.0)
                 if (kept_by_floor(unfloored, f, radius) != kept_by_floor(fitted, f, radius)).any())
    network_floored, _ = run(min_photons=floor)
    fitted_floored, loc = run(min_photons=floor, refine="mle")
    assert 0 < len(network_floored) < len(unfloored) and loc._refiner.refined > 0
    np.testing.assert_array_equal(fitted_floored["frame"], network_floored["frame"])
    np.testing.assert_array_equal(fitted_floored["p"], network_floored["p"])  # the same detections kept
    assert (fitted_floored["photons"] != network_floored["photons"]).any()  # and fitted
