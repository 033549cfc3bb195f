import numpy as np
import pytest

from conftest import CIFAR10_CLASSES, write_cifar100, write_folder, write_npz
from featurebank import DataError, list_datasets, open_source
from featurebank._decode import Decoding


def _all_rows(split, **kw):
    batches = list(split.batches(0, 7, decoding=Decoding(24, "bilinear"), **kw))
    return (np.concatenate([b.images.numpy() for b in batches]),
            np.concatenate([b.labels for b in batches]),
            np.concatenate([b.positions for b in batches]), batches)


def test_cifar10_reads_the_standard_pickles_through_torchvision(cifar10):
    root, (train_x, train_y, test_x, test_y) = cifar10
    src = open_source("cifar10", data_root=root)
    assert src.classes == CIFAR10_CLASSES
    assert list(src.splits) == ["train", "test"]
    x, y, pos, batches = _all_rows(src.splits["train"])
    np.testing.assert_array_equal(x, train_x)  # HWC, in file order
    np.testing.assert_array_equal(y, train_y)
    np.testing.assert_array_equal(pos, np.arange(len(train_y)))
    assert all(b.images.dtype.is_floating_point is False for b in batches)
    x, y, _, _ = _all_rows(src.splits["test"])
    np.testing.assert_array_equal(x, test_x)
    np.testing.assert_array_equal(y, test_y)
    d = src.describe()
    assert d.splits == {"train": 200, "test": 50} and d.resize == "device"
    assert len(d.fingerprint) == 64


def test_cifar100_fine_labels(tmp_path, cifar_checksums):
    train_x, train_y, test_x, test_y = write_cifar100(tmp_path)
    cifar_checksums(tmp_path)
    src = open_source("cifar100", data_root=tmp_path)
    assert len(src.classes) == 100 and src.classes[7] == "class_007"
    np.testing.assert_array_equal(src.splits["train"].labels, train_y)
    np.testing.assert_array_equal(_all_rows(src.splits["test"])[0], test_x)


def test_cifar_missing_root_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10 was not found under data root .*"
                                        r"cifar-10-batches-py.*--data-root.*--download"):
        open_source("cifar10", data_root=tmp_path / "nowhere")


def test_cifar_checksums_stay_enforced_for_real_copies(tmp_path, cifar_checksums):
    from conftest import write_cifar10

    write_cifar10(tmp_path)  # generated files do not match CIFAR-10's published md5 sums
    with pytest.raises(DataError, match="failed their checksum"):
        open_source("cifar10", data_root=tmp_path)
    # with the generated files' sums, one damaged file is named, and a missing one too
    cifar_checksums(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-10])
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py' is not complete \(missing: "
                                        r"\['test_batch'\]; failed their checksum \(damaged or "
                                        r"incomplete copies\): \['data_batch_3'\]\)"):
        open_source("cifar10", data_root=tmp_path)


def test_fingerprint_changes_with_content(tmp_path):
    a = write_npz(tmp_path / "a.npz")
    a["train_labels"][0] = (a["train_labels"][0] + 1) % 4
    np.savez(tmp_path / "b.npz", **a)
    fa = open_source(f"npz:{tmp_path / 'a.npz'}").fingerprint()
    assert fa == open_source(f"npz:{tmp_path / 'a.npz'}").fingerprint()
    assert fa != open_source(f"npz:{tmp_path / 'b.npz'}").fingerprint()


def test_folder_with_train_and_test(tmp_path):
    samples = write_folder(tmp_path / "imgs")
    src = open_source(f"folder:{tmp_path / 'imgs'}")
    assert src.classes == ["cat", "dog", "emu"] and list(src.splits) == ["train", "test"]
    assert src.resize == "shorter_side_center_crop"
    x, y, pos, _ = _all_rows(src.splits["train"])
    assert x.shape == (12, 24, 24, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, [label for _, label in samples["train"]])
    np.testing.assert_array_equal(pos, np.arange(12))


