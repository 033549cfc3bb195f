import numpy as np
import pytest
import torch
import torchvision

from featurebank import BackboneError, WeightsId, get_backbone, list_backbones, list_taps
from featurebank._io import autocast


def _x(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def test_registry_lists_torchvision_classifiers_and_named_taps():
    names = list_backbones()
    assert {"vgg19", "vgg16", "resnet50", "vit_b_16"} <= set(names)
    assert list_taps("vgg19") == ["fc6", "fc7", "penultimate", "pool5"]
    assert list_taps("resnet50") == ["penultimate"]


def test_vgg19_taps_match_a_manual_forward(vgg19_file):
    bb = get_backbone("vgg19", weights=vgg19_file, taps="fc6,fc7,pool5")
    m, x = bb.model, _x()
    with torch.no_grad():
        conv = m.features(x)
        flat = torch.flatten(m.avgpool(conv), 1)
        out = bb(x)
        torch.testing.assert_close(out["pool5"], conv.mean((2, 3)))
        torch.testing.assert_close(out["fc6"], m.classifier[:2](flat))
        torch.testing.assert_close(out["fc7"], m.classifier[:5](flat))
    assert (out["fc7"] >= 0).all()  # post-ReLU
    info = bb.probe(32)
    assert {t: v.dim for t, v in info.items()} == {"fc6": 4096, "fc7": 4096, "pool5": 512}
    assert info["pool5"].pool == "avg" and info["fc7"].pool == "none"
    assert info["fc7"].module == "classifier.4"


def test_forward_stops_after_the_last_tap(vgg19_file):
    bb = get_backbone("vgg19", weights=vgg19_file, taps=["fc6"])
    calls = []
    bb.model.classifier[3].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        bb(_x(1))
    assert calls == []


def test_preprocessing_comes_from_the_weights_enum(vgg19_file):
    bb = get_backbone("vgg19", weights=vgg19_file)
    t = torchvision.models.VGG19_Weights.DEFAULT.transforms()
    assert bb.preprocessing.mean == tuple(t.mean) and bb.preprocessing.std == tuple(t.std)
    assert bb.preprocessing.interpolation == t.interpolation.value
    assert bb.preprocessing.source == "torchvision:VGG19_Weights.IMAGENET1K_V1"
    assert bb.taps == ["fc7"] and str(bb.weights).startswith("file:sha256:")


def test_default_weights_go_through_torchvision_weights_enum(monkeypatch):
    # No network here: stand in for the download, keep torchvision's own loading path.
    sd = torchvision.models.resnet18(weights=None).state_dict()
    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict",
                        lambda self, *a, **k: sd)
    bb = get_backbone("resnet18", weights="DEFAULT")
    assert str(bb.weights) == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    torch.testing.assert_close(bb.model.fc.weight, sd["fc.weight"])
    bb = get_backbone("resnet18", weights="IMAGENET1K_V1")
    assert str(bb.weights) == "torchvision:ResNet18_Weights.IMAGENET1K_V1"


def test_penultimate_of_a_resnet_is_the_input_of_fc():
    bb = get_backbone("resnet18", weights=None)
    m, x = bb.model, _x(size=64)
    seen = []
    m.fc.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    with torch.no_grad():
        m(x)
        out = bb(x)["penultimate"]
    torch.testing.assert_close(out, seen[0])
    assert out.shape == (2, 512) and str(bb.weights) == "none"


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a = get_backbone("resnet18", weights=None)
    b = get_backbone("resnet18", weights="none")
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_any_named_module_is_a_tap():
    bb = get_backbone("resnet18", weights=None, taps=["layer3", "penultimate"])
    info = bb.probe(64)
    assert info["layer3"].dim == 256 and info["layer3"].activation_shape == (256, 4, 4)


def test_weights_file_roundtrip_and_common_wrappers(tmp_path):
    torch.manual_seed(3)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ddp.pt")
    for name in ("plain.pth", "ddp.pt"):
        bb = get_backbone("resnet18", weights=tmp_path / name)
        for k, v in bb.model.state_dict().items():
            torch.testing.assert_close(v, sd[k])
        assert bb.weights_path == str(tmp_path / name)
    # the id is the content hash: a renamed copy is the same weights
    assert (get_backbone("resnet18", weights=tmp_path / "plain.pth").weights
            != get_backbone("resnet18", weights=None).weights)


