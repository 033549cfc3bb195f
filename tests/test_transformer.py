import sys

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

from conftest import _images
from featurebank import BackboneTransformer, DataError, LogisticHead, extract, from_arrays


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    X = _images(rng, 60, size=16)
    y = (X[..., 0].mean(axis=(1, 2)) > np.median(X[..., 0].mean(axis=(1, 2)))).astype(int)
    return X, y


def test_pipeline_of_backbone_and_head_reads_the_cache_the_second_time(tmp_path, images,
                                                                        monkeypatch):
    X, y = images
    pipe = make_pipeline(BackboneTransformer("resnet18", weights="none", image_size=32,
                                             cache_dir=tmp_path),
                         LogisticHead(C=1.0, max_iter=500))
    pipe.fit(X, y)
    first = pipe.predict_proba(X)
    assert len(list(tmp_path.glob("*.h5"))) == 1
    assert pipe[0].get_feature_names_out()[:2].tolist() == ["penultimate_0", "penultimate_1"]

    def no_extraction(*a, **k):
        raise AssertionError("the features of these images are cached")

    monkeypatch.setattr(sys.modules["featurebank.extraction"], "extract", no_extraction)
    pipe.fit(X, y)
    np.testing.assert_array_equal(pipe.predict_proba(X), first)
    with pytest.raises(AssertionError, match="cached"):  # other images are computed
        pipe.predict(X[:10][::-1].copy())


def test_features_equal_a_direct_extraction(tmp_path, images):
    X, _ = images
    t = BackboneTransformer("resnet18", weights="none", tap="layer3", image_size=32,
                            cache_dir=tmp_path / "cache")
    F = t.fit_transform(X)
    bank = extract(from_arrays(X), model="resnet18", weights="none", taps="layer3",
                   image_size=32, dtype="float32", out=tmp_path / "b.h5", progress=False)
    np.testing.assert_array_equal(F, bank.load("train")[0])
    assert F.shape == (60, 256) and t.n_features_out_ == 256
    other = BackboneTransformer("resnet18", weights="none", tap="penultimate", image_size=32,
                                cache_dir=tmp_path / "cache").fit_transform(X)
    assert other.shape == (60, 512) and len(list((tmp_path / "cache").glob("*.h5"))) == 2


def test_bad_images(tmp_path, images):
    X, _ = images
    t = BackboneTransformer("resnet18", weights="none", image_size=32, cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"X has shape \(60, 16, 16, 3\) and dtype float64; "
                                        r"expected uint8 images"):
        t.fit(X.astype(float))
    t.fit(X)
    with pytest.raises(DataError, match=r"images of shape \(8, 8, 3\), but BackboneTransformer "
                                        r"was fitted on \(16, 16, 3\)"):
        t.transform(X[:, :8, :8])
    with pytest.raises(DataError, match="expected 3 integer labels"):
        from_arrays(X[:3], labels=[0, 1])
