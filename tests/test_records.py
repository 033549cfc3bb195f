"""Typed provenance: BankSpec, DatasetInfo and TapLayer read and written as the bank's JSON."""

import json
from pathlib import Path

import h5py
import pytest

from featurebank import BankError
from featurebank.records import (BankSpec, DatasetInfo, Resize, ShardInfo, TapSelection,
                                 WeightsId, fingerprint, tap_selections)

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


def _raw(bank: Path) -> tuple[dict, dict, str]:
    with h5py.File(bank, "r") as f:
        return (json.loads(f.attrs["spec"]), json.loads(f.attrs["dataset"]),
                str(f.attrs["fingerprint"]))


@pytest.mark.parametrize("bank", ["npz_bank.h5", "folder_bank.h5"])
def test_banks_of_the_previous_format_round_trip_to_the_same_json_and_fingerprint(bank):
    spec, dataset, stored = _raw(FIXTURES / bank)
    s, d = BankSpec.from_json(spec), DatasetInfo.from_json(dataset)
    assert s.to_json() == spec and d.to_json() == dataset  # key for key, value for value
    assert json.dumps(s.to_json(), sort_keys=True) == json.dumps(spec, sort_keys=True)
    assert fingerprint(s, d) == stored  # heads and fine-tunes that refer to it stay valid
    assert isinstance(s.weights, WeightsId) and s.tap_layers["features.3"].dim == 128
    assert s.decode == "pil" and "decode" not in s.to_json()


def test_records_are_typed_and_keep_what_they_do_not_know():
    spec, dataset, _ = _raw(FIXTURES / "folder_bank.h5")
    s = BankSpec.from_json({**spec, "decode": "tensor", "added_later": {"x": 1}})
    assert s.resize is Resize.FILES and s.resize == "shorter_side_center_crop"
    assert s.decode == "tensor" and s.decoding.decoder == "tensor"
    assert s.to_json()["decode"] == "tensor" and s.to_json()["added_later"] == {"x": 1}
    assert s.preprocessing.mean == tuple(spec["mean"])
    d = DatasetInfo.from_json(dataset)
    assert d.classes == ("blue", "green", "red") and d.shard is None
    shard = d.replace(shard=ShardInfo(1, 2, {"train": (5, 9)}))
    assert shard.to_json()["shard"] == {"rank": 1, "world": 2, "rows": {"train": [5, 9]}}
    assert DatasetInfo.from_json(shard.to_json()) == shard
    # the locations are not part of what the rows are
    moved = s.replace(weights_path="/elsewhere/w.pth")
    assert fingerprint(moved, d) == fingerprint(s, d)
    assert fingerprint(s.replace(image_size=64), d) != fingerprint(s, d)
    assert fingerprint(s, d.replace(source="/moved")) == fingerprint(s, d)


def test_a_damaged_spec_is_a_clear_error():
    spec, dataset, _ = _raw(FIXTURES / "npz_bank.h5")
    with pytest.raises(BankError, match=r"a bank spec is missing or has a malformed entry "
                                        r"\(KeyError: 'tap_layers'\)"):
        BankSpec.from_json({k: v for k, v in spec.items() if k != "tap_layers"})
    with pytest.raises(BankError, match=r"dataset record .*ValueError: 'sideways' is not a "
                                        r"valid Resize"):
        DatasetInfo.from_json({**dataset, "resize": "sideways"})


def test_tap_selection_is_parsed_in_one_place():
    t = TapSelection.parse("fc6+fc7")
    assert t.taps == ("fc6", "fc7") and t.concatenated and str(t) == "fc6+fc7"
    assert list(t) == ["fc6", "fc7"] and TapSelection.parse(t) is t
    assert not TapSelection.parse("fc7").concatenated
    with pytest.raises(BankError, match=r"tap 'fc6\+' has an empty part"):
        TapSelection.parse("fc6+")
    taps = ["fc6", "fc7", "pool5"]
    assert [str(x) for x in tap_selections(None, taps)] == ["fc6"]
    assert [str(x) for x in tap_selections("all", taps)] == taps
    assert [str(x) for x in tap_selections("fc7, fc6+fc7", taps)] == ["fc7", "fc6+fc7"]
    assert [str(x) for x in tap_selections(["pool5"], taps)] == ["pool5"]