def test_folder_decoded_by_workers_equals_inline(tmp_path):
    write_folder(tmp_path / "imgs", splits=("",))
    split = open_source(f"folder:{tmp_path / 'imgs'}").splits["train"]
    inline = _all_rows(split)[0]
    np.testing.assert_array_equal(_all_rows(split, num_workers=2)[0], inline)


def test_folder_image_is_resized_on_shorter_side_then_center_cropped(tmp_path):
    from PIL import Image

    (tmp_path / "f" / "a").mkdir(parents=True)
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 6:34] = 255  # white beyond the centre 20x20 square, black at the far sides
    Image.fromarray(img).save(tmp_path / "f" / "a" / "x.png")
    split = open_source(f"folder:{tmp_path / 'f'}").splits["train"]
    (batch,) = split.batches(0, 4, decoding=Decoding(10, "bilinear"))
    assert batch.images.shape == (1, 10, 10, 3)
    assert batch.images.numpy().min() == 255  # only the white centre survives the crop


def test_single_folder_is_one_train_split(tmp_path):
    write_folder(tmp_path / "imgs", splits=("",), n_per_class=2)
    src = open_source(f"folder:{tmp_path / 'imgs'}")
    assert list(src.splits) == ["train"] and len(src.splits["train"]) == 6


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        open_source(f"folder:{tmp_path / 'empty'}")
    write_folder(tmp_path / "odd", splits=("train",), classes=("a", "b"))
    write_folder(tmp_path / "odd", splits=("test",), classes=("a", "z"))
    with pytest.raises(DataError, match=r"class folders \['z'\]"):
        open_source(f"folder:{tmp_path / 'odd'}")


def test_corrupt_image_fails_naming_the_file(tmp_path):
    write_folder(tmp_path / "imgs", splits=("",), n_per_class=3)
    bad = tmp_path / "imgs" / "dog" / "001.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    split = open_source(f"folder:{tmp_path / 'imgs'}").splits["train"]
    with pytest.raises(DataError, match=r"cannot read image .*dog/001\.png.*--skip-bad"):
        _all_rows(split)


def test_skip_bad_leaves_the_file_out_and_reports_it(tmp_path):
    write_folder(tmp_path / "imgs", splits=("",), n_per_class=3)
    bad = tmp_path / "imgs" / "dog" / "001.png"
    bad.write_bytes(b"not an image")
    split = open_source(f"folder:{tmp_path / 'imgs'}").splits["train"]
    x, y, pos, batches = _all_rows(split, skip_bad=True)
    assert len(x) == 8 and 4 not in pos.tolist()
    assert [p for b in batches for p in b.skipped] == [str(bad)]
    assert batches[-1].stop == 9


def test_npz_splits_classes_and_greyscale(tmp_path):
    a = write_npz(tmp_path / "d.npz")
    src = open_source(f"npz:{tmp_path / 'd.npz'}")
    assert list(src.splits) == ["train", "test"] and src.classes == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(_all_rows(src.splits["test"])[0], a["test_images"])
    grey = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", images=grey, labels=np.arange(5))
    src = open_source(f"npz:{tmp_path / 'g.npz'}")
    assert list(src.splits) == ["train"] and src.classes == ["0", "1", "2", "3", "4"]
    x = _all_rows(src.splits["train"])[0]
    np.testing.assert_array_equal(x[..., 2], grey)


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros(3)}, "expected 'images' and 'labels'"),
    ({"images": np.zeros((2, 4, 4, 3), np.float32), "labels": np.zeros(2, int)},
     "expected uint8 images"),
    ({"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.zeros(3, int)},
     "expected 2 integer labels"),
    ({"images": np.zeros((2, 4, 4, 3), np.uint8)}, "no 'labels' array"),
    ({"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.array([0, 5]),
      "classes": np.array(["a", "b"])}, "names 2 classes but the labels go up to 5"),
])
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        open_source(f"npz:{tmp_path / 'bad.npz'}")


