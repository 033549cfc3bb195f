"""Temperature scaling and the reliability measure: the temperature minimises the log loss,
predictions do not move, and calibrated heads and fine-tuned models carry it through save,
load, predict and export."""

import json

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from conftest import blobs
from featurebank import FeatureBankError, finetune, fit_heads, load_head, load_model
from featurebank.heads import (LogisticHead, MLPHead, TemperatureScaledClassifier,
                               fit_temperature, is_graftable, reliability, to_torch)
from featurebank.heads.calibration import calibrated_parts


def _overconfident(n=3000, k=4, factor=3.0, seed=0):
    """Labels drawn from softmax(z) and the logits factor * z: calibrated by T = factor."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k)) * 1.5
    y = np.array([rng.choice(k, p=p) for p in softmax(z, 1)])
    return z * factor, y


def test_the_temperature_minimises_the_log_loss():
    z, y = _overconfident()
    t = fit_temperature(z, y)
    assert t == pytest.approx(3.0, rel=0.1)  # what made them overconfident
    grid = np.exp(np.linspace(-2, 3, 2001))
    nll = [-log_softmax(z / g, 1)[np.arange(len(y)), y].mean() for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nll))], rel=3e-3)
    # one binary score column: a sigmoid
    s = z[:, 1] - z[:, 0]
    two = fit_temperature(np.column_stack([np.zeros_like(s), s]), (y == 1).astype(int))
    assert fit_temperature(s, (y == 1).astype(int)) == pytest.approx(two, rel=1e-6)
    with pytest.raises(ValueError, match="needs held-out rows"):
        fit_temperature(z[:0], y[:0])


def test_reliability_bins_and_expected_calibration_error():
    proba = np.array([[0.92, 0.08], [0.9, 0.1], [0.62, 0.38], [0.35, 0.65]])
    y = np.array([0, 1, 0, 1])
    rel = reliability(proba, y)
    assert sum(rel.count) == 4 and len(rel.count) == 15
    # 15 bins of width 1/15: 0.92 and 0.9 share bin 13 (accuracy 1/2, confidence 0.91),
    # 0.62 and 0.65 bin 9 (accuracy 1, confidence 0.635)
    assert rel.count[13] == 2 and rel.accuracy[13] == 0.5
    assert rel.confidence[13] == pytest.approx(0.91) and rel.count[9] == 2
    expected = (2 * abs(0.5 - 0.91) + 2 * abs(1.0 - 0.635)) / 4
    assert rel.ece == pytest.approx(expected)
    assert np.isnan(rel.accuracy[0])  # an empty bin
    named = reliability(proba, np.array(["a", "b", "a", "b"]), classes=np.array(["a", "b"]))
    np.testing.assert_equal(named.to_json(), rel.to_json())
    text = json.dumps(rel.to_json(), allow_nan=False)  # strict JSON: empty bins are null
    np.testing.assert_equal(type(rel).from_json(json.loads(text)).accuracy, rel.accuracy)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("Head", [lambda: LogisticHead(C=10.0), lambda: MLPHead(
    (64,), weight_decay=0.0, max_iter=150, early_stopping=False, random_state=0)])
def test_a_temperature_lowers_held_out_log_loss_and_keeps_predictions(Head):
    X, y = blobs(1200, d=20, n_classes=3, spread=0.35)
    head = Head().fit(X[:600], y[:600])  # weakly regularised: overconfident out of sample
    cal = TemperatureScaledClassifier(head).fit(X[600:900], y[600:900])
    assert cal.temperature_ != pytest.approx(1.0, abs=0.05)
    for rows in (slice(600, 900), slice(900, None)):  # validation, and unseen rows
        before = -np.log(head.predict_proba(X[rows])[np.arange(300), y[rows]]).mean()
        after = -np.log(cal.predict_proba(X[rows])[np.arange(300), y[rows]]).mean()
        assert after < before
    np.testing.assert_array_equal(cal.predict(X), head.predict(X))
    np.testing.assert_allclose(cal.decision_function(X), head.decision_function(X)
                               / cal.temperature_)
    # still a network: the head's own logits (the temperature is applied after them)
    assert is_graftable(cal)
    with torch.no_grad():
        np.testing.assert_allclose(to_torch(cal)(torch.from_numpy(X)).numpy(),
                                   to_torch(head)(torch.from_numpy(X)).numpy())
    assert calibrated_parts(cal) == (head, cal.temperature_)
    assert calibrated_parts(head) == (head, 1.0)
    with pytest.raises(ValueError, match=r"labels \[7\] that the estimator was not fitted on"):
        TemperatureScaledClassifier(head).fit(X[:10], np.full(10, 7))


def test_calibrated_heads_and_fine_tunes_predict_and_export_with_their_temperature(trained,
                                                                                   tmp_path):
    tmp, bank = trained
    board = fit_heads(bank, heads=["logreg"], out=tmp_path / "runs", calibrate=True,
                      progress=False)
    t = board["rows"][0]["temperature"]
    images = np.load(tmp / "d.npz")["test_images"]
    X, _ = bank.load("test")
    est = load_head(tmp_path / "runs" / "logreg.joblib")
    model = load_model(tmp_path / "runs" / "logreg.joblib")
    assert model.temperature == t == est.temperature_
    np.testing.assert_allclose(model.predict_proba(images), est.predict_proba(X), atol=1e-5)
    # the network predicts as the estimator: its logits over the temperature
    with torch.no_grad():
        logits = model.network(model.backbone.preprocess(torch.from_numpy(images), 32))
    np.testing.assert_allclose(torch.softmax(logits / t, 1).numpy(), est.predict_proba(X),
                               atol=1e-4)
    model.export(tmp_path / "head.pt", format="torchscript")
    card = json.loads((tmp_path / "head.pt.json").read_text())
    assert card["output"]["temperature"] == t and "logits / temperature" in card["output"][
        "softmax"]
    # the fine-tune's own temperature, from its validation split
    summary = finetune(bank, runs=tmp_path / "runs", out=tmp_path / "ft", epochs=1,
                       batch_size=32, handoff_samples=64, progress=False, calibrate=True)
    best = json.loads((tmp_path / "ft" / "best_model.json").read_text())
    c = best["calibration"]
    assert best["temperature"] == c["temperature"] == summary["temperature"] > 0
    assert c["val_log_loss_after"] <= c["val_log_loss_before"] + 1e-9
    assert sum(c["test_reliability_before"]["count"]) == bank.num_rows("test")
    ft = load_model(tmp_path / "ft")
    assert ft.temperature == best["temperature"]
    with torch.no_grad():
        logits = ft.network(ft.backbone.preprocess(torch.from_numpy(images), 32))
    np.testing.assert_allclose(ft.predict_proba(images),
                               torch.softmax(logits / ft.temperature, 1).numpy(), atol=1e-6)
    ft.export(tmp_path / "ft.pt", format="torchscript")
    assert json.loads((tmp_path / "ft.pt.json").read_text())["output"]["temperature"] == \
        best["temperature"]
    # the same run with --calibrate is up to date; without it, it is another run
    again = finetune(bank, runs=tmp_path / "runs", out=tmp_path / "ft", epochs=1,
                     batch_size=32, handoff_samples=64, progress=False, calibrate=True)
    assert again["temperature"] == summary["temperature"]
    with pytest.raises(FeatureBankError, match="calibrate: finished True, now False"):
        finetune(bank, runs=tmp_path / "runs", out=tmp_path / "ft", epochs=1, batch_size=32,
                 handoff_samples=64, progress=False)
    # the report draws a reliability diagram and gives the ECE before and after, for both
    from PIL import Image

    from featurebank import build_report

    page = build_report(tmp_path / "runs", tmp_path / "ft", out=tmp_path / "report")
    text = page.read_text()
    assert text.count("expected calibration error (15 bins)") == 2
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    head_cal = metrics["logreg on penultimate"]["calibration"]
    assert head_cal["temperature"] == t and head_cal["split"] == "test"
    assert head_cal["ece_before"] == board["rows"][0]["calibration"]["test_ece_before"]
    assert metrics["fine-tuned model"]["calibration"]["ece_after"] == c["test_ece_after"]
    for name in ("reliability_logreg_on_penultimate.png", "reliability_fine_tuned_model.png"):
        assert Image.open(tmp_path / "report" / name).size[0] > 100
