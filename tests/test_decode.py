"""Decoders: PIL, tensors on the CPU, and the GPU decoder's batch path (run on CPU tensors)."""

import io

import numpy as np
import pytest
import torch

from conftest import run_cli, write_folder, write_npz
from featurebank import DataError, ParameterError, extract, from_arrays, open_source
from featurebank._decode import Decoding, _decode_cpu, _resize_float, _resize_uint8


def _jpeg(array: np.ndarray, mode: str = "RGB", **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _photo(rng, h: int, w: int) -> np.ndarray:
    """Smooth content with noise, as photos are (pure noise would exaggerate resize
    differences)."""
    low = torch.from_numpy(rng.integers(0, 256, (1, 3, 6, 6)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic")[0]
    noisy = smooth.numpy().transpose(1, 2, 0) + rng.normal(0, 10, (h, w, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.fixture
def files(tmp_path):
    """JPEGs (colour, greyscale, CMYK, progressive) and a PNG of varied sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i, (h, w, mode, kw) in enumerate([(40, 50, "RGB", {}), (61, 33, "L", {}),
                                          (30, 30, "CMYK", {}), (45, 70, "RGB",
                                                                  {"progressive": True}),
                                          (40, 50, "RGB", {"quality": 60})]):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(_jpeg(_photo(rng, h, w), mode, **kw))
        out.append(path)
    Image.fromarray(_photo(rng, 27, 52)).save(tmp_path / "5.png")
    return out + [tmp_path / "5.png"]


def test_tensor_decoding_gives_pils_pixels(files):
    from PIL import Image

    for path in files:
        pil = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(_decode_cpu(path.read_bytes()), pil)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("decoder", ["tensor", "gpu"])
def test_every_decoder_is_within_two_levels_of_pil(files, decoder, interpolation):
    pil = Decoding(24, interpolation)
    other = Decoding(24, interpolation, decoder=decoder)
    for path in files:
        a, b = pil.load(path)[0], other.load(path)[0]
        assert a.shape == b.shape == (24, 24, 3)
        if interpolation == "nearest":  # the same pixels picked, but for a shifted column
            assert (a != b).any(-1).mean() <= 2 / 24, path  # or row at some scales
        else:
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 2, path


def test_the_float_resize_matches_the_uint8_kernel(files):
    # the GPU decoder's resize (float, rounded between passes) against torch's uint8 kernel:
    # one 2-D float pass would be off by up to ~20 levels with bicubic
    for shape in [(3, 350, 400), (3, 400, 350), (3, 17, 33), (3, 24, 24)]:
        x = torch.from_numpy(_photo(np.random.default_rng(1), *shape[1:])).permute(2, 0, 1)
        for mode in ("bilinear", "bicubic"):
            a, b = _resize_uint8(x, 24, mode), _resize_float(x, 24, mode)
            assert a.shape == b.shape == (3, 24, 24)
            assert (a.int() - b.int()).abs().max() <= 2


def test_the_gpu_batch_path_equals_image_by_image(files):
    # what the extraction runs on CUDA, run on CPU tensors: one batched decode, images of one
    # size resized together, other formats moved in
    d = Decoding(20, "bicubic", decoder="gpu")
    parts = [d.read(str(p))[0] for p in files]
    assert [p.ndim for p in parts] == [1, 1, 1, 1, 1, 3]  # JPEG bytes; the PNG decoded
    images, errors = d.assemble(parts, torch.device("cpu"))
    assert errors == [None] * len(files) and images.shape == (len(files), 20, 20, 3)
    expected = np.stack([d.load(p)[0] for p in files])
    np.testing.assert_array_equal(images.numpy(), expected)


def test_the_gpu_decoder_falls_back_image_by_image(files, monkeypatch):
    import featurebank._decode as dec

    d = Decoding(20, "bilinear", decoder="gpu")
    bad = files[0].with_name("bad.jpg")
    bad.write_bytes(files[0].read_bytes()[:200])  # truncated: nothing reads it
    paths = [files[0], bad, files[2], files[3]]
    refused = files[2].read_bytes()
    device_calls = []
    real = dec.jpeg_decoder("cpu")

    def gpu_like(data, device):  # a GPU decoder that refuses the CMYK JPEG
        device_calls.append(len(data) if isinstance(data, list) else 1)
        items = data if isinstance(data, list) else [data]
        if any(x.numpy().tobytes() == refused for x in items):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, device)

    monkeypatch.setattr(dec, "jpeg_decoder", lambda device_type: gpu_like)
    images, errors = d.assemble([d.read(str(p))[0] for p in paths], torch.device("cpu"))
    assert device_calls[0] == 4  # one batch first; then one image at a time
    assert errors[0] is None and errors[2] is None and errors[3] is None
    assert "truncated" in errors[1].lower()
    monkeypatch.undo()
    expected = np.stack([d.load(p)[0] for p in (files[0], files[2], files[3])])
    np.testing.assert_array_equal(images.numpy(), expected)  # the refused one from the CPU


def test_torchcodec_or_else_torchvision_decodes_and_a_missing_decoder_is_named(files,
                                                                                monkeypatch):
    import sys
    import warnings

    import featurebank._decode as dec

    data = torch.from_numpy(np.frombuffer(bytearray(files[0].read_bytes()), np.uint8))
    expected = dec.jpeg_decoder("cpu")(data, "cpu")
    dec.jpeg_decoder.cache_clear()
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # as if not installed
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torchvision.io's deprecation stays inside
            legacy = dec.jpeg_decoder("cpu")
            torch.testing.assert_close(legacy(data, "cpu"), expected, rtol=0, atol=0)

        def broken():
            raise OSError("libtorchvision.so: undefined symbol")

        dec.jpeg_decoder.cache_clear()
        monkeypatch.setitem(dec._JPEG_DECODERS, "torchvision.io", broken)
        with pytest.raises(DataError, match=r"no JPEG decoder works on the cpu device "
                                            r"\(TorchCodec: ModuleNotFoundError.*torchvision.io: "
                                            r"OSError: libtorchvision.so: undefined symbol\).*"
                                            r"--decode pil"):
            dec.jpeg_decoder("cpu")
    finally:
        dec.jpeg_decoder.cache_clear()


def test_a_folder_bank_holds_the_features_of_its_decoded_images(tmp_path):
    write_folder(tmp_path / "imgs", splits=("",), n_per_class=3)  # JPEG and PNG, mixed sizes
    source = open_source(f"folder:{tmp_path / 'imgs'}")
    kw = dict(model="resnet18", weights="none", image_size=32, dtype="float32", progress=False,
              batch_size=4)
    for decode in ("pil", "tensor"):
        bank = extract(f"folder:{tmp_path / 'imgs'}", out=tmp_path / f"{decode}.h5",
                       decode=decode, num_workers=2 if decode == "tensor" else 0, **kw)
        assert bank.spec.decode == decode
        decoding = bank.spec.decoding
        images = source.splits["train"].take(np.arange(9), decoding=decoding)
        ref = extract(from_arrays(images, source.splits["train"].labels),
                      out=tmp_path / f"{decode}-arrays.h5", **kw)
        assert "decode" not in ref.spec.to_json()
        np.testing.assert_array_equal(bank.load("train")[0], ref.load("train")[0])


def test_decode_errors_name_the_parameter(tmp_path):
    folder = f"folder:{tmp_path / 'imgs'}"
    write_folder(tmp_path / "imgs", splits=("",), n_per_class=1)
    npz = tmp_path / "d.npz"
    write_npz(npz, n_train=4, n_test=2)
    kw = dict(model="resnet18", weights="none", image_size=32, progress=False)
    with pytest.raises(ParameterError, match=r"the 'decode' parameter is 'gpu' .*runs on cpu"
                                             r".*use 'tensor'"):
        extract(folder, decode="gpu", device="cpu", out=tmp_path / "a.h5", **kw)
    with pytest.raises(ParameterError, match=r"the 'decode' parameter must be one of"):
        extract(folder, decode="nvjpeg", out=tmp_path / "a.h5", **kw)
    with pytest.raises(ParameterError, match=r"applies to image files, and 'npz' holds decoded"):
        extract(f"npz:{npz}", decode="tensor", out=tmp_path / "a.h5", **kw)
    assert not (tmp_path / "a.h5").exists()
    proc = run_cli("extract", "--dataset", folder, "--decode", "gpu", "--device", "cpu",
                   "--model", "resnet18", "--weights", "none", "--out", str(tmp_path / "b.h5"),
                   check=False)
    assert proc.returncode == 2 and "the 'decode' parameter is 'gpu'" in proc.stderr


def test_a_bank_resumes_only_with_its_own_decoder(tmp_path):
    write_folder(tmp_path / "imgs", splits=("",), n_per_class=2)
    kw = dict(model="resnet18", weights="none", image_size=32, progress=False)
    a = extract(f"folder:{tmp_path / 'imgs'}", out=tmp_path / "a.h5", **kw)
    b = extract(f"folder:{tmp_path / 'imgs'}", out=tmp_path / "b.h5", decode="tensor", **kw)
    assert a.fingerprint != b.fingerprint  # a partial of one decoder is not resumed by another
    assert "decode tensor" in b.info() and "decode" not in a.info()
    # PIL banks have no "decode" field, as before it existed: their fingerprints are unchanged
    assert "decode" not in a.spec.to_json()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_folder_split_through_the_gpu_decoder_on_cpu_tensors(tmp_path, workers):
    # the extraction's batches with decode="gpu", the device being the CPU: bytes read in
    # workers, a truncated JPEG (which the batched decode also fails on) skipped by name
    write_folder(tmp_path / "imgs", splits=("",), n_per_class=3)
    bad = tmp_path / "imgs" / "cat" / "002.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    split = open_source(f"folder:{tmp_path / 'imgs'}").splits["train"]
    d = Decoding(16, "bilinear", decoder="gpu")
    batches = list(split.batches(0, 4, decoding=d, device=torch.device("cpu"), skip_bad=True,
                                 num_workers=workers))
    assert [p for b in batches for p in b.skipped] == [str(bad)]
    positions = np.concatenate([b.positions for b in batches])
    assert positions.tolist() == [0, 1, 3, 4, 5, 6, 7, 8]
    images = np.concatenate([b.images.numpy() for b in batches])
    np.testing.assert_array_equal(images, split.take(positions, decoding=d))
    with pytest.raises(Exception, match=r"cannot read image .*002\.jpg.*--skip-bad"):
        list(split.batches(0, 4, decoding=d, device=torch.device("cpu")))
