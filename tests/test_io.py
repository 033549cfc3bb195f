"""The shared mechanics: argument checks, atomic writes, hashing, the output lock, casts."""

import argparse
import hashlib
import json
import os
import re

import numpy as np
import pytest

from featurebank import BankLockedError, ParameterError
from featurebank._io import (FRACTION, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, Interval,
                             OutputLock, as_float32, atomic_write, check_choice, sha256_file,
                             write_csv, write_json)


@pytest.mark.parametrize("interval, good, bad, says", [
    (POSITIVE_INT, [1, 7, np.int64(3)], [0, -1, 1.5, True, "2", None], "a positive int"),
    (NON_NEGATIVE_INT, [0, 5], [-1, 0.5], "an int >= 0"),
    (POSITIVE_FLOAT, [1e-9, 3, 2.5], [0, -1.0, float("nan"), "1"], "a positive float"),
    (FRACTION, [0.1, 0.99], [0, 1, 1.5], "a float in (0, 1)"),
    (Interval(float, 0, 1, closed="left"), [0, 0.5], [1, -0.1], "a float in [0, 1)"),
    (Interval(int, 1, None, none_ok=True), [None, 3], [0], "a positive int or None"),
])
def test_interval_checks_and_says_what_it_wants(interval, good, bad, says):
    assert interval.describe() == says
    for value in good:
        assert interval.check("x", value) == value
    for value in bad:
        with pytest.raises(ParameterError, match=rf"^the 'x' parameter must be {re.escape(says)}, "
                                                 rf"got {re.escape(repr(value))}\.$"):
            interval.check("x", value)
    # the command line's spelling: argparse prefixes "argument --x: "
    with pytest.raises(argparse.ArgumentTypeError, match=rf"^must be {re.escape(says)}, got"):
        interval.parse("-5" if interval.low is not None else "nope")


def test_check_choice_lists_the_choices():
    assert check_choice("optimizer", "sgd", ["adamw", "sgd"]) == "sgd"
    with pytest.raises(ParameterError, match=r"the 'optimizer' parameter must be one of "
                                             r"\['adamw', 'sgd'\], got 'adam'"):
        check_choice("optimizer", "adam", ["adamw", "sgd"])


def test_atomic_write_is_all_or_nothing(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}

    def fails(f):
        f.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(path, fails)
    assert json.loads(path.read_text()) == {"a": 1}  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]  # no temporary left
    write_csv(tmp_path / "m.csv", [{"a": 1, "b": 2, "extra": 3}], ["a", "b"])
    assert (tmp_path / "m.csv").read_text().splitlines() == ["a,b", "1,2"]


def test_sha256_file(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * (1 << 23))
    assert sha256_file(tmp_path / "f") == hashlib.sha256(b"x" * (1 << 23)).hexdigest()


def test_output_lock_is_exclusive_and_names_the_holder(tmp_path):
    target = tmp_path / "bank.h5"
    with OutputLock(target):
        assert (tmp_path / "bank.h5.lock").read_text() == str(os.getpid())
        with pytest.raises(BankLockedError, match=rf"another extraction \(pid {os.getpid()}\) "
                                                  rf"is writing .*bank\.h5"):
            OutputLock(target).acquire()
    with OutputLock(target):  # released: free again
        pass


def test_as_float32_is_numpys_cast_faster():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)  # every float16 value
    half = bits.view(np.float16).reshape(256, 256)
    expected = half.astype(np.float32)
    for got in (as_float32(half), as_float32(half[:, ::3]), as_float32(half.T)):
        assert got.dtype == np.float32
    finite = np.isfinite(expected)
    got = as_float32(half)
    np.testing.assert_array_equal(got.view(np.uint32)[finite], expected.view(np.uint32)[finite])
    assert np.isnan(got[~finite & np.isnan(expected)]).all()
    np.testing.assert_array_equal(as_float32(half[:, ::3]), expected[:, ::3])
    np.testing.assert_array_equal(as_float32(half.T), expected.T)
    out = np.zeros((256, 512), np.float32)
    as_float32(half, out=out[:, 256:])  # into a strided view: a concatenated tap's columns
    np.testing.assert_array_equal(out[:, 256:], expected)
    assert not out[:, :256].any()
    frozen = half.copy()
    frozen.flags.writeable = False  # read-only (np.frombuffer): numpy's own cast
    np.testing.assert_array_equal(as_float32(frozen), expected)
    np.testing.assert_array_equal(as_float32(half[::-1]), expected[::-1])  # negative strides
    double = np.linspace(0, 1, 7)
    np.testing.assert_array_equal(as_float32(double), double.astype(np.float32))
