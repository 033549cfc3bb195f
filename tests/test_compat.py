"""Artefacts written by an earlier featurebank (tests/fixtures/v1, made at commit f4a7e28 by
tests/fixtures/make_format_fixtures.py) open, predict and reopen as they did then."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from featurebank import FeatureBank, load_head, load_model, reopen_source
from featurebank.artefacts import read_best_model, read_leaderboard

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURES / "expected.npz") as z:
        return {k: z[k] for k in z.files}


def test_old_banks_open_with_their_fingerprints_and_sources(tmp_path):
    bank = FeatureBank(FIXTURES / "npz_bank.h5")
    assert bank.fingerprint.startswith("b80162101afb") and bank.taps == ["features.3"]
    assert bank.spec.model == "squeezenet1_1" and bank.shape("train") == (48, 128)
    folder = FeatureBank(FIXTURES / "folder_bank.h5")
    # the fine-tune and the report reopen the images and check the source fingerprint
    source = reopen_source(folder.dataset, data_root=FIXTURES / "folder")
    assert source.fingerprint() == folder.dataset.fingerprint
    assert len(source.splits["train"]) == folder.num_rows("train") == 9
    shutil.copytree(FIXTURES / "folder", tmp_path / "f")
    (tmp_path / "f" / "red" / "0.jpg").write_bytes(b"changed")
    with pytest.raises(Exception, match="differ from those the bank was extracted from"):
        reopen_source(folder.dataset, data_root=tmp_path / "f")


def test_an_old_head_loads_and_predicts_as_it_did(expected):
    bank = FeatureBank(FIXTURES / "npz_bank.h5")
    head = load_head(FIXTURES / "runs" / "logreg.joblib", bank=bank)
    X, y = bank.load("test")
    assert head.featurebank_["spec"].model == "squeezenet1_1"
    assert head.score(X, y) == pytest.approx(
        read_leaderboard(FIXTURES / "runs").rows[0]["test_accuracy"])
    proba = load_model(FIXTURES / "runs" / "logreg.joblib").predict_proba(
        expected["test_images"])
    np.testing.assert_allclose(proba, expected["head_proba"], atol=1e-6)


def test_an_old_finetune_folder_loads_and_predicts_as_it_did(expected):
    best = read_best_model(FIXTURES / "ft")
    assert best.tap == "features.3" and best.spec.image_size == 32
    proba = load_model(FIXTURES / "ft").predict_proba(expected["test_images"])
    np.testing.assert_allclose(proba, expected["finetuned_proba"], atol=1e-6)
