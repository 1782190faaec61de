"""Batch prediction with an export bundle on an unlabelled image folder.

``python -m train predict --export artifacts/export --input DATA/test --out predictions.csv``

Images are decoded and turned into tensors by :mod:`handler.preprocess` only, with the
bundle's ``preprocess.json``, and the bundle's ``threshold.json`` decides: the verdicts
are the ones the TorchServe handler gives for the same files. Unreadable files never
stop a run; they are listed in the CSV with their error and counted.

Optional test-time augmentation (``tta=True``, ``--tta``) averages the logits of three
views -- the original, its horizontal mirror, and the image at a second scale
(``image_size * 1.5``, same spec otherwise; the network is fully convolutional) -- and
applies the sigmoid to the mean. The decision threshold in the bundle was chosen on
validation scores *without* TTA, so TTA probabilities are calibrated slightly
differently and verdicts at that threshold are not what the server answers.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from handler.preprocess import ImageDecodeError, PreprocessSpec, image_to_tensor, load_image_file, sigmoid
from train.data import IMAGE_SUFFIXES
from train.io import write_csv_atomic

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("file", "probability", "watermark", "error")
PROBABILITY_DIGITS = 6  # as the handler answers
TTA_SCALE = 1.5
TTA_NOTE = "the bundle's threshold was chosen on validation scores without TTA"


@dataclass(frozen=True)
class View:
    """One test-time view: preprocessing spec plus an optional horizontal mirror."""

    name: str
    spec: PreprocessSpec
    mirror: bool = False


def quiet_load_export(export_dir: Path):
    """:func:`train.export.load_export` without torch's ``torch.jit.load is deprecated`` notice."""
    from train.export import load_export

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        return load_export(Path(export_dir))


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """Recursive scan: ``(images, other_files)``, both sorted; hidden files are ignored."""
    images: list[Path] = []
    other: list[Path] = []
    for path in sorted(Path(folder).rglob("*")):
        rel_parts = path.relative_to(folder).parts
        if any(part.startswith(".") for part in rel_parts) or not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else other).append(path)
    return images, other


def tta_views(model: torch.nn.Module, spec: PreprocessSpec) -> list[View]:
    """Original, mirror and (if the model accepts it) a second scale ``round(S * 1.5)``.

    The traced model is probed with a batch of two at the larger size; if it fails or
    does not return ``[2, 1]``, the second scale is dropped with a warning.
    """
    views = [View("original", spec), View("mirror", spec, mirror=True)]
    size = int(round(spec.image_size * TTA_SCALE))
    try:
        scaled = replace(spec, image_size=size)
        with torch.inference_mode():
            out = model(torch.zeros(2, 3, size, size))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 1):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise RuntimeError(f"returned {shape} for a batch of 2; expected [2, 1]")
    except Exception as exc:  # traced models may bake in the input size
        warnings.warn(
            f"TTA: the model does not accept {size}x{size} inputs ({type(exc).__name__}: {exc}); "
            "using the original and mirrored views only",
            RuntimeWarning,
            stacklevel=2,
        )
        return views
    views.append(View(f"scale{size}", scaled))
    return views


def _view_tensor(image: Image.Image, view: View) -> torch.Tensor:
    return image_to_tensor(ImageOps.mirror(image) if view.mirror else image, view.spec)


def _forward(model: torch.nn.Module, batch: torch.Tensor) -> np.ndarray:
    out = model(batch.contiguous(memory_format=torch.channels_last))  # as the handler feeds TorchScript
    if not isinstance(out, torch.Tensor) or out.numel() != batch.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RuntimeError(f"model returned {shape} for {batch.shape[0]} images; expected logits [N, 1]")
    return out.reshape(-1).double().cpu().numpy()


