"""Exported networks: ONNX (run with onnxruntime) and TorchScript match the PyTorch logits."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from featurebank import FeatureBankError, load_model


@pytest.mark.parametrize("model", ["ft", "runs/logreg.joblib", "runs/mlp.joblib"])
def test_onnx_export_runs_in_onnxruntime_with_the_same_logits(trained, tmp_path, model):
    ort = pytest.importorskip("onnxruntime")  # the [dev] extra installs it
    tmp, _ = trained
    predictor = load_model(tmp / model)
    path = predictor.export(tmp_path / "m.onnx")
    images = np.load(tmp / "d.npz")["test_images"][:9]
    x = predictor.backbone.preprocess(torch.from_numpy(images), 32)
    with torch.no_grad():
        expected = predictor.network(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x.numpy()})  # batch 9: the batch is not fixed
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert (logits.argmax(1) == expected.argmax(1)).all()
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["classes"] == ["red", "green", "blue"] and meta["input"]["shape"][1:] == [3, 32,
                                                                                        32]
    spec = predictor.spec
    assert meta["preprocessing"]["mean"] == list(spec.mean) and meta["preprocessing"]["std"] == \
        list(spec.std) and meta["preprocessing"]["resize"] == "device"
    assert meta["preprocessing"]["decode"] is None  # arrays: nothing to decode


def test_torchscript_export_via_the_cli(trained, tmp_path, capsys):
    tmp, _ = trained
    proc = run_cli("export", str(tmp / "ft"), "--format", "torchscript", "--out",
                   str(tmp_path / "m.pt"), capsys=capsys)
    assert "wrote" in proc.stdout
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    predictor = load_model(tmp / "ft")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), predictor.network(x))
    assert json.loads((tmp_path / "m.pt.json").read_text())["format"] == "torchscript"


def test_the_grafted_network_is_a_plain_module_torch_export_takes(trained):
    tmp, _ = trained
    net = load_model(tmp / "ft").network
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(net, (x,))
    torch.testing.assert_close(program.module()(x), net(x))


def test_a_knn_head_has_no_network_to_export(trained, tmp_path, capsys):
    tmp, _ = trained
    with pytest.raises(FeatureBankError, match="k-NN head has no torch form"):
        load_model(tmp / "runs" / "knn.joblib").export(tmp_path / "k.onnx")
    proc = run_cli("export", str(tmp / "runs" / "knn.joblib"), "--out", str(tmp_path / "k.onnx"),
                   "--format", "onnx", check=False, capsys=capsys)
    assert proc.returncode == 2 and "k-NN head" in proc.stderr
    assert not (tmp_path / "k.onnx").exists()


def test_onnx_export_without_onnx_names_the_extra(trained, tmp_path, monkeypatch):
    import sys

    tmp, _ = trained
    predictor = load_model(tmp / "ft")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(FeatureBankError, match=r'needs the onnx package: pip install '
                                               r'"featurebank\[onnx\]"'):
        predictor.export(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
