"""Predictors: a saved head or a fine-tuned network over new images, and `featurebank predict`."""

import csv

import numpy as np
import pytest
import torch

from conftest import colour_images, run_cli, write_folder
from featurebank import (Callback, DataError, extract, finetune, fit_heads, load_head,
                         load_model)
from featurebank.heads import class_probabilities


@pytest.mark.parametrize("head", ["logreg", "mlp", "knn"])
def test_a_loaded_head_predicts_as_the_head_does_on_the_bank(trained, head):
    tmp, bank = trained
    model = load_model(tmp / "runs" / f"{head}.joblib")
    est = load_head(tmp / "runs" / f"{head}.joblib")
    assert list(model.classes_) == ["red", "green", "blue"]
    npz = np.load(tmp / "d.npz")
    for split in ("train", "test"):
        X, _ = bank.load(split)  # float16 on disk: the predictor rounds its features the same
        expected = np.array(bank.classes)[est.predict(X)]
        np.testing.assert_array_equal(model.predict(npz[f"{split}_images"]), expected)
    proba = model.predict_proba(npz["test_images"][:7])
    assert proba.shape == (7, 3) and np.allclose(proba.sum(1), 1)


@pytest.mark.parametrize("decode", ["pil", "tensor"])
def test_a_folder_bank_predicts_from_files_of_any_size(tmp_path, decode):
    write_folder(tmp_path / "imgs", n_per_class=4)  # JPEG and PNG of mixed sizes
    bank = extract(f"folder:{tmp_path / 'imgs'}", model="resnet18", weights="none",
                   image_size=32, out=tmp_path / "b.h5", progress=False, dtype="float32",
                   decode=decode)
    fit_heads(bank, heads=["ridge"], out=tmp_path / "runs", progress=False, val_fraction=0.25)
    model = load_model(tmp_path / "runs" / "ridge.joblib")
    est = load_head(tmp_path / "runs" / "ridge.joblib")
    for split in ("train", "test"):
        files = [tmp_path / "imgs" / split / p for p in
                 sorted(str(p.relative_to(tmp_path / "imgs" / split))
                        for p in (tmp_path / "imgs" / split).rglob("*.*"))]
        X, _ = bank.load(split)
        expected = np.array(bank.classes)[est.predict(X)]
        np.testing.assert_array_equal(model.predict(files), expected)
        # the bank's own decoder prepares the files: the same features, so the same scores
        np.testing.assert_allclose(model.predict_proba(files), class_probabilities(est, X),
                                   atol=1e-5)
        np.testing.assert_array_equal(model.predict(tmp_path / "imgs" / split), expected)
    from PIL import Image  # PIL images of different sizes in one call

    pil = [Image.open(files[0]), Image.open(files[1]).resize((50, 20))]
    assert model.predict(pil).shape == (2,)


def test_a_fine_tuned_model_predicts_as_the_network_at_the_end_of_training(tmp_path, trained):
    tmp, bank = trained

    class Keep(Callback):
        def on_epoch_end(self, trainer, row):
            self.trainer = trainer

    keep = Keep()
    finetune(bank, runs=tmp / "runs", out=tmp_path / "ft", epochs=2, batch_size=32,
             handoff_samples=64, progress=False, callbacks=[keep])
    images = np.load(tmp / "d.npz")["test_images"]
    net = keep.trainer.net.eval()  # run() leaves the best weights in it
    with torch.no_grad():
        logits = net(net.backbone.preprocess(torch.from_numpy(images), 32))
    model = load_model(tmp_path / "ft")
    np.testing.assert_allclose(model.predict_proba(images), torch.softmax(logits, 1).numpy(),
                               atol=1e-6)
    np.testing.assert_array_equal(model.predict(images),
                                  np.array(bank.classes)[logits.argmax(1).numpy()])


def test_predict_cli_writes_a_csv_and_reports_unreadable_files(trained, tmp_path, capsys):
    tmp, _ = trained
    X, _ = colour_images(np.random.default_rng(5), 3, size=40)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    from PIL import Image

    for i, x in enumerate(X):
        Image.fromarray(x).save(tmp_path / "imgs" / "sub" / f"{i}.png")
    (tmp_path / "imgs" / "bad.jpg").write_bytes(b"not a jpeg")
    fail = run_cli("predict", str(tmp / "ft"), str(tmp_path / "imgs"), "--out",
                   str(tmp_path / "p.csv"), check=False, capsys=capsys)
    assert fail.returncode == 2 and "cannot read image" in fail.stderr and "bad.jpg" in \
        fail.stderr and "--skip-bad" in fail.stderr and not (tmp_path / "p.csv").exists()
    ok = run_cli("predict", str(tmp / "ft"), str(tmp_path / "imgs"), "--out",
                 str(tmp_path / "p.csv"), "--top-k", "2", "--skip-bad", capsys=capsys)
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["path"] for r in rows] == [str(tmp_path / "imgs" / "sub" / f"{i}.png")
                                         for i in range(3)]
    expected = load_model(tmp / "ft").predict(tmp_path / "imgs" / "sub")
    assert [r["prediction"] for r in rows] == list(expected)
    assert set(rows[0]) == {"path", "prediction", "probability", "class_1", "prob_1",
                            "class_2", "prob_2"}
    assert all(r["class_1"] == r["prediction"] and float(r["prob_1"]) >= float(r["prob_2"])
               for r in rows)
    assert "skipped unreadable image" in ok.stderr and "1 unreadable, left out" in ok.stderr
    assert "predict" in ok.stderr and "img/s" in ok.stderr  # the progress bar


def test_bad_models_and_images_are_clear_errors(trained, tmp_path):
    tmp, _ = trained
    with pytest.raises(Exception, match="does not exist; pass a fine-tune output folder"):
        load_model(tmp_path / "nothing")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(Exception, match="is not a fine-tune output folder"):
        load_model(tmp_path / "empty")
    with pytest.raises(DataError, match="image .*missing.png' does not exist"):
        load_model(tmp / "ft").predict(tmp_path / "missing.png")