def score_files(
    model: torch.nn.Module,
    spec: PreprocessSpec,
    paths: Sequence[Path],
    *,
    batch_size: int = 8,
    tta: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, dict[Path, str]]:
    """Watermark probabilities for ``paths`` (same order), plus the errors by path.

    Every file is read with :func:`handler.preprocess.load_image_file` and turned into
    the model input by :func:`handler.preprocess.image_to_tensor` (the serving path).
    Unreadable files get ``NaN`` and their message in the error dict; they never stop
    the run.

    Args:
        model: TorchScript (or eager) model, ``[N, 3, S, S]`` -> logits ``[N, 1]``.
        spec: the bundle's preprocessing spec.
        paths: image files.
        batch_size: images per forward pass.
        tta: average the logits of the original, mirrored and 1.5x-scale views (see
            :func:`tta_views`) before the sigmoid. The bundle's threshold was chosen
            without TTA.
        progress: show a tqdm bar (``disable=None``: hidden when not a TTY).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: allowed is an integer >= 1")
    paths = [Path(p) for p in paths]
    probs = np.full(len(paths), np.nan, dtype=np.float64)
    errors: dict[Path, str] = {}
    if hasattr(model, "eval"):
        model.eval()
    views = tta_views(model, spec) if tta else [View("original", spec)]
    bar = tqdm(total=len(paths), desc="scoring", unit="img", disable=None if progress else True, leave=False)
    try:
        with torch.inference_mode():
            for start in range(0, len(paths), batch_size):
                chunk = range(start, min(start + batch_size, len(paths)))
                good: list[int] = []
                tensors: list[list[torch.Tensor]] = [[] for _ in views]
                for idx in chunk:
                    path = paths[idx]
                    try:
                        image = load_image_file(path, max_pixels=spec.max_pixels, draft_size=spec.draft_size)
                        per_view = [_view_tensor(image, view) for view in views]
                    except ImageDecodeError as exc:
                        errors[path] = str(exc)
                        continue
                    except Exception as exc:  # an odd file must not stop the batch
                        errors[path] = f"{path}: could not process the image ({type(exc).__name__}: {exc})"
                        continue
                    for store, tensor in zip(tensors, per_view):
                        store.append(tensor)
                    good.append(idx)
                if good:
                    logits = np.mean([_forward(model, torch.stack(store)) for store in tensors], axis=0)
                    for idx, logit in zip(good, logits):
                        probs[idx] = sigmoid(float(logit))
                bar.update(len(chunk))
    finally:
        bar.close()
    if errors:
        log.warning("skipped %d unreadable file(s) of %d", len(errors), len(paths))
    return probs, errors


def refuse_existing(path: Path, what: str = "output") -> None:
    """FileExistsError naming ``path`` and the ``--overwrite`` flag."""
    if Path(path).exists():
        raise FileExistsError(f"{path}: {what} already exists; pass --overwrite to replace it")


def format_probability(p: float) -> str:
    return "" if np.isnan(p) else f"{round(float(p), PROBABILITY_DIGITS):.{PROBABILITY_DIGITS}f}"


def predict_folder(
    export_dir: Path,
    folder: Path,
    out_csv: Path,
    *,
    batch_size: int = 8,
    tta: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every image under ``folder`` (recursively) and write ``out_csv``.

    CSV columns ``file,probability,watermark,error``: ``file`` relative to ``folder``,
    sorted; ``probability`` rounded to 6 places; ``watermark`` ``true``/``false`` at the
    bundle's threshold (``probability >= threshold``, as the handler); for a skipped
    file ``probability`` and ``watermark`` are empty and ``error`` says why. Files
    with other suffixes are ignored (counted). The CSV is written atomically.

    With ``tta=True`` see :func:`score_files`; the threshold was chosen without TTA.

    Returns:
        A summary: ``images``, ``scored``, ``watermarked``, ``skipped``,
        ``skipped_files``, ``ignored_files``, ``threshold``, ``tta``, ``out_csv``.

    Raises:
        FileNotFoundError: missing folder or export bundle.
        FileExistsError: ``out_csv`` exists and ``overwrite`` is false.
        ValueError: no image files under ``folder``.
    """
    folder, out_csv = Path(folder), Path(out_csv)
    if not folder.is_dir():
        raise FileNotFoundError(f"--input {folder}: not a folder")
    if not overwrite:
        refuse_existing(out_csv, "predictions file")
    images, other = list_images(folder)
    if not images:
        raise ValueError(
            f"--input {folder}: no image files found (recursively); allowed suffixes: {sorted(IMAGE_SUFFIXES)}"
            + (f"; {len(other)} other file(s) ignored" if other else "")
        )
    model, spec, threshold_info = quiet_load_export(export_dir)
    threshold = float(threshold_info["threshold"])
    probs, errors = score_files(model, spec, images, batch_size=batch_size, tta=tta, progress=progress)
    rows = []
    for path, prob in sorted(zip(images, probs), key=lambda pp: pp[0].relative_to(folder).as_posix()):
        rel = path.relative_to(folder).as_posix()
        if path in errors:
            rows.append([rel, "", "", errors[path]])
        else:
            rows.append([rel, format_probability(prob), "true" if prob >= threshold else "false", ""])
    write_csv_atomic(out_csv, PREDICTION_COLUMNS, rows)
    scored = probs[~np.isnan(probs)]
    summary = {
        "images": len(images),
        "scored": int(scored.size),
        "watermarked": int(np.sum(scored >= threshold)),
        "skipped": len(errors),
        "skipped_files": [{"file": p.relative_to(folder).as_posix(), "error": e} for p, e in sorted(errors.items())],
        "ignored_files": len(other),
        "threshold": threshold,
        "threshold_rule": threshold_info.get("rule"),
        "tta": tta,
        "out_csv": str(out_csv),
    }
    if other:
        log.info("ignored %d non-image file(s) under %s", len(other), folder)
    return summary
