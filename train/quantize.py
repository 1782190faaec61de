"""int8 model of an export bundle: static ONNX quantisation, kept only when its verdicts hold.

``python -m train export-int8`` adds ``model.int8.onnx`` and ``threshold.int8.json`` to an
export bundle (``scripts/create_mar.sh --format onnx-int8`` packs them; the handler serves
the file with onnxruntime like ``model.onnx``):

1. the bundle's ``model.onnx`` (converted from TorchScript first when missing) is
   quantised statically, QDQ format: weights int8 per output channel, activations uint8
   per tensor, their ranges calibrated on real photos of both classes from the
   validation set. onnxruntime runs it on int8 matrix kernels (AVX-512 VNNI on the CPU
   this was measured on: 3.5x the fp32 TorchScript model at 512 px).
2. The head (global pools, their concatenation and the final layer: every node outside
   the backbone blocks of :data:`train.model.BLOCKS`) stays float. Measured on the team's
   real photos: with the head quantised too, the average and max pools share one int8
   scale in the concatenation, and the held-out ROC-AUC fell from 0.966 to 0.930 with
   every verdict at the old threshold turned clean.
3. The validation set is scored by both models; the threshold is chosen again on the
   int8 model's own scores by the bundle's rule (``threshold.json``), so a shift of the
   scores moves the threshold instead of the verdicts.
4. The check set (held out: never trained, selected or thresholded on) is scored by both
   models, each at its own threshold (the fp32 model at the bundle's; for reference also at
   the threshold its rule picks on the same validation images). The int8 model is written only when its F1 and
   ROC-AUC are each at most ``max_drop`` (default 0.005) below the fp32 model's. The check
   goes into ``model_info.json`` under ``int8``, whether or not it passed; a failed check
   leaves the files of an earlier passed one in place, and ``create_mar.sh --format
   onnx-int8`` refuses them because the latest check did not pass.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handler.preprocess import SPEC_FILE, PreprocessSpec, image_to_tensor, load_image_file
from train.export import INFO_FILE, ONNX_FILE, THRESHOLD_FILE, ExportError, export_onnx, onnx_runner
from train.io import write_bytes_atomic, write_json_atomic
from train.metrics import binary_metrics, choose_threshold
from train.model import BLOCKS
from train.predict import score_files

log = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
INT8_THRESHOLD_FILE = "threshold.int8.json"
DEFAULT_MAX_DROP = 0.005
DEFAULT_CALIBRATION_IMAGES = 64


class QuantizationRejected(ExportError):
    """The int8 model lost more than the allowed F1 or ROC-AUC; nothing was written."""


def head_nodes(graph_node_names: Sequence[str]) -> list[str]:
    """Nodes outside the backbone blocks (``/Mixed_6e/...``, ``/Conv2d_1a_3x3/...``): the head."""
    blocks = set(BLOCKS)
    return [name for name in graph_node_names if name.strip("/").split("/")[0] not in blocks]


def balanced_sample(paths: Sequence[Path], labels: Sequence[int], count: int, seed: int) -> list[Path]:
    """Up to ``count`` paths, half from each class where possible, seeded."""
    rng = random.Random(seed)
    by_class = [[p for p, y in zip(paths, labels) if y == c] for c in (0, 1)]
    for group in by_class:
        rng.shuffle(group)
    half = count // 2
    take = [min(len(by_class[0]), max(half, count - len(by_class[1]))), 0]
    take[1] = min(len(by_class[1]), count - take[0])
    chosen = by_class[0][: take[0]] + by_class[1][: take[1]]
    rng.shuffle(chosen)
    return chosen


def quantize_onnx(fp32_path: Path, calibration: Sequence[Path], spec: PreprocessSpec, work: Path) -> bytes:
    """Static QDQ quantisation of ``fp32_path``, calibrated on ``calibration`` images; the model bytes."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ValueError("int8 calibration needs at least one readable image")
    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    names = [node.name for node in onnx.load(str(prepared)).graph.node]
    excluded = head_nodes(names)
    if len(excluded) == len(names):
        raise ExportError(f"{fp32_path}: no node belongs to a backbone block ({BLOCKS[0]} ... {BLOCKS[-1]}); not this project's model")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.files = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            for path in self.files:
                try:
                    image = load_image_file(path, max_pixels=spec.max_pixels, draft_size=spec.draft_size)
                except ValueError as exc:
                    log.warning("calibration: skipped %s", exc)
                    continue
                return {"input": image_to_tensor(image, spec).unsqueeze(0).numpy()}
            return None

    out = work / "int8.onnx"
    quantize_static(
        str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=excluded,
    )  # fmt: skip
    return out.read_bytes()


