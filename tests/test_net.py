"""DecodeNet: shapes, output ranges, encode/decode streaming equivalence, size checks, channels_last,
bf16 autocast and ONNX export with dynamic batch/H/W; widening and narrowing a trained net."""

from __future__ import annotations

import pytest
import torch

from rtsmlm.localization.net import (
    CH_BG,
    CH_P,
    CH_PHOT,
    CH_SIG_PHOT,
    CH_SIG_Z,
    CH_X,
    CH_Z,
    N_OUT_CHANNELS,
    SIGMA_MIN,
    SIGMA_SCALE,
    DecodeNet,
    narrowed,
    parameter_count,
    widened,
)


@pytest.fixture()
def net() -> DecodeNet:
    torch.manual_seed(0)
    return DecodeNet(window=3, width=8, depth=2).eval()


def test_output_shape_and_channel_ranges(net: DecodeNet) -> None:
    x = torch.randn(2, 3, 16, 24) * 3
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, N_OUT_CHANNELS, 16, 24)
    assert torch.isfinite(out).all()
    for ch in (CH_P, CH_PHOT, CH_BG):
        assert (out[:, ch] > 0).all() and (out[:, ch] < 1).all()
    assert (out[:, CH_X : CH_Z + 1].abs() < 1).all()
    sig = out[:, CH_SIG_PHOT : CH_SIG_Z + 1]
    assert (sig >= SIGMA_MIN).all() and (sig <= SIGMA_MIN + SIGMA_SCALE).all()


def test_streaming_encode_once_then_decode_equals_batched_forward(net: DecodeNet) -> None:
    movie = torch.rand(6, 16, 16)  # 6 frames -> windows centred on frames 1..4
    with torch.no_grad():
        windows = torch.stack([movie[i : i + 3] for i in range(4)])
        batched = net(windows)
        # Streaming: each frame encoded once, alone (batch 1), features reused by every window.
        feats = [net.encode(movie[i].reshape(1, 1, 16, 16)) for i in range(6)]
        streamed = torch.cat([net.decode(torch.cat(feats[i : i + 3], dim=1)) for i in range(4)])
    torch.testing.assert_close(streamed, batched, rtol=1e-5, atol=1e-5)


def test_frame_order_matters(net: DecodeNet) -> None:
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        forward_order = net(x)
        reversed_order = net(x.flip(1))
    assert (forward_order - reversed_order).abs().max() > 1e-4


def test_size_not_multiple_of_two_to_depth_is_rejected(net: DecodeNet) -> None:
    with pytest.raises(ValueError, match="18x16"):
        net(torch.rand(1, 3, 18, 16))
    with pytest.raises(ValueError, match="multiples of 4"):
        net.encode(torch.rand(1, 1, 16, 10))


def test_even_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="window"):
        DecodeNet(window=2)


def test_gradients_reach_the_frame_encoder(net: DecodeNet) -> None:
    net.train()
    net(torch.rand(2, 3, 16, 16)).sum().backward()
    first_conv = net.encoder.inc[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_channels_last_matches_contiguous(net: DecodeNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        reference = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_runs_and_stays_close(net: DecodeNet) -> None:
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        reference = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
    assert out.dtype == torch.bfloat16
    # bf16 has ~3 significant digits; outputs live in (-1, 3.01).
    assert (out.float() - reference).abs().max() < 0.1


def test_parameter_count_grows_with_width() -> None:
    counts = [parameter_count(DecodeNet(width=w, depth=2)) for w in (16, 24, 32)]
    assert counts[0] < counts[1] < counts[2]


def _check_onnx_matches(net: DecodeNet, path: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    # A batch size and image size different from the export example: the axes must be dynamic.
    x = torch.rand(3, 3, 24, 32)
    (onnx_out,) = session.run(None, {"frames": x.numpy()})
    with torch.no_grad():
        torch_out = net(x).numpy()
    assert onnx_out.shape == torch_out.shape
    assert abs(onnx_out - torch_out).max() < 1e-4


def test_onnx_export_torchscript_dynamic_axes_matches_torch(net: DecodeNet, tmp_path) -> None:
    pytest.importorskip("onnx")
    path = str(tmp_path / "net.onnx")
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        net, (torch.rand(1, 3, 16, 16),), path, input_names=["frames"], output_names=["maps"],
        opset_version=17, dynamic_axes={"frames": axes, "maps": axes}, dynamo=False,
    )
    _check_onnx_matches(net, path)


@pytest.mark.slow
def test_onnx_export_dynamo_dynamic_shapes_matches_torch(net: DecodeNet, tmp_path) -> None:
    pytest.importorskip("onnxscript")
    path = str(tmp_path / "net.onnx")
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    torch.onnx.export(
        net, (torch.rand(2, 3, 16, 16),), path, input_names=["frames"], output_names=["maps"],
        opset_version=18, dynamic_shapes={"x": dims}, dynamo=True,
    )
    _check_onnx_matches(net, path)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_widened_net_computes_the_same_outputs_and_trains_its_added_channels(in_channels):
    """net.widened: every convolution of a width-4 net copied into a width-8 one (the window's frames and
    the up-steps' skips are concatenations, each part grows); same outputs, and a gradient step reaches
    the added channels through their zero read-out weights."""
    torch.manual_seed(0)
    small = DecodeNet(window=3, width=4, depth=2, in_channels=in_channels)
    wide = widened(small, 8, seed=1)
    assert wide.width == 8 and parameter_count(wide) > 3 * parameter_count(small)
    x = torch.randn(2, 3, in_channels, 16, 16) if in_channels > 1 else torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(wide(x), small(x), atol=1e-6)
    wide(x)[:, CH_P].sum().backward()
    read_out = wide.head_p[2].weight.grad[0, :, 0, 0]
    assert read_out[4:8].abs().sum() > 0  # the head learns to read the added channels
    with pytest.raises(ValueError, match="narrower"):
        widened(wide, 4)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_narrowed_net_keeps_the_channels_that_carry_the_outputs(in_channels):
    """net.narrowed: a width-8 net whose channels 4-7 are silent (zero filters: a widened width-4 net with
    the added channels' filters zeroed) narrowed to 4 keeps exactly the width-4 net's channels — through
    the window's concatenated frames and the up-steps' skips — so it computes the width-4 net's outputs;
    narrowing to the same width changes nothing."""
    torch.manual_seed(0)
    small = DecodeNet(window=3, width=4, depth=2, in_channels=in_channels)
    wide = widened(small, 8, seed=1)
    with torch.no_grad():
        for conv in wide.modules():
            if isinstance(conv, torch.nn.Conv2d) and conv.out_channels > 10:  # not the heads' read-outs
                conv.weight[conv.out_channels // 2:] = 0.0
    x = torch.randn(2, 3, in_channels, 16, 16) if in_channels > 1 else torch.randn(2, 3, 16, 16)
    back = narrowed(wide, 4)
    assert back.width == 4 and parameter_count(back) == parameter_count(small)
    with torch.no_grad():
        assert torch.allclose(back(x), small(x), atol=1e-6)
        assert torch.equal(narrowed(small, 4)(x), small(x))
        # Narrowing a net whose channels all matter changes its outputs, and keeps them finite and in range.
        half = narrowed(widened(small, 8, seed=2), 6)(x)
    assert torch.isfinite(half).all() and (half[:, CH_P] > 0).all() and (half[:, CH_P] < 1).all()
    with pytest.raises(ValueError, match="wider"):
        narrowed(small, 8)