def test_weights_file_of_the_wrong_architecture(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(BackboneError, match=r"r18\.pth' does not fit model 'vgg19' "
                                            r"\(missing keys.*unexpected keys"):
        get_backbone("vgg19", weights=tmp_path / "r18.pth")
    sd = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    torch.save(sd, tmp_path / "r18_10.pth")
    with pytest.raises(BackboneError, match=r"shape mismatches \['fc.weight: file \(10, 512\)"):
        get_backbone("resnet18", weights=tmp_path / "r18_10.pth")


def test_weights_file_errors(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        get_backbone("resnet18", weights=tmp_path / "missing.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(BackboneError, match="does not hold a state_dict"):
        get_backbone("resnet18", weights=tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(BackboneError, match=r"weights_only=True.*torch.save\(model.state_dict"):
        get_backbone("resnet18", weights=tmp_path / "junk.pth")


def test_bad_names_are_clear_errors():
    with pytest.raises(BackboneError, match=r"unknown model 'vgg91'.*list_backbones"):
        get_backbone("vgg91")
    with pytest.raises(BackboneError, match=r"unknown tap 'fc9' for model 'resnet18'.*"
                                            r"penultimate"):
        get_backbone("resnet18", weights=None, taps="fc9")
    with pytest.raises(BackboneError, match=r"unknown weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        get_backbone("resnet18", weights="IMAGENET9K")
    with pytest.raises(BackboneError, match="name a tap twice"):
        get_backbone("resnet18", weights=None, taps="penultimate,penultimate")


def test_a_module_run_twice_is_refused_as_a_tap():
    bb = get_backbone("resnet18", weights=None, taps="layer1.0.relu")
    with pytest.raises(BackboneError, match=r"more than once.*layer1.0.relu': 2"):
        bb.probe(32)


def test_preprocess_resizes_and_normalises_on_the_tensor_device():
    bb = get_backbone("resnet18", weights=None)
    imgs = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3),
                                                                 dtype=np.uint8))
    x = bb.preprocess(imgs, 32)
    assert x.shape == (2, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    ref = torch.nn.functional.interpolate(imgs.permute(0, 3, 1, 2).float() / 255, size=32,
                                          mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(bb.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.preprocessing.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (ref - mean) / std, rtol=1e-4, atol=1e-4)
    same = bb.preprocess(imgs, 16)
    torch.testing.assert_close(same, (imgs.permute(0, 3, 1, 2).float() / 255 - mean) / std)


def test_timm_models_with_pretrained_cfg_and_weights_file(tmp_path):
    timm = pytest.importorskip("timm")  # the [timm] extra; installed by the dev extra
    bb = get_backbone("timm:resnet18", weights="none")
    cfg = timm.data.resolve_model_data_config(bb.model)
    assert bb.preprocessing.mean == tuple(cfg["mean"])
    assert bb.preprocessing.interpolation == cfg["interpolation"]
    assert bb.probe(32)["penultimate"].dim == 512
    torch.save(bb.model.state_dict(), tmp_path / "t.pth")
    bb2 = get_backbone("timm:resnet18", weights=tmp_path / "t.pth")
    with torch.no_grad():
        torch.testing.assert_close(bb2(_x())["penultimate"], bb(_x())["penultimate"])
    with pytest.raises(BackboneError, match="unknown model 'timm:no_such_net'"):
        get_backbone("timm:no_such_net", weights="none")


def test_list_taps_with_shapes_lists_every_module_in_order():
    rows = {r.name: r for r in list_taps("vgg19", shapes=True)}
    assert (rows["fc7"].module, rows["fc7"].shape, rows["fc7"].dim) == ("classifier.4", (4096,),
                                                                        4096)
    assert rows["pool5"].shape == (512, 7, 7) and rows["pool5"].pool == "avg"
    assert rows["features.0"].shape == (64, 224, 224) and rows["features.0"].layer == "Conv2d"
    assert rows["penultimate"].where == "input" and rows["penultimate"].dim == 4096
    small = {r.name: r for r in list_taps("resnet18", shapes=True, image_size=64)}
    assert small["layer3"].shape == (256, 4, 4) and small["layer3"].dim == 256
    resnet = list_taps("resnet18", shapes=True)
    assert [r.name for r in resnet][:3] == ["penultimate", "conv1", "bn1"]  # the order they run
    # each block's ReLU module runs twice: ambiguous as a tap, and said so
    assert {r.name for r in resnet if r.calls > 1} == {f"layer{i}.{j}.relu" for i in range(1, 5)
                                                      for j in (0, 1)}


def test_vision_transformer_tokens_are_pooled_not_refused():
    pytest.importorskip("timm")
    name = "timm:vit_tiny_patch16_224"
    rows = {r.name: r for r in list_taps(name, shapes=True, token_pool="mean")}
    assert rows["blocks.11"].shape == (197, 192) and rows["blocks.11"].pool == "mean"
    x = torch.randn(2, 3, 224, 224)
    for pool in ("cls", "mean"):
        bb = get_backbone(name, weights="none", taps="blocks.11", token_pool=pool)
        assert bb.probe(224)["blocks.11"].pool == pool
        tokens = {}
        handle = bb.model.blocks[11].register_forward_hook(
            lambda m, a, out: tokens.setdefault("t", out), prepend=True)  # before the tap's
        with torch.no_grad():
            got = bb(x)["blocks.11"]
            handle.remove()
            plain = bb.tap_network(bb.probe(224))(x)  # the FX form gives the same
        expected = tokens["t"][:, 0] if pool == "cls" else tokens["t"].mean(1)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(plain, expected)
    with pytest.raises(Exception, match="the 'token_pool' parameter must be one of"):
        get_backbone(name, weights="none", token_pool="max")


def test_pretrained_weights_without_a_network_is_one_clear_paragraph(tmp_path):
    # a proxy that refuses every connection stands for a machine without a network, on the
    # real download path; TORCH_HOME is empty, so nothing is cached
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "TORCH_HOME": str(tmp_path / "th"),
           "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    np_path = tmp_path / "d.npz"
    import numpy as np

    np.savez(np_path, images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array([0, 1]))
    proc = subprocess.run([sys.executable, "-m", "featurebank", "extract", "--dataset",
                           f"npz:{np_path}", "--model", "resnet18", "--weights", "DEFAULT",
                           "--out", str(tmp_path / "b.h5"), "-q"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 2
    assert "could not download the pretrained weights of 'resnet18'" in proc.stderr
    assert "--weights PATH" in proc.stderr and "'Offline use'" in proc.stderr


def _toy_family():
    from torchvision.models.feature_extraction import create_feature_extractor

    from featurebank.backbones import Family, Preprocessing
    from featurebank.backbones._features import Tap

    def build(name, pretrained):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(6, 4))

    def check(name):
        if name != "tiny":
            raise BackboneError(f"unknown model 'toy:{name}'")

    return Family(
        name="toy", prefix="toy:", names=lambda: ["tiny"], build=build,
        pretrained=lambda name, w: None, weights_id=lambda model, p: WeightsId("none"),
        preprocessing=lambda name, model, p: Preprocessing((0.5,) * 3, (0.25,) * 3, "bilinear",
                                                           "toy"),
        named_taps=lambda name, model: {"conv": Tap("1", "output")},
        default_tap=lambda name: "conv", feature_extractor=lambda: create_feature_extractor,
        check=check)


def test_a_backbone_family_is_one_record(monkeypatch, tmp_path):
    import featurebank.backbones._registry as registry
    from featurebank import extract, from_arrays

    monkeypatch.setattr(registry, "FAMILIES", (_toy_family(), *registry.FAMILIES))
    assert "toy:tiny" in list_backbones() and "vgg19" in list_backbones()
    with pytest.raises(BackboneError, match="unknown model 'toy:huge'"):
        get_backbone("toy:huge", weights="none")
    bb = get_backbone("toy:tiny", weights="none")
    assert bb.taps == ["conv"] and list_taps("toy:tiny") == ["conv", "penultimate"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (10, 12, 12, 3), dtype=np.uint8)
    bank = extract(from_arrays(images), model="toy:tiny", weights="none", image_size=16,
                   taps="conv,penultimate", dtype="float32", out=tmp_path / "b.h5",
                   progress=False)
    assert bank.spec.tap_layers["conv"].pool == "avg" and bank.shape("train", "conv") == (10, 6)
    net = bank.spec.rebuild_backbone("conv+penultimate")  # FX, through the family
    cpu = torch.device("cpu")
    with torch.no_grad(), autocast(cpu, bank.spec.amp(cpu)):  # as the bank ran
        x = net.preprocess(torch.from_numpy(images), 16)
        np.testing.assert_allclose(net(x).float().numpy(),
                                   bank.load("train", "conv+penultimate")[0],
                                   atol=1e-5)


def test_taps_are_listed_in_the_order_modules_start_and_unknown_ones_get_suggestions():
    names = [t.name for t in list_taps("resnet18", shapes=True, image_size=64)]
    assert names.index("layer1") < names.index("layer1.0") < names.index("layer1.0.conv1")
    assert names.index("layer1.0.bn2") < names.index("layer2")
    with pytest.raises(BackboneError, match=r"unknown tap 'layer1.0.conv9' for model 'resnet18' "
                                            r"\(did you mean 'layer1.0.conv2' or "
                                            r"'layer1.0.conv1' or .*`featurebank taps resnet18` "
                                            r"lists every tap"):
        get_backbone("resnet18", weights="none", taps="layer1.0.conv9")


def test_timm_without_the_hub_fails_at_once_naming_the_ways_out(monkeypatch, tmp_path):
    import time

    import featurebank.backbones._registry as registry

    pytest.importorskip("timm")
    monkeypatch.setattr(registry, "_hub_reachable", lambda *a, **k: False)  # as offline
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    t = time.time()
    with pytest.raises(BackboneError, match=r"could not download the pretrained weights of "
                                            r"'timm:resnet18'.*--weights PATH.*HF_HUB_OFFLINE=1"):
        get_backbone("timm:resnet18", weights="DEFAULT")
    assert time.time() - t < 30  # no minute of retries
    assert not constants.HF_HUB_OFFLINE  # the hub's own mode is put back
