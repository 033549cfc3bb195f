"""WebDataset shards, Hugging Face datasets and CSV manifests: the same images give the same
bank rows as a folder, through extract, fit, finetune, predict and report; clear errors."""

import io
import sys
import tarfile

import numpy as np
import pytest

from conftest import hf_dataset, write_csv, write_folder, write_wds
from featurebank import (DataError, FeatureBank, extract, finetune, fit_heads, load_model,
                         open_source, reopen_source)
from featurebank.formats import expand_braces

KW = dict(model="resnet18", weights="none", image_size=32, dtype="float32", progress=False,
          num_workers=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of JPEG and PNG files of varied sizes (train/test, 3 classes), and the same
    images as tar shards, a CSV, a save_to_disk dataset and a folder of Parquet files."""
    root = tmp_path_factory.mktemp("formats")
    samples = write_folder(root / "imgs", n_per_class=4)
    sources = {"folder": f"folder:{root / 'imgs'}",
               "csv": f"csv:{write_csv(root / 'list.csv', samples)}"}
    pats = write_wds(root / "shards", samples)
    sources["wds"] = f"wds:train={pats['train']},test={pats['test']}"
    datasets = pytest.importorskip("datasets")
    dd = hf_dataset(samples)
    dd.save_to_disk(str(root / "hf"))
    (root / "pq").mkdir()
    for split, ds in dd.items():
        ds.to_parquet(str(root / "pq" / f"{split}-00000-of-00001.parquet"))
    sources["hf"], sources["parquet"] = f"hf:{root / 'hf'}", f"hf:{root / 'pq'}"
    assert datasets  # imported above: the [dev] extra installs it
    return root, samples, sources


def test_brace_patterns_expand_as_webdataset_does():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}-{8..9}") == ["x-8", "x-9", "y-8", "y-9"]
    assert expand_braces("plain.tar") == ["plain.tar"]


@pytest.mark.parametrize("decode", ["pil", "tensor"])
def test_every_format_gives_the_folders_bank_rows(images, tmp_path, decode):
    root, samples, sources = images
    banks = {kind: extract(src, out=tmp_path / f"{kind}.h5", decode=decode,
                           data_root=tmp_path, **KW) for kind, src in sources.items()}
    ref = banks.pop("folder")
    for kind, bank in banks.items():
        assert bank.classes == ref.classes == ["cat", "dog", "emu"], kind
        assert bank.splits == ["train", "test"] and bank.dataset.name == kind.replace(
            "parquet", "hf")
        for split in ref.splits:  # bit for bit: the same bytes through the same decoder
            np.testing.assert_array_equal(bank.load(split)[0], ref.load(split)[0], err_msg=kind)
            np.testing.assert_array_equal(bank.labels(split), ref.labels(split))
        source = reopen_source(bank.dataset)  # the fine-tune's and report's way back
        assert source.fingerprint() == bank.dataset.fingerprint


@pytest.mark.parametrize("kind", ["wds", "hf"])
def test_a_bank_goes_through_fit_finetune_predict_and_report(images, tmp_path, kind):
    root, samples, sources = images
    bank = extract(sources[kind], out=tmp_path / "b.h5", data_root=tmp_path, **KW)
    if kind == "wds":
        assert list((tmp_path / "featurebank-index").glob("*.json"))  # the index, cached
    fit_heads(bank, heads=["logreg"], out=tmp_path / "runs", val_fraction=0.25, progress=False)
    summary = finetune(bank, runs=tmp_path / "runs", out=tmp_path / "ft", epochs=1,
                       batch_size=8, handoff_samples=8, workers=2, progress=False)
    assert summary["handoff_agreement"] >= 0.99 and summary["test_accuracy"] is not None
    model = load_model(tmp_path / "ft")
    out = model.predict_to_csv(sources["csv"], tmp_path / "p.csv")  # a source as input set
    assert out["images"] == 24
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 25 and rows[1].startswith(str(samples["train"][0][0]))
    wds_rows = model.predict(sources["wds"])
    np.testing.assert_array_equal(wds_rows, model.predict(
        [p for split in ("train", "test") for p, _ in samples[split]]))
    from featurebank import build_report

    page = build_report(tmp_path / "runs", tmp_path / "ft", out=tmp_path / "rep")
    assert page.is_file() and "no image grids" not in page.read_text()


def test_sources_are_named_and_fingerprinted_by_content(images, tmp_path):
    root, samples, sources = images
    src = open_source(sources["wds"], data_root=tmp_path)
    row = src.splits["test"].describe_row(0)
    assert row.endswith(".tar:test000000.jpg") and "/shards/test-000000.tar" in row
    again = open_source(sources["wds"], data_root=tmp_path)  # from the cached index
    assert again.fingerprint() == src.fingerprint()
    options = open_source(sources["csv"]).describe().to_json()
    assert "options" not in options  # unset options are not recorded: old fingerprints hold
    labelled_by_json = write_wds(tmp_path / "j", samples, label="json")
    pattern = f"wds:train={labelled_by_json['train']},test={labelled_by_json['test']}"
    with pytest.raises(DataError, match=r"has no label: no cls member \(or pass --label-key"):
        open_source(pattern, data_root=tmp_path)
    bank = extract(pattern, out=tmp_path / "j.h5", data_root=tmp_path, label_key="label", **KW)
    assert bank.dataset.options.label_key == "label"
    assert bank.dataset.to_json()["options"] == {"label_key": "label"}
    np.testing.assert_array_equal(bank.labels("train"),
                                  [y for _, y in samples["train"]])
    assert reopen_source(bank.dataset).fingerprint() == bank.dataset.fingerprint


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_bad_samples_are_clear_errors_naming_them(images, tmp_path):
    root, samples, _ = images
    jpg = samples["train"][0][0].read_bytes()
    _tar(tmp_path / "noimg.tar", [("a.jpg", jpg), ("a.cls", b"0"), ("b.cls", b"1")])
    with pytest.raises(DataError, match=r"sample 'b' of '.*noimg\.tar' has no image \(members "
                                        r"\['cls'\]"):
        open_source(f"wds:{tmp_path / 'noimg.tar'}", data_root=tmp_path)
    _tar(tmp_path / "cut.tar", [("a.cls", b"0"), ("a.jpg", jpg)])
    data = (tmp_path / "cut.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:1024 + 512 + len(jpg) // 2])
    with pytest.raises(DataError, match=r"tar member 'a\.jpg' of '.*cut\.tar' is truncated"):
        open_source(f"wds:{tmp_path / 'cut.tar'}", data_root=tmp_path)
    _tar(tmp_path / "bad.tar", [("a.jpg", jpg), ("a.cls", b"0"), ("b.jpg", b"not a jpeg"),
                                ("b.cls", b"1"), ("c.jpg", jpg), ("c.cls", b"2")])
    with pytest.raises(DataError, match=r"cannot read image '.*bad\.tar:b\.jpg'"):
        extract(f"wds:{tmp_path / 'bad.tar'}", out=tmp_path / "bad.h5", data_root=tmp_path,
                **KW)
    bank = extract(f"wds:{tmp_path / 'bad.tar'}", out=tmp_path / "bad.h5", data_root=tmp_path,
                   skip_bad=True, **KW)
    assert bank.num_rows("train") == 2 and bank.skipped("train")[0].endswith("bad.tar:b.jpg")
    (tmp_path / "c.csv").write_text(f"path,label\n{samples['train'][0][0]},cat\n"
                                    f"{samples['train'][1][0]},lion\n")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match=r"sample on line 3 of '.*c\.csv' has label 'lion', "
                                        r"which is not one of the 2 classes"):
        open_source(f"csv:{tmp_path / 'c.csv'}", options={"classes": str(tmp_path / "names.txt")})
    (tmp_path / "d.csv").write_text(f"path,label\n{samples['train'][0][0]},\n")
    with pytest.raises(DataError, match=r"sample on line 2 of '.*d\.csv' has no label"):
        open_source(f"csv:{tmp_path / 'd.csv'}")
    (tmp_path / "e.csv").write_text("path,label\nmissing.jpg,cat\n")
    with pytest.raises(DataError, match=r"image '.*missing\.jpg' on line 2 of '.*e\.csv' does "
                                        r"not exist"):
        open_source(f"csv:{tmp_path / 'e.csv'}")
    with pytest.raises(DataError, match=r"no tar shards match"):
        open_source(f"wds:{tmp_path / 'none-{000..003}.tar'}")


def test_hugging_face_columns_options_and_missing_package(images, tmp_path, monkeypatch):
    root, samples, sources = images
    datasets = pytest.importorskip("datasets")
    plain = datasets.Dataset.from_dict({"img": [{"bytes": p.read_bytes(), "path": None}
                                                for p, _ in samples["train"]],
                                        "y": [["cat", "dog", "emu"][y]
                                              for _, y in samples["train"]]},
                                       features=datasets.Features({"img": datasets.Image(),
                                                                   "y": datasets.Value("string")}))
    plain.save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(DataError, match=r"has no ClassLabel column \(columns \['img', 'y'\]\); "
                                        r"pass --label-column NAME"):
        open_source(f"hf:{tmp_path / 'plain'}")
    src = open_source(f"hf:{tmp_path / 'plain'}", options={"label_column": "y"})
    assert src.classes == ["cat", "dog", "emu"] and len(src.splits["train"]) == 12
    with pytest.raises(DataError, match=r"no column 'nope' \(--image-column\)"):
        open_source(f"hf:{tmp_path / 'plain'}", options={"image_column": "nope"})
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # read once, when datasets is imported: what the variable does when set before Python
    # starts (set only now, the load would try the network for ~20 s first)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(pytest.importorskip("huggingface_hub.constants"), "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"cannot load the Hugging Face dataset 'no/such-set'.*"
                                        r"HF_DATASETS_OFFLINE=1"):
        open_source("hf:no/such-set")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(DataError, match=r'pip install "featurebank\[hf\]"'):
        open_source(sources["hf"])


def test_a_bank_of_a_source_opens_as_any_bank(images, tmp_path):
    root, _, sources = images
    bank = extract(sources["csv"], out=tmp_path / "c.h5", **KW)
    assert "csv" in FeatureBank(bank.path).info()


def test_the_gpu_decoders_worker_and_batch_parts_take_tar_members(images, tmp_path):
    import torch

    from featurebank._decode import Decoding

    root, _, sources = images
    split = open_source(sources["wds"], data_root=tmp_path).splits["train"]
    members = [split.encoded(i) for i in split.positions()]
    gpu, tensor = Decoding(32, "bilinear", decoder="gpu"), Decoding(32, "bilinear",
                                                                    decoder="tensor")
    parts = [gpu.read(m)[0] for m in members]
    assert {p.ndim for p in parts} == {1, 3}  # JPEG bytes for the device, PNG pixels decoded
    batch, errors = gpu.assemble(parts, torch.device("cpu"))  # the device path, on CPU tensors
    assert errors == [None] * len(members) and batch.shape == (len(members), 32, 32, 3)
    for i, m in enumerate(members):  # within 2 levels of the CPU decoder, as for files
        diff = np.abs(batch[i].numpy().astype(int) - tensor.load(m)[0].astype(int))
        assert diff.max() <= 2
