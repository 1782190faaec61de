"""The export bundle as an MLflow ``pyfunc`` model: verdicts, not logits, as TorchServe answers.

A registered version (``train/registry.py``) is an MLflow model whose ``python_function``
flavour names this module as its ``loader_module``; the bundle (``model.pt``,
``preprocess.json``, ``threshold.json``, ...) is the model's ``data`` folder, and this
module with ``preprocess.py`` travels in its ``code`` folder (as the package
``watermark_pyfunc``), so ``mlflow models serve`` and ``mlflow.pyfunc.load_model`` need
nothing from this repository. MLflow calls :func:`_load_pyfunc` with the bundle folder.

Input: a ``pandas.DataFrame`` with a binary column ``image``, one image's bytes per row
(the scoring server takes them base64-encoded in JSON; the signature says so).

Output: a ``pandas.DataFrame``, one row per input row, in order:

* ``probability``: sigmoid of the model's logit, rounded to 6 digits (as TorchServe);
* ``threshold``: the bundle's decision threshold;
* ``watermark``: ``probability >= threshold`` (the unrounded probability, as TorchServe);
* ``error``: why this row was not scored (``None`` when it was);
* ``status``: 200, or the HTTP status TorchServe answers that image with (400, 413, 415).

A row that is not a usable image gets its own ``error`` (``probability`` and ``watermark``
are ``None``); the other rows are answered. ``probability`` and ``watermark`` are object
columns so those ``None`` stay JSON ``null`` instead of ``NaN``.

Decoding, resizing and normalising are :mod:`preprocess`'s, driven by the bundle's
``preprocess.json``: the same function the TorchServe handler and training call.

Device: the CPU, unless ``model_config={"device": "cuda" | "auto"}`` (``mlflow.pyfunc.load_model``)
or the environment variable ``WATERMARK_PYFUNC_DEVICE`` says otherwise; ``auto`` takes CUDA
when there is one. On CUDA, cuDNN may compute in TF32, so probabilities differ from the CPU's
in the third or fourth digit.

Never import training code or mlflow here; this module needs torch, numpy, Pillow (through
``preprocess``) and pandas (which MLflow brings). Nothing heavy happens at import time.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .preprocess import SPEC_FILE, ImageDecodeError, PreprocessSpec, bytes_to_tensor, sigmoid

INPUT_COLUMN = "image"
OUTPUT_COLUMNS = ("probability", "threshold", "watermark", "error", "status")
MODEL_FILE = "model.pt"
THRESHOLD_FILE = "threshold.json"
REQUIRED_FILES = (MODEL_FILE, SPEC_FILE, THRESHOLD_FILE)
PROBABILITY_DIGITS = 6
# Images decoded and scored together; bounds the memory of one large request.
CHUNK = 16
DEVICE_ENV = "WATERMARK_PYFUNC_DEVICE"
DEVICES = ("cpu", "cuda", "auto")
IMAGE_TYPES = (bytes, bytearray, memoryview)


def read_threshold(path: Path) -> float:
    """The decision threshold of ``threshold.json`` (a number in [0, 1])."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: decision threshold file not found in the bundle") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    value = data.get("threshold") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f'{path}: expected {{"threshold": <number in [0, 1]>, ...}}, got {data!r}')
    return float(value)