def test_unknown_dataset():
    with pytest.raises(DataError, match=r"unknown dataset 'imagenet'.*cifar10.*folder:PATH"):
        open_source("imagenet")
    assert "npz:PATH" in list_datasets()


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    # convert("RGB") clips every value above 255: a 16-bit PNG used to come out all white
    from PIL import Image

    (tmp_path / "f" / "a").mkdir(parents=True)
    ramp = np.linspace(0, 65535, 16 * 16).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "f" / "a" / "ramp16.png")
    assert Image.open(tmp_path / "f" / "a" / "ramp16.png").mode.startswith("I;16")
    split = open_source(f"folder:{tmp_path / 'f'}").splits["train"]
    x = split.take(np.array([0]), decoding=Decoding(16, "nearest"))[0]
    expected = np.round(ramp / 257).astype(np.uint8)
    np.testing.assert_array_equal(x, np.repeat(expected[:, :, None], 3, axis=2))


@pytest.mark.parametrize("mode, values", [("I", [0, 70000]), ("F", [0.25, 1.5])])
def test_pixels_without_an_8_bit_scale_are_refused_by_name(tmp_path, mode, values):
    from PIL import Image

    (tmp_path / "f" / "a").mkdir(parents=True)
    dtype = np.int32 if mode == "I" else np.float32
    Image.fromarray(np.array([values * 8] * 16, dtype=dtype), mode).save(
        tmp_path / "f" / "a" / "x.tif")
    split = open_source(f"folder:{tmp_path / 'f'}").splits["train"]
    with pytest.raises(DataError, match=rf"cannot read image .*x\.tif.*\(mode '{mode}'\) with "
                                        rf"values from .* have no standard 8-bit scale"):
        _all_rows(split)
    x, _, _, batches = _all_rows(split, skip_bad=True)  # or left out with --skip-bad
    assert len(x) == 0 and batches[0].skipped == [str(tmp_path / "f" / "a" / "x.tif")]


def test_every_split_kind_follows_the_split_protocol(tmp_path, cifar10):
    import hashlib

    from featurebank.data import Split

    write_folder(tmp_path / "imgs", splits=("",), n_per_class=2)
    folder = open_source(f"folder:{tmp_path / 'imgs'}").splits["train"]
    arrays = open_source("cifar10", data_root=cifar10[0]).splits["train"]
    shard = open_source("cifar10", data_root=cifar10[0]).shard(1, 2, 16).splits["train"]
    names = [n for n in vars(Split) if not n.startswith("_")] + ["__len__"]
    for split, files in ((folder, True), (arrays, False), (shard, False)):
        assert all(hasattr(split, n) for n in names) and split.decodes_files is files
        split.fingerprint(hashlib.sha256())
    assert shard.positions() == range(96, 200) and len(shard) == 104  # 13 batches of 16: 6, 7


def test_limit_takes_a_stratified_subset_and_reopens_it(tmp_path):
    from featurebank import extract, reopen_source
    from featurebank.data import stratified_positions

    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    picked = stratified_positions(labels, 20)
    assert np.bincount(labels[picked]).tolist() == [12, 6, 2]  # the classes' shares
    assert picked.tolist() == sorted(picked) and picked[0] == 0  # the first of each, in order
    assert stratified_positions(labels, 500).tolist() == list(range(100))
    write_npz(tmp_path / "d.npz", n_train=120, n_test=40)
    src = open_source(f"npz:{tmp_path / 'd.npz'}", options={"limit": 30})
    assert {k: len(v) for k, v in src.splits.items()} == {"train": 30, "test": 30}
    bank = extract(f"npz:{tmp_path / 'd.npz'}", limit=30, model="resnet18", weights="none",
                   image_size=32, out=tmp_path / "b.h5", progress=False)
    assert bank.dataset.options.limit == 30 and bank.num_rows("train") == 30
    assert bank.dataset.to_json()["options"] == {"limit": 30}
    assert reopen_source(bank.dataset).fingerprint() == bank.dataset.fingerprint
    with pytest.raises(Exception, match="the 'limit' parameter must be a positive int"):
        extract(f"npz:{tmp_path / 'd.npz'}", limit=0, out=tmp_path / "c.h5", progress=False)
