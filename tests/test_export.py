"""ONNX export of the encoder and decoder graphs: valid models with the documented names, dynamic batch
and image axes, fp32 results equal to torch at shapes other than the export example, fp16 graphs typed
as TensorRT 11 needs them, and the on-disk cache keyed by model hash."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtsmlm.localization.net import DecodeNet
from rtsmlm.localization.onnx_export import (
    DECODER_INPUT,
    DECODER_OUTPUT,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    cached_onnx,
    export_onnx,
)

onnx = pytest.importorskip("onnx")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net() -> DecodeNet:
    torch.manual_seed(0)
    return DecodeNet(window=3, width=6, depth=2).eval()


@pytest.fixture(scope="module")
def fp32_graphs(net, tmp_path_factory):
    return export_onnx(net, tmp_path_factory.mktemp("onnx"), precision="fp32")


def _io(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    def desc(v):
        t = v.type.tensor_type
        return v.name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]
    return desc(model.graph.input[0]), desc(model.graph.output[0])


def test_fp32_graphs_have_names_and_dynamic_axes(fp32_graphs, net) -> None:
    (ein, etype, eshape), (eout, _, eoshape) = _io(fp32_graphs.encoder)
    assert (ein, eout) == (ENCODER_INPUT, ENCODER_OUTPUT) and etype == onnx.TensorProto.FLOAT
    assert eshape[1] == 1 and eoshape[1] == net.width
    (din, _, dshape), (dout, _, doshape) = _io(fp32_graphs.decoder)
    assert (din, dout) == (DECODER_INPUT, DECODER_OUTPUT)
    assert dshape[1] == net.window * net.width and doshape[1] == 10
    for shape in (eshape, eoshape, dshape, doshape):
        assert all(isinstance(d, str) for d in (shape[0], shape[2], shape[3])), shape


def test_fp32_graphs_match_torch_at_other_shapes(fp32_graphs, net) -> None:
    ort = pytest.importorskip("onnxruntime")
    enc = ort.InferenceSession(str(fp32_graphs.encoder), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(fp32_graphs.decoder), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 1, 12, 20) * 4
    (feats,) = enc.run(None, {ENCODER_INPUT: x.numpy()})
    with torch.no_grad():
        ref_feats = net.encode(x)
        window = torch.cat([ref_feats[0:2], ref_feats[1:3], ref_feats[2:4]], dim=1)
        ref_maps = net.decode(window)
    assert np.abs(feats - ref_feats.numpy()).max() < 1e-4
    (maps,) = dec.run(None, {DECODER_INPUT: window.numpy()})
    assert maps.shape == (2, 10, 12, 20)
    assert np.abs(maps - ref_maps.numpy()).max() < 1e-4


def test_fp16_graphs_take_fp32_frames_and_pass_fp16_features(net, tmp_path) -> None:
    graphs = export_onnx(net, tmp_path, precision="fp16")
    (_, in_type, _), (_, feat_type, _) = _io(graphs.encoder)
    (_, din_type, _), (_, maps_type, _) = _io(graphs.decoder)
    assert in_type == onnx.TensorProto.FLOAT
    assert feat_type == din_type == maps_type == onnx.TensorProto.FLOAT16
    ort = pytest.importorskip("onnxruntime")
    try:
        enc = ort.InferenceSession(str(graphs.encoder), providers=["CPUExecutionProvider"])
        dec = ort.InferenceSession(str(graphs.decoder), providers=["CPUExecutionProvider"])
        x = torch.rand(3, 1, 16, 16)
        (feats,) = enc.run(None, {ENCODER_INPUT: x.numpy()})
    except Exception as e:  # ONNX Runtime's CPU provider lacks some fp16 kernels on some builds
        pytest.skip(f"ONNX Runtime cannot run the fp16 graph on this CPU build: {e}")
    with torch.no_grad():
        ref = net.encode(x)
    rel = np.abs(feats.astype(np.float32) - ref.numpy()).max() / ref.abs().max().item()
    assert rel < 1e-2
    (maps,) = dec.run(None, {DECODER_INPUT: np.concatenate([feats[:1], feats[1:2], feats[2:]], axis=1)})
    assert maps.dtype == np.float16 and maps.shape == (1, 10, 16, 16)


def test_cache_reuses_graphs_of_the_same_model_and_separates_others(net, tmp_path) -> None:
    first = cached_onnx(net, "a" * 64, tmp_path)
    stamp = first.encoder.stat().st_mtime_ns
    again = cached_onnx(net, "a" * 64, tmp_path)
    assert again.encoder == first.encoder and again.encoder.stat().st_mtime_ns == stamp
    other = cached_onnx(net, "b" * 64, tmp_path)
    assert other.encoder.parent != first.encoder.parent
    assert (first.encoder.parent / "source.json").is_file()


def test_bad_precision_is_rejected(net, tmp_path) -> None:
    with pytest.raises(ValueError, match="'bf16'"):
        export_onnx(net, tmp_path, precision="bf16")


def test_export_command_writes_both_graphs_and_names_a_bad_checkpoint(net, tmp_path, capsys) -> None:
    from rtsmlm.cli.export import export_main
    from rtsmlm.localization import checkpoint
    from rtsmlm.training.data import Scales

    meta = checkpoint.ModelMeta(width=6, depth=2, window=3, pixel_size_nm=100.0, camera={}, psf={},
                                scales=Scales(50.0, 5000.0, 200.0, 1.0), train={})
    checkpoint.save(tmp_path / "m", net, meta)
    assert export_main(["--checkpoint", str(tmp_path / "m"), "--out", str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx" / "m.encoder.onnx").is_file() and (tmp_path / "onnx" / "m.decoder.onnx").is_file()
    assert export_main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "nope.json" in capsys.readouterr().err