def resolve_device(requested: str | None) -> torch.device:
    """``cpu`` (the default), ``cuda`` (an error without one) or ``auto`` (CUDA when there is one)."""
    name = (requested or "cpu").strip().lower()
    if name not in DEVICES:
        raise ValueError(f"device {requested!r}: allowed are {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda': no CUDA device is available here; use cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class WatermarkPyfunc:
    """One loaded bundle; :meth:`predict` answers a DataFrame of image bytes."""

    def __init__(self, bundle: str | Path, device: torch.device | None = None) -> None:
        self.bundle = Path(bundle)
        missing = [name for name in REQUIRED_FILES if not (self.bundle / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.bundle}: the bundle lacks {missing}; it needs {list(REQUIRED_FILES)}")
        self.device = device or torch.device("cpu")
        self.spec = PreprocessSpec.load(self.bundle / SPEC_FILE)
        self.threshold = read_threshold(self.bundle / THRESHOLD_FILE)
        self.model = torch.jit.load(str(self.bundle / MODEL_FILE), map_location=self.device).eval()
        self._check_model_contract()

    def _check_model_contract(self) -> None:
        """Fail at load time, not on the first request, if the model does not map [N,3,S,S] -> [N,1]."""
        size = self.spec.image_size
        with torch.inference_mode():
            out = self.model(torch.zeros(2, 3, size, size, device=self.device))
        if not isinstance(out, torch.Tensor) or out.numel() != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise RuntimeError(f"{self.bundle / MODEL_FILE} returned {shape} for a batch of 2; expected logits of shape [2, 1]")

    def _tensor(self, row: int, value: Any) -> torch.Tensor:
        if not isinstance(value, IMAGE_TYPES):
            raise ImageDecodeError(
                f"row {row}: expected the image's bytes (a binary value; base64 in JSON), got {type(value).__name__}",
                reason="not_image_bytes",
            )
        return bytes_to_tensor(bytes(value), self.spec, source=f"row {row}")

    def _logits(self, tensors: list[torch.Tensor]) -> list[float]:
        batch = torch.stack(tensors)
        # As the TorchServe handler: channels_last on every device (same logits to ~1e-6).
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.model(batch)
        if out.numel() != len(tensors):
            raise RuntimeError(f"model returned {tuple(out.shape)} for {len(tensors)} images; expected [N, 1]")
        return out.reshape(-1).float().cpu().tolist()

    def score(self, images: list[Any]) -> list[dict[str, Any]]:
        """One answer per item, in order (see the module docstring)."""
        answers: list[dict[str, Any]] = []
        for start in range(0, len(images), CHUNK):
            chunk: list[dict[str, Any]] = []
            good: list[tuple[int, torch.Tensor]] = []
            for offset, value in enumerate(images[start:start + CHUNK]):
                row = start + offset
                answer: dict[str, Any] = {"probability": None, "threshold": self.threshold, "watermark": None, "error": None, "status": 200}
                try:
                    good.append((offset, self._tensor(row, value)))
                except ImageDecodeError as exc:  # its message already says what is allowed
                    answer.update(error=str(exc), status=exc.status)
                except Exception as exc:  # never let one odd input take the batch down
                    answer.update(error=f"row {row}: could not process the image ({type(exc).__name__}: {exc})", status=400)
                chunk.append(answer)
            if good:
                for (offset, _), logit in zip(good, self._logits([t for _, t in good])):
                    probability = sigmoid(logit)
                    chunk[offset].update(probability=round(probability, PROBABILITY_DIGITS), watermark=bool(probability >= self.threshold))
            answers.extend(chunk)
        return answers

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """MLflow's entry point: a DataFrame with column ``image`` -> one answer row per image."""
        if not isinstance(model_input, pd.DataFrame):
            raise TypeError(
                f"model input is a {type(model_input).__name__}: expected a pandas DataFrame with a binary column {INPUT_COLUMN!r}"
            )
        if INPUT_COLUMN not in model_input.columns:
            raise ValueError(
                f"model input has columns {[str(c) for c in model_input.columns]}: expected a column {INPUT_COLUMN!r} of image bytes"
            )
        answers = self.score(list(model_input[INPUT_COLUMN]))
        return pd.DataFrame(
            {
                "probability": pd.Series([a["probability"] for a in answers], dtype=object),
                "threshold": pd.Series([a["threshold"] for a in answers], dtype="float64"),
                "watermark": pd.Series([a["watermark"] for a in answers], dtype=object),
                "error": pd.Series([a["error"] for a in answers], dtype=object),
                "status": pd.Series([a["status"] for a in answers], dtype="int64"),
            },
            columns=list(OUTPUT_COLUMNS),
        )


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> WatermarkPyfunc:
    """MLflow's loader hook: ``data_path`` is the bundle folder inside the model."""
    device = (model_config or {}).get("device") or os.environ.get(DEVICE_ENV)
    return WatermarkPyfunc(data_path, resolve_device(device))