def score_both(
    models: dict[str, Callable[[torch.Tensor], torch.Tensor]], spec: PreprocessSpec, paths: Sequence[Path], what: str
) -> dict[str, np.ndarray]:
    """Probabilities of every model for ``paths``, each image decoded once (through score_files)."""
    names = list(models)
    others: dict[str, list[torch.Tensor]] = {name: [] for name in names[1:]}

    def tee(batch: torch.Tensor) -> torch.Tensor:  # the first model's logits; the others' are kept aside
        for name in names[1:]:
            others[name].append(models[name](batch).reshape(-1).double())
        return models[names[0]](batch)

    first, errors = score_files(tee, spec, paths, batch_size=8, progress=False)
    if errors:
        example = next(iter(errors.values()))
        raise ValueError(f"{what}: {len(errors)} image(s) could not be read, e.g. {example}; fix or remove them")
    probs = {names[0]: first}
    for name, chunks in others.items():
        probs[name] = torch.sigmoid(torch.cat(chunks)).numpy() if chunks else np.zeros(0)
    return probs


def _rechosen_threshold(threshold: dict[str, Any], labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The bundle's rule applied to ``probs``; a manual threshold stays as it is."""
    rule = threshold.get("rule")
    if rule in (None, "manual"):
        return {**threshold, "note": f"{threshold.get('note', '')} (kept: manual threshold)".strip()}
    return choose_threshold(labels, probs, rule, threshold.get("target")).to_dict()


def quality_gate(fp32: dict[str, float], int8: dict[str, float], max_drop: float) -> list[str]:
    """What fails the check: F1 or ROC-AUC more than ``max_drop`` below fp32's (empty when it passes)."""
    failures = []
    for key in ("f1", "roc_auc"):
        drop = fp32[key] - int8[key]
        if not drop <= max_drop:  # NaN fails too
            failures.append(f"{key} {int8[key]:.4f} is {drop:.4f} below fp32's {fp32[key]:.4f} (allowed {max_drop})")
    return failures


def export_int8(
    export_dir: Path,
    val: tuple[Sequence[Path], Sequence[int]],
    check: tuple[Sequence[Path], Sequence[int]],
    *,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    max_drop: float = DEFAULT_MAX_DROP,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Quantise the bundle's ONNX model, check it, and write it only when the check passes.

    Args:
        export_dir: export bundle (``model.onnx`` is added first when missing).
        val: validation images and labels: calibration draws from them and the int8
            threshold is chosen on them.
        check: held-out images and labels for the F1 / ROC-AUC comparison.
        calibration_images: how many validation images calibrate the activation ranges
            (balanced between the classes).
        max_drop: largest allowed drop of F1 and of ROC-AUC (fp32 minus int8).
        seed: the calibration sample's seed.
        threads: onnxruntime threads (default: torch's).

    Returns:
        The check as recorded in ``model_info.json`` (``passed`` true).

    Raises:
        QuantizationRejected: the check failed (recorded in ``model_info.json``; no model written).
        ValueError: bad arguments, a set without both classes, unreadable images.
    """
    export_dir = Path(export_dir)
    if calibration_images < 1:
        raise ValueError(f"calibration_images={calibration_images!r}: allowed is an integer >= 1")
    if not 0 <= max_drop < 1:
        raise ValueError(f"max_drop={max_drop!r}: allowed is 0 <= drop < 1")
    for what, (paths, labels) in (("validation", val), ("check", check)):
        if len(paths) != len(labels) or set(labels) != {0, 1}:
            raise ValueError(f"the {what} set needs labelled images of both classes (clean 0 and watermarked 1)")
    if not (export_dir / ONNX_FILE).is_file():
        log.info("%s: no %s yet; converting the TorchScript model first", export_dir, ONNX_FILE)
        export_onnx(export_dir)
    spec = PreprocessSpec.load(export_dir / SPEC_FILE)
    threshold = json.loads((export_dir / THRESHOLD_FILE).read_text(encoding="utf-8"))
    threads = threads or torch.get_num_threads()
    started = time.time()
    calibration = balanced_sample(val[0], val[1], calibration_images, seed)
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        int8_bytes = quantize_onnx(export_dir / ONNX_FILE, calibration, spec, Path(tmp))
    quantize_seconds = time.time() - started
    models = {"fp32": onnx_runner(export_dir / ONNX_FILE, threads), "int8": onnx_runner(int8_bytes, threads)}
    val_labels, check_labels = np.asarray(val[1], dtype=int), np.asarray(check[1], dtype=int)
    record: dict[str, Any] = {
        "file": INT8_FILE, "threshold_file": INT8_THRESHOLD_FILE, "max_drop": max_drop, "calibration_images": len(calibration),
        "calibration_seed": seed, "validation_images": len(val_labels), "check_images": len(check_labels),
        "float_nodes": "head (outside the backbone blocks)", "quantize_seconds": round(quantize_seconds, 1),
    }  # fmt: skip
    thresholds = {"fp32": float(threshold["threshold"])}
    metrics: dict[str, dict[str, float]] = {}
    val_probs = score_both(models, spec, val[0], "validation set")
    chosen = _rechosen_threshold(threshold, val_labels, val_probs["int8"])
    thresholds["int8"] = float(chosen["threshold"])
    # The bundle's rule on the fp32 model's scores of the same validation images: when this
    # differs from the bundle's threshold, the validation set or its scoring (e.g. bf16 in
    # training) differs from the one the threshold was chosen on.
    thresholds["fp32_rechosen"] = float(_rechosen_threshold(threshold, val_labels, val_probs["fp32"])["threshold"])
    check_probs = score_both(models, spec, check[0], "check set")
    for name, probs in check_probs.items():
        metrics[name] = {k: float(v) for k, v in binary_metrics(check_labels, probs, thresholds[name]).items()}
    metrics["fp32_rechosen"] = {
        k: float(v) for k, v in binary_metrics(check_labels, check_probs["fp32"], thresholds["fp32_rechosen"]).items()
    }
    verdicts = {name: check_probs[name] >= thresholds[name] for name in models}
    record.update({
        "thresholds": thresholds, "check": metrics, "check_verdicts_changed": int((verdicts["fp32"] != verdicts["int8"]).sum()),
        "check_max_probability_diff": float(np.abs(check_probs["fp32"] - check_probs["int8"]).max()),
    })  # fmt: skip
    failures = quality_gate(metrics["fp32"], metrics["int8"], max_drop)
    record["passed"] = not failures
    record["failures"] = failures
    record["seconds"] = round(time.time() - started, 1)
    info_path = export_dir / INFO_FILE
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    if failures:
        write_json_atomic(info_path, {**info, "int8": record})
        raise QuantizationRejected("int8 model rejected, nothing written: " + "; ".join(failures))
    write_bytes_atomic(export_dir / INT8_FILE, int8_bytes)
    write_json_atomic(export_dir / INT8_THRESHOLD_FILE, {**chosen, "model": INT8_FILE})
    write_json_atomic(info_path, {**info, "int8": record})
    return record
