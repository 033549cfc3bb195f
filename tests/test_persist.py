"""Saved heads (heads/persist.py): provenance, checksums, refusals, and what loads back."""

import io

import joblib
import numpy as np
import pytest
import torch

from conftest import write_feature_bank
from featurebank import BankSpec, HeadError, fit_heads, load_head, save_head, to_torch
from featurebank.heads import LogisticHead


@pytest.fixture
def bank(tmp_path):
    return write_feature_bank(tmp_path / "bank.h5")


def test_a_saved_head_records_its_bank_typed_on_load(tmp_path, bank):
    X, y = bank.load("train")
    head = LogisticHead(C=0.1).fit(X, y)
    save_head(head, tmp_path / "h.joblib", bank=bank, tap="fc7", name="logreg",
              val_rows=np.arange(5))
    info = load_head(tmp_path / "h.joblib", bank=bank, tap="fc7").featurebank_
    assert isinstance(info["spec"], BankSpec) and info["spec"] == bank.spec
    assert info["bank_fingerprint"] == bank.fingerprint and info["classes"] == bank.classes
    assert info["val_rows"].tolist() == [0, 1, 2, 3, 4] and info["name"] == "logreg"
    outer = joblib.load(tmp_path / "h.joblib")  # the file: the record's bytes and checksum
    record = joblib.load(io.BytesIO(outer["record"]))
    assert record["spec"] == bank.spec.to_json()  # stored as the bank's JSON, as before


def test_load_head_refuses_other_banks_taps_and_broken_files(tmp_path, bank):
    fit_heads(bank, heads=["logreg"], out=tmp_path / "runs", progress=False)
    path = tmp_path / "runs" / "logreg.joblib"
    other = write_feature_bank(tmp_path / "other.h5", seed=5)
    with pytest.raises(HeadError, match=r"fitted on another feature bank.*Refit the head"):
        load_head(path, bank=other)
    with pytest.raises(HeadError, match="fitted on tap 'fc7', not 'fc6'"):
        load_head(path, tap="fc6")
    renamed = write_feature_bank(tmp_path / "renamed.h5", tap="pool5")
    with pytest.raises(HeadError, match="fitted on another feature bank"):
        load_head(path, bank=renamed)
    moved = write_feature_bank(tmp_path / "moved.h5", source="elsewhere")  # same content
    assert load_head(path, bank=tmp_path / "moved.h5").featurebank_["tap"] == "fc7"
    assert moved.fingerprint == bank.fingerprint
    truncated = tmp_path / "truncated.joblib"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(HeadError, match="truncated or not a featurebank head"):
        load_head(truncated)
    joblib.dump({"some": "dict"}, tmp_path / "plain.joblib")
    with pytest.raises(HeadError, match="joblib file but not a featurebank head"):
        load_head(tmp_path / "plain.joblib")
    with pytest.raises(HeadError, match="does not exist"):
        load_head(tmp_path / "missing.joblib")


def test_a_head_file_whose_bytes_changed_is_refused(tmp_path, bank):
    # a flipped byte inside coef_ used to load and predict differently without a word
    fit_heads(bank, heads=["logreg"], out=tmp_path / "runs", progress=False)
    path = tmp_path / "runs" / "logreg.joblib"
    head = load_head(path)
    data = bytearray(path.read_bytes())
    at = bytes(data).find(head.coef_.tobytes()[:64])
    assert at > 0  # the coefficients are stored as raw float64 bytes
    data[at + 13] ^= 0x20
    damaged = tmp_path / "damaged.joblib"
    damaged.write_bytes(bytes(data))
    with pytest.raises(HeadError, match=r"damaged.joblib' is damaged: its content does not "
                                        r"match the checksum it was saved with"):
        load_head(damaged)
    np.testing.assert_array_equal(load_head(path).coef_, head.coef_)  # the original is fine


def test_loaded_head_grafts(tmp_path, bank):
    fit_heads(bank, heads=["mlp"], out=tmp_path / "runs", progress=False)
    head = load_head(tmp_path / "runs" / "mlp.joblib", bank=bank)
    X, _ = bank.load("test")
    with torch.no_grad():
        logits = to_torch(head)(torch.from_numpy(X)).numpy()
    np.testing.assert_array_equal(head.classes_[logits.argmax(1)], head.predict(X))
