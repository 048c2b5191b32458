"""Tiling: plans partition the frame with aligned, equal tiles; split/stitch round-trips; the analytic
receptive radius bounds the network's real one; tiled streaming equals untiled inference (everywhere
with a full margin, away from tile borders with a small one); automatic sizes follow free memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtsmlm.acquisition.source import CameraModel
from rtsmlm.localization import checkpoint
from rtsmlm.localization.backends.torch_backend import TorchBackend
from rtsmlm.localization.localizer import StreamingLocalizer, localize_movie
from rtsmlm.localization.net import DecodeNet
from rtsmlm.localization.tiling import bytes_per_pixel, choose_sizes, make_plan, receptive_radius
from rtsmlm.training.data import Scales

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("shape,tile,margin", [((50, 70), 16, 6), ((64, 64), 32, 8), ((10, 10), None, 0),
                                               ((33, 17), 8, 0)])
def test_plan_tiles_are_aligned_equal_and_their_cores_partition_the_frame(shape, tile, margin) -> None:
    plan = make_plan(*shape, size_multiple=4, tile=tile, margin=margin)
    assert plan.padded_height % 4 == 0 and plan.padded_width % 4 == 0
    assert plan.padded_height >= shape[0] and plan.padded_width >= shape[1]
    owner = np.zeros((plan.padded_height, plan.padded_width), int)
    for t in plan.tiles:
        assert t.y0 % 4 == 0 and t.x0 % 4 == 0
        assert 0 <= t.y0 and t.y0 + plan.tile_height <= plan.padded_height
        assert 0 <= t.x0 and t.x0 + plan.tile_width <= plan.padded_width
        # The core lies inside the tile window, at least `margin` from window edges that are not frame edges.
        assert t.y0 <= t.cy0 and t.cy1 <= t.y0 + plan.tile_height
        if t.cy0 > 0:
            assert t.cy0 - t.y0 >= plan.margin
        if t.cx1 < plan.padded_width:
            assert t.x0 + plan.tile_width - t.cx1 >= plan.margin
        owner[t.cy0 : t.cy1, t.cx0 : t.cx1] += 1
    assert (owner == 1).all()


def test_split_then_stitch_gives_back_the_frames() -> None:
    plan = make_plan(37, 45, size_multiple=4, tile=12, margin=4)
    frames = torch.rand(3, 37, 45)
    tiles = plan.split(frames)
    assert tiles.shape == (3 * plan.n_tiles, 1, plan.tile_height, plan.tile_width)
    assert torch.equal(plan.stitch(tiles)[:, 0], frames)


def test_receptive_radius_bounds_the_real_receptive_field() -> None:
    torch.manual_seed(0)
    for depth in (1, 2):
        net = DecodeNet(window=3, width=2, depth=depth)
        size = 2 * receptive_radius(depth) + 2 ** (depth + 2)
        size -= size % 2**depth
        x = torch.rand(1, 3, size, size, requires_grad=True)
        c = size // 2
        net(x)[0, 2, c, c].backward()
        rows, cols = np.nonzero(x.grad.abs().sum(dim=(0, 1)).numpy())
        extent = max(abs(rows - c).max(), abs(cols - c).max())
        assert extent <= receptive_radius(depth)
        assert extent >= receptive_radius(depth) - 2**depth  # the bound is tight, not merely safe


@pytest.fixture(scope="module")
def depth1(tmp_path_factory):
    torch.manual_seed(3)
    net = DecodeNet(window=3, width=6, depth=1)
    with torch.no_grad():
        net.head_p[-1].bias.fill_(0.0)
    meta = checkpoint.ModelMeta(width=6, depth=1, window=3, pixel_size_nm=100.0, camera={}, psf={},
                                scales=Scales(50.0, 5000.0, 200.0, 1.0), train={})
    prefix = tmp_path_factory.mktemp("ckpt") / "d1"
    checkpoint.save(prefix, net, meta)
    model, meta = checkpoint.load(prefix)
    return TorchBackend(model, threads=1, jit=False), meta


def _maps(backend, meta, movie, **kw) -> tuple[torch.Tensor, StreamingLocalizer]:
    got = {}
    loc = StreamingLocalizer(backend, meta, CameraModel(), movie.shape[1:], 0.5, 0.3, batch_size=2,
                             maps_sink=lambda m, f: got.update({i: x.clone() for i, x in zip(f, m)}), **kw)
    localize_movie(loc, movie)
    return torch.stack([got[i] for i in range(len(movie))]), loc


def test_tiled_streaming_equals_untiled_with_a_full_margin(depth1) -> None:
    backend, meta = depth1
    movie = np.random.default_rng(0).integers(90, 2000, size=(4, 70, 90)).astype(np.uint16)
    whole, loc_whole = _maps(backend, meta, movie, tile=None)
    tiled, loc_tiled = _maps(backend, meta, movie, tile=24)
    assert loc_whole.plan.n_tiles == 1 and loc_tiled.plan.n_tiles > 4
    assert loc_tiled.plan.margin >= receptive_radius(1)
    assert (tiled - whole).abs().max().item() <= 1e-4


def test_tiles_run_a_few_at_a_time_give_the_same_maps(depth1, monkeypatch) -> None:
    """A huge frame's tiles go through the backend a group at a time (bounded memory): same result."""
    backend, meta = depth1
    movie = np.random.default_rng(2).integers(90, 2000, size=(5, 70, 90)).astype(np.uint16)
    together, loc = _maps(backend, meta, movie, tile=24)
    calls = []
    decode = backend.decode
    monkeypatch.setattr(backend, "decode", lambda x: calls.append(len(x)) or decode(x))
    original_init = StreamingLocalizer.__init__

    def few_tiles(self, *a, **kw):
        original_init(self, *a, **kw)
        self._tiles_per_call = 3

    monkeypatch.setattr(StreamingLocalizer, "__init__", few_tiles)
    grouped, loc_grouped = _maps(backend, meta, movie, tile=24)
    assert loc_grouped.plan.n_tiles > 3 and max(calls[1:]) <= 3  # calls[0]: the warm-up in __init__
    assert (grouped - together).abs().max().item() <= 1e-5


class _ReplayLikeBackend:
    """The CPU backend returning results the way a CUDA-graph replay does (the Backend protocol allows it):
    one output tensor per half and input shape, overwritten by the next call of that shape; and a static
    decoder input per shape (``decode_input``) that the localizer assembles the windows in."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self._outputs: dict[tuple, torch.Tensor] = {}
        self._static_inputs: dict[tuple, torch.Tensor] = {}
        self.decoded_in_place = 0

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def decode_input(self, shape, dtype):
        if shape not in self._static_inputs:
            self._static_inputs[shape] = torch.empty(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
        return self._static_inputs[shape]

    def _replay(self, half, x, result):
        out = self._outputs.setdefault((half, tuple(x.shape)), torch.empty_like(result))
        return out.copy_(result)

    def encode(self, x):
        return self._replay("encode", x, self._backend.encode(x))

    def decode(self, x):
        static = self._static_inputs.get(tuple(x.shape))
        self.decoded_in_place += static is not None and static.data_ptr() == x.data_ptr()
        return self._replay("decode", x, self._backend.decode(x))


@pytest.mark.parametrize("tiles_per_call", [None, 3])
def test_results_the_backend_overwrites_on_its_next_call_give_the_same_maps(depth1, monkeypatch, tiles_per_call) -> None:
    """The localizer copies out what it keeps before the backend's next call (feature cache, encoder chunks,
    decoder tile groups), as it must when CUDA graphs return their static outputs uncloned."""
    backend, meta = depth1
    movie = np.random.default_rng(5).integers(90, 2000, size=(5, 70, 90)).astype(np.uint16)
    if tiles_per_call:
        original_init = StreamingLocalizer.__init__

        def few_tiles(self, *a, **kw):
            original_init(self, *a, **kw)
            self._tiles_per_call = tiles_per_call

        monkeypatch.setattr(StreamingLocalizer, "__init__", few_tiles)
    replaying = _ReplayLikeBackend(backend)
    expected, loc = _maps(backend, meta, movie, tile=24)
    got, _ = _maps(replaying, meta, movie, tile=24)
    assert loc.plan.n_tiles > 3
    assert replaying.decoded_in_place > 0  # the windows were written into the static input, not copied there
    assert torch.equal(got, expected)


def test_tiled_streaming_with_a_small_margin_matches_away_from_tile_borders(depth1) -> None:
    backend, meta = depth1
    movie = np.random.default_rng(1).integers(90, 2000, size=(3, 96, 144)).astype(np.uint16)
    whole, _ = _maps(backend, meta, movie)
    margin = 4
    tiled, loc = _maps(backend, meta, movie, tile=48, margin=margin)
    far = np.ones(movie.shape[1:], bool)  # pixels whose receptive field lies inside their tile window
    safe = receptive_radius(1) - margin
    for t in loc.plan.tiles:
        for lo, hi, frame_hi, axis in ((t.cy0, t.cy1, loc.plan.padded_height, 0), (t.cx0, t.cx1, loc.plan.padded_width, 1)):
            for edge, is_frame_edge in ((lo, lo == 0), (hi, hi == frame_hi)):
                if not is_frame_edge:
                    sl = [slice(None), slice(None)]
                    sl[axis] = slice(max(edge - safe, 0), edge + safe)
                    far[tuple(sl)] = False
    assert far.sum() > 0.2 * far.size
    diff = (tiled - whole).abs().amax(dim=(0, 1)).numpy()
    assert diff[far].max() <= 1e-4
    assert diff[~far].max() > 1e-4  # the margin really is too small near the borders


def test_automatic_sizes_follow_free_memory() -> None:
    per_px = bytes_per_pixel(3, 16, 2)
    roomy = choose_sizes(2048, 2048, 4, 3, 16, 2, free_bytes=64 << 30, max_batch=8, depth=2)
    assert roomy.plan.n_tiles == 1 and roomy.batch >= 1
    tight = choose_sizes(2048, 2048, 4, 3, 16, 2, free_bytes=200 << 20, max_batch=8, depth=2)
    assert tight.plan.n_tiles > 1
    assert tight.plan.tile_height * tight.plan.tile_width * per_px * tight.batch <= (200 << 20) * 0.25 or tight.batch == 1
    small = choose_sizes(64, 64, 4, 3, 16, 2, free_bytes=8 << 30, max_batch=16, depth=2)
    assert small.plan.n_tiles == 1 and small.batch == 16
    capped = choose_sizes(256, 256, 4, 3, 16, 2, free_bytes=8 << 30, max_batch=16, depth=2, max_pixels=1 << 16)
    assert capped.batch == 1
    assert choose_sizes(64, 64, 4, 3, 16, 2, free_bytes=8 << 30, max_batch=16, max_pixels=1 << 16).batch == 16
    forced = choose_sizes(100, 100, 4, 3, 16, 2, free_bytes=8 << 30, tile=32, margin=8, batch=3)
    assert forced.batch == 3 and forced.plan.n_tiles == 16


def test_free_gpu_memory_counts_the_blocks_torch_caches_but_does_not_use(monkeypatch) -> None:
    import torch

    from rtsmlm.localization.tiling import available_memory_bytes

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (100 << 20, 1000 << 20))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda dev: 50 << 20)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev: 20 << 20)
    assert available_memory_bytes("cuda:0") == 130 << 20
