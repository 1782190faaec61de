"""TorchServe handler: is there a watermark on this product photo?

Inside the repository this module is ``handler.watermark_handler``; inside the ``.mar``
TorchServe unpacks every file flat into the model directory and imports this file as
the top-level module ``watermark_handler``, so the shared preprocessing module is
imported either relatively (package) or as the flat module ``preprocess``.

TorchServe picks the handler class with ``ts.utils.util.list_classes_from_module``,
which demands exactly ONE class *defined* in this module: keep helpers as functions.

Never import training code, mlflow or optuna here; this module only needs torch,
numpy and Pillow (through ``preprocess``). Nothing heavy happens at import time.

Request body (per item of a batch):
    raw bytes (``curl -T photo.jpg``, ``--data-binary`` with ``Content-Type:
    application/octet-stream`` or ``image/*``) arrive as ``row["body"]``; a
    multipart upload arrives under its field name (``data``, ``file``, ``image`` or any
    single binary field).

Response per good image (JSON, HTTP 200)::

    {"watermark": true, "probability": 0.912345, "threshold": 0.37,
     "model": "watermark", "version": "1.0"}

Sent to ``/explanations/<model>`` (TorchServe marks it with the request header
``explain: True``), a good image's answer also has ``"explanation"``: where the evidence
is, from the same forward pass (``evidence.py`` documents the object). A model without an
evidence map (a ``.pt2``, or an export older than explanations) answers
``"explanation": null`` with ``"explanation_error"`` saying why; the verdict is the same.

Response per bad image (HTTP 400, 413 or 415 for that request only; the HTTP reason phrase is
a one-line ASCII copy of the message)::

    {"error": "request body: not a decodable image (...); allowed are JPEG, PNG, ...",
     "status": 400}

Request tag: a client may send ``X-Request-Tag: <1-64 of A-Z a-z 0-9 . _ : ->``; it is
echoed as the response header ``X-Request-Tag`` (good or bad item), so a client or a load
test can prove that every response belongs to its request. A malformed tag is a 400.

Metrics (TorchServe metrics API; declared in metrics.yaml so prometheus mode exports them
on the metrics port, with a Hostname label added by the frontend)::

    watermark_verdicts_total{ModelName, ModelVersion, Level="Model", Verdict="watermark"|"clean"}
    watermark_rejected_inputs_total{ModelName, ModelVersion, Level="Model", Reason=...}

Reasons: empty, undecodable, unsupported_format, too_small, too_many_pixels, over_memory_budget,
unreadable (preprocess.REJECT_REASONS) and the
handler's own not_image_bytes, ambiguous_form, bad_request_tag, processing_error.

Backends: the archive's serialized file is ``model.pt`` (TorchScript, the default),
``model.onnx`` or ``model.int8.onnx`` (onnxruntime; fp32 or quantised int8, the fastest on
the CPU), or ``model.pt2`` (an AOTInductor package, TorchScript's successor; CPU only);
all take the same normalised ``[N, 3, S, S]`` batch and return logits ``[N, 1]``.
``handler.threads`` in model-config.yaml sets the intra-op threads of every backend (create_mar.sh writes
cores / workers). The TorchScript model gets its batch in ``channels_last`` on every
device (about 1.4x faster on the CPU here, same logits to ~1e-6). On CUDA the batch goes
through pinned host memory, the model's weights are ``channels_last`` too and, with
``handler.cuda_half: true``, it runs under float16 autocast; onnxruntime uses its CUDA
provider when it has one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from typing import Any

import torch
from ts.handler_utils.timer import timed
from ts.metrics.dimension import Dimension
from ts.torch_handler.base_handler import BaseHandler

if __package__:  # imported as handler.watermark_handler (repository, tests)
    from .evidence import summarize
    from .preprocess import (
        SPEC_FILE, DecodeBudget, ImageDecodeError, PreprocessSpec, content_box, decode_budget, decode_cost,
        image_to_tensor, load_rgb, open_image, sigmoid, upright_size,
    )
else:  # imported flat from the unpacked .mar model directory
    from evidence import summarize
    from preprocess import (
        SPEC_FILE, DecodeBudget, ImageDecodeError, PreprocessSpec, content_box, decode_budget, decode_cost,
        image_to_tensor, load_rgb, open_image, sigmoid, upright_size,
    )

logger = logging.getLogger(__name__)

THRESHOLD_FILE = "threshold.json"
MODEL_INFO_FILE = "model_info.json"
# Field names tried, in order, for the image bytes of one request.
BODY_KEYS = ("data", "body", "file", "image")
# Settings accepted under ``handler:`` in the archive's model-config.yaml.
HANDLER_SETTINGS = {"max_pixels", "decode_memory_mb", "profile", "threads", "cuda_half"}
# Images of one batch decoding in parallel hold at most this many per-image budgets at once.
DEFAULT_DECODES_AT_ONCE = 2
MODEL_FORMATS = {".pt": "torchscript", ".onnx": "onnx", ".pt2": "pt2"}
# The evidence map's ONNX output name (TorchScript: the model's ``explain`` method).
EVIDENCE_OUTPUT = "evidence"
# TorchServe's frontend sets this request header to "True" on /explanations/<model> calls.
EXPLAIN_HEADER = "explain"
NO_EXPLANATION = (
    "this model version has no evidence map ({why}); export it again with this release "
    "(python -m train export, then scripts/create_mar.sh) to get explanations"
)
REASON_MAX_CHARS = 200
# How error messages name the input (the client sees only its own request).
SOURCE = "request body"
PROBABILITY_DIGITS = 6
# Client-chosen request tag, echoed back (see the module docstring).
REQUEST_TAG_HEADER = "X-Request-Tag"
REQUEST_TAG_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
REQUEST_TAG_ALLOWED = "1-64 characters from A-Z, a-z, 0-9, '.', '_', ':', '-'"
# Custom metrics; names and dimension order must match metrics.yaml (model_metrics.counter).
VERDICT_METRIC = "watermark_verdicts_total"
REJECT_METRIC = "watermark_rejected_inputs_total"
HOW_TO_SEND = (
    "send the raw image bytes as the request body (curl -T photo.jpg, or Content-Type "
    "image/* or application/octet-stream) or as a multipart form field named 'data' or 'file'"
)


# After decoding an image this large, hand the freed memory back to the OS (see below).
TRIM_AFTER_BYTES = 64_000_000
_LIBC: Any = None


def release_freed_memory() -> None:
    """Return memory freed by a large decode to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    glibc keeps freed blocks in per-thread arenas, so after a few large images decoded on
    different threads the worker's RSS held several images' worth of free memory, and a
    batch of at-budget images peaked ~150 MB above its decode budget (measured). Trimming
    only after large decodes leaves the model's own allocations on the fast path (forcing
    every large allocation through mmap instead cost 25 % of the served throughput).
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def onnx_runner(path: str, *, threads: int, device: torch.device) -> Any:
    """A callable ``tensor [N,3,S,S] -> logits tensor [N,1]`` backed by onnxruntime.

    When the graph also has the output ``evidence`` (exports since explanations), the
    callable's ``explain`` attribute returns ``(logits, evidence [N,h,w])`` of one run;
    else it is None. A function, not a class: TorchServe requires exactly one class in
    this module.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads sleep instead of spinning: the frontend and the other workers
    # share these cores between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    session = ort.InferenceSession(path, options, providers=providers)
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]

    def fetch(batch: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return [torch.from_numpy(a) for a in session.run(names, {input_name: array})]

    def run(batch: torch.Tensor) -> torch.Tensor:
        return fetch(batch, outputs[:1])[0]

    def explain(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, evidence = fetch(batch, [outputs[0], EVIDENCE_OUTPUT])
        return logits, evidence

    run.providers = session.get_providers()  # type: ignore[attr-defined]
    run.explain = explain if EVIDENCE_OUTPUT in outputs[1:] else None  # type: ignore[attr-defined]
    return run


def pt2_runner(path: str) -> Any:
    """A callable ``tensor [N,3,S,S] -> logits tensor [N,1]`` from an AOTInductor ``.pt2`` package.

    The packages of ``python -m train export-pt2`` are compiled for the CPU (for the
    vector instructions of the machine that compiled them), so the handler runs them there.
    """
    import torch._inductor

    compiled = torch._inductor.aoti_load_package(path)

    def run(batch: torch.Tensor) -> torch.Tensor:
        return compiled(batch.to("cpu", torch.float32).contiguous())

    return run


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: {what} not found in the model directory; rebuild the archive with "
            "scripts/create_mar.sh from a complete export folder"
        ) from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {what} is not valid JSON ({exc})") from None


def load_threshold(path: str) -> float:
    """Decision threshold on the sigmoid probability from ``threshold.json``."""
    data = _read_json(path, "decision threshold file")
    if not isinstance(data, dict) or "threshold" not in data:
        raise ValueError(f'{path}: expected an object like {{"threshold": 0.37, "rule": "..."}}')
    value = data["threshold"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{path}: threshold={value!r}: must be a number in [0, 1]")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{path}: threshold={value!r}: must be in [0, 1] (it applies to the sigmoid probability)")
    return float(value)


def reason_phrase(message: str) -> str:
    """HTTP reason phrases must be one line; keep printable ASCII and cap the length."""
    text = "".join(ch if " " <= ch <= "~" else " " for ch in message)
    text = " ".join(text.split())
    return text[:REASON_MAX_CHARS] or "Bad Request"


FIELD_NAMES_SHOWN = 4  # at most this many client-chosen field names go into an answer or a log line
FIELD_NAME_CHARS = 32  # each cut to this many characters


def shown_fields(row: dict) -> str:
    """A few of a form's field names, each cut short: the client chose them, so they are bounded."""
    names = sorted(reason_phrase(str(k))[:FIELD_NAME_CHARS] for k in row)
    more = len(names) - FIELD_NAMES_SHOWN
    return ", ".join(repr(n) for n in names[:FIELD_NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")


def extract_body(row: Any) -> bytes:
    """The image bytes of one request, or ImageDecodeError(400) saying what was wrong."""
    source = SOURCE
    if isinstance(row, (bytes, bytearray, memoryview)):
        return bytes(row)
    if not isinstance(row, dict):
        raise ImageDecodeError(
            f"{source}: unsupported input of type {type(row).__name__}; {HOW_TO_SEND}", reason="not_image_bytes"
        )
    binary = [key for key, val in row.items() if isinstance(val, (bytes, bytearray, memoryview))]
    named = [key for key in BODY_KEYS if row.get(key) is not None]
    if len(binary) > 1 or len(named) > 1:
        raise ImageDecodeError(
            f"{source}: cannot tell which form field holds the image ({len(row)} fields: {shown_fields(row)}); "
            f"send one; {HOW_TO_SEND}",
            reason="ambiguous_form",
        )
    if named:
        value = row[named[0]]
    elif binary:
        value = row[binary[0]]
    elif not row:
        value = b""
    else:
        raise ImageDecodeError(
            f"{source}: no form field holds image bytes ({len(row)} fields: {shown_fields(row)}); {HOW_TO_SEND}",
            reason="ambiguous_form",
        )
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        raise ImageDecodeError(
            f"{source}: got text, not image bytes (was the Content-Type text/*?); {HOW_TO_SEND}",
            reason="not_image_bytes",
        )
    if isinstance(value, (dict, list)):
        raise ImageDecodeError(
            f"{source}: got a JSON document, not image bytes; {HOW_TO_SEND}", reason="not_image_bytes"
        )
    raise ImageDecodeError(
        f"{source}: unsupported body of type {type(value).__name__}; {HOW_TO_SEND}", reason="not_image_bytes"
    )


def check_not_url_encoded_form(content_type: Any) -> None:
    """ImageDecodeError(400) for a body sent as URL-encoded form fields.

    ``curl --data-binary @photo.jpg`` labels the photo application/x-www-form-urlencoded;
    TorchServe's frontend then splits it into form fields (or answers 500 itself when the
    bytes are not valid form encoding, before any handler runs). Either way the image is lost.
    """
    if isinstance(content_type, (bytes, bytearray)):
        content_type = bytes(content_type).decode("latin-1")
    if str(content_type or "").split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        raise ImageDecodeError(
            f"{SOURCE}: sent as URL-encoded form fields (Content-Type application/x-www-form-urlencoded, what curl "
            "--data-binary sends by default), which loses the image; use curl -T photo.jpg, or add "
            "-H 'Content-Type: image/jpeg'",
            reason="not_image_bytes",
        )


def check_request_tag(value: Any) -> str | None:
    """The validated X-Request-Tag value, None when absent; ImageDecodeError(400) when malformed."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    text = str(value)
    if REQUEST_TAG_PATTERN.fullmatch(text):
        return text
    shown = reason_phrase(text)[:80]
    raise ImageDecodeError(
        f"{REQUEST_TAG_HEADER} header: {shown!r} is not allowed; use {REQUEST_TAG_ALLOWED}",
        reason="bad_request_tag",
    )


def wants_explanation(value: Any) -> bool:
    """Whether a request's ``explain`` header marks it as sent to /explanations/<model>."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    return str(value).strip().lower() == "true" if value is not None else False


def header_value(context: Any, idx: int, name: str) -> Any:
    """Request header ``name`` of batch item ``idx``, matched case-insensitively (None if absent)."""
    if context is None:
        return None
    getter = getattr(context, "get_all_request_header", None)
    if getter is not None:
        try:
            headers = getter(idx) or {}
        except (IndexError, KeyError, AttributeError, TypeError):
            headers = {}
        wanted = name.lower()
        for key, value in headers.items():
            key = key.decode("latin-1") if isinstance(key, (bytes, bytearray)) else str(key)
            if key.lower() == wanted:
                return value
        return None
    getter = getattr(context, "get_request_header", None)
    if getter is None:
        return None
    for key in (name, name.lower()):
        value = getter(idx, key)
        if value is not None:
            return value
    return None


class WatermarkHandler(BaseHandler):
    """Binary watermark classifier over a TorchScript model exported by training."""

    def __init__(self) -> None:
        super().__init__()
        self.spec: PreprocessSpec | None = None
        self.threshold: float | None = None
        self.max_pixels: int | None = None
        self.model_name = "watermark"
        self.model_version = "unknown"
        self.model_info: dict[str, Any] = {}
        self.settings: dict[str, Any] = {}
        self.model_format = "torchscript"
        self.threads = 1
        self.cuda_half = False
        self._pool: Any = None
        self.decode_memory: DecodeBudget | None = None
        self.explainer: Any = None  # batch -> (logits, evidence map); None when the model has no map
        self.no_explanation = ""  # why there is none, for the answers to /explanations

    # ------------------------------------------------------------------ loading
    def initialize(self, context) -> None:
        properties = context.system_properties
        model_dir = properties.get("model_dir") or "."
        manifest = getattr(context, "manifest", None) or {}
        model_section = manifest.get("model", {}) if isinstance(manifest, dict) else {}
        serialized = str(model_section.get("serializedFile") or "")
        self.model_format = MODEL_FORMATS.get(os.path.splitext(serialized)[1], "")
        if not self.model_format:
            raise RuntimeError(
                f"MANIFEST serializedFile={serialized!r}: expected model.pt (TorchScript), a .onnx file (ONNX, "
                "e.g. model.int8.onnx) or model.pt2 (AOTInductor); "
                "build the archive with scripts/create_mar.sh"
            )
        if model_section.get("modelFile"):
            raise RuntimeError("MANIFEST has a modelFile: this handler serves TorchScript, ONNX or .pt2 only (no eager model.py)")
        model_path = os.path.join(model_dir, serialized)
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"{model_path}: {self.model_format} model not found in the model directory")

        yaml_config = getattr(context, "model_yaml_config", None) or {}
        settings = yaml_config.get("handler") or {}
        if not isinstance(settings, dict):
            raise ValueError(f"model-config.yaml handler: must be a mapping, got {settings!r}")
        threads = settings.get("threads", torch.get_num_threads())
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"model-config.yaml handler.threads={threads!r}: must be an integer >= 1")
        self.threads = threads
        torch.set_num_threads(threads)

        if self.model_format == "torchscript":
            # BaseHandler picks the device (gpu_id) and torch.jit.load()s model.pt, then eval().
            super().initialize(context)
        else:
            self._initialize_runner(context, model_path)
        self.cuda_half = bool(settings.get("cuda_half", False)) and self.device.type == "cuda"
        if self.device.type == "cuda" and self.model_format == "torchscript":
            self.model = self.model.to(memory_format=torch.channels_last)

        self.spec = PreprocessSpec.load(os.path.join(model_dir, SPEC_FILE))
        self.threshold = load_threshold(os.path.join(model_dir, THRESHOLD_FILE))
        info_path = os.path.join(model_dir, MODEL_INFO_FILE)
        if os.path.isfile(info_path):
            info = _read_json(info_path, "model info")
            self.model_info = info if isinstance(info, dict) else {}

        self.model_name = getattr(context, "model_name", None) or model_section.get("modelName") or "watermark"
        self.model_version = str(model_section.get("modelVersion") or "unknown")

        unknown = sorted(set(settings) - HANDLER_SETTINGS)
        if unknown:
            logger.warning("model-config.yaml handler: ignoring unknown keys %s (known: %s)", unknown, sorted(HANDLER_SETTINGS))
        self.settings = dict(settings)
        max_pixels = settings.get("max_pixels", self.spec.max_pixels)
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 64:
            raise ValueError(f"model-config.yaml handler.max_pixels={max_pixels!r}: must be an integer >= 64")
        self.max_pixels = max_pixels
        per_image = decode_budget(max_pixels)
        memory_mb = settings.get("decode_memory_mb")
        if memory_mb is not None and (
            isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb * 1_000_000 < per_image
        ):
            raise ValueError(
                f"model-config.yaml handler.decode_memory_mb={memory_mb!r}: must be an integer >= "
                f"{-(-per_image // 1_000_000)} (one image's decode budget, 4 bytes x max_pixels)"
            )
        self.decode_memory = DecodeBudget(
            memory_mb * 1_000_000 if memory_mb is not None else DEFAULT_DECODES_AT_ONCE * per_image
        )

        self._check_model_contract()
        self.explainer, self.no_explanation = self._find_explainer()
        logger.info(
            "watermark handler ready: model=%s version=%s format=%s device=%s threads=%d image_size=%d threshold=%s "
            "max_pixels=%d decode_memory=%d MB",
            self.model_name, self.model_version, self.model_format, self.device, self.threads, self.spec.image_size,
            self.threshold, self.max_pixels, self.decode_memory.capacity // 1_000_000,
        )

    def _initialize_runner(self, context, model_path: str) -> None:
        """What BaseHandler.initialize does for TorchScript, for an onnxruntime session or a .pt2 package."""
        properties = context.system_properties
        self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.manifest = context.manifest
        self.model_pt_path = model_path
        gpu_id = properties.get("gpu_id")
        on_gpu = torch.cuda.is_available() and gpu_id is not None and self.model_format == "onnx"
        self.map_location = "cuda" if on_gpu else "cpu"
        self.device = torch.device(f"cuda:{gpu_id}" if on_gpu else "cpu")
        if self.model_format == "onnx":
            self.model = onnx_runner(model_path, threads=self.threads, device=self.device)
        else:
            self.model = pt2_runner(model_path)
        self.initialized = True

    def _find_explainer(self) -> tuple[Any, str]:
        """The model's logits-and-evidence callable, or None and the reason there is none."""
        name = os.path.basename(getattr(self, "model_pt_path", "") or "") or "the model"
        if self.model_format == "pt2":
            return None, f"{name}: explanations are not served from a .pt2 package; serve the bundle's model.pt or model.onnx"
        explain = getattr(self.model, "explain", None)
        if explain is None:
            what = "no explain method" if self.model_format == "torchscript" else f"no '{EVIDENCE_OUTPUT}' output"
            return None, NO_EXPLANATION.format(why=f"{name} has {what}")
        size = self.spec.image_size
        try:  # at load time, so a broken map never fails a batch of verdicts
            with torch.inference_mode():
                logits, evidence = explain(torch.zeros(2, 3, size, size, device=self.device))
            if logits.numel() != 2 or evidence.dim() != 3 or evidence.shape[0] != 2:
                raise RuntimeError(f"returned logits {tuple(logits.shape)} and evidence {tuple(evidence.shape)}")
        except Exception as exc:
            logger.warning("%s: evidence map unusable, explanations off: %s", name, exc)
            return None, f"{name}: its evidence map failed a check at load ({type(exc).__name__}); explanations are off"
        return explain, ""

    def _check_model_contract(self) -> None:
        """Fail at load time (not on the first request) if the model does not map [N,3,S,S] -> [N,1]."""
        size = self.spec.image_size
        name = os.path.basename(getattr(self, "model_pt_path", "") or "") or "the model"
        probe = torch.zeros(2, 3, size, size, device=self.device)
        try:
            with torch.inference_mode():
                out = self.model(probe)
        except Exception as exc:
            raise RuntimeError(
                f"{name} failed on a [2, 3, {size}, {size}] input (image_size from {SPEC_FILE}): {exc}"
            ) from exc
        if not isinstance(out, torch.Tensor) or out.numel() != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise RuntimeError(f"{name} returned {shape} for a batch of 2; expected logits of shape [2, 1]")

    # ---------------------------------------------------------------- per batch
    def _decode(self, body: bytes) -> torch.Tensor:
        """Header checks, then decoding and resizing inside the image's share of decode_memory
        (held until the full-size RGB image is gone, i.e. until the tensor exists)."""
        opened = [open_image(body, max_pixels=self.max_pixels, source=SOURCE, draft_size=self.spec.draft_size)]
        cost = decode_cost(opened[0])
        with self.decode_memory.reserve(cost):
            try:
                # pop: load_rgb gets the only reference, so each conversion step frees the one before
                image = load_rgb(opened.pop(), body, source=SOURCE, max_pixels=self.max_pixels)
                return image_to_tensor(image, self.spec)
            finally:
                if cost >= TRIM_AFTER_BYTES:
                    release_freed_memory()

    @timed
    def preprocess(self, data):
        """Decode every request; returns the stacked good images plus per-index errors.

        Images of a batch decode in parallel on ``threads`` threads (Pillow releases the
        GIL while decoding and resizing); results keep request order. Each decode first
        reserves its estimated peak memory from ``decode_memory`` (``handler.decode_memory_mb``,
        default two images' budgets), so large images of one batch wait for each other.
        """
        tensors, good, errors, tags = [], [], {}, {}
        bodies: dict[int, bytes] = {}
        explain: dict[int, tuple[int, int]] = {}  # items sent to /explanations -> photo size
        for idx, row in enumerate(data):
            try:
                tag = check_request_tag(header_value(self.context, idx, REQUEST_TAG_HEADER))
                if tag is not None:
                    tags[idx] = tag
                if wants_explanation(header_value(self.context, idx, EXPLAIN_HEADER)):
                    explain[idx] = (0, 0)
                check_not_url_encoded_form(header_value(self.context, idx, "Content-Type"))
                bodies[idx] = extract_body(row)
            except ImageDecodeError as exc:
                errors[idx] = (exc.status, str(exc), exc.reason)
            except Exception as exc:  # never let one odd request take the batch down
                logger.warning("batch item %d: unexpected request failure", idx, exc_info=True)
                errors[idx] = (400, f"{SOURCE}: could not read the request ({type(exc).__name__}: {exc})", "processing_error")
        futures = None
        if len(bodies) > 1 and self.threads > 1:
            if self._pool is None:  # one pool for the worker's lifetime, not one per batch
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="decode")
            futures = {idx: self._pool.submit(self._decode, body) for idx, body in bodies.items()}
        for idx, body in bodies.items():
            try:
                tensors.append(futures[idx].result() if futures is not None else self._decode(body))
                good.append(idx)
                if idx in explain:
                    explain[idx] = upright_size(body)
            except ImageDecodeError as exc:  # its message already states the limit that applies
                errors[idx] = (exc.status, str(exc), exc.reason)
            except Exception as exc:  # never let one odd input take the batch down
                logger.warning("batch item %d: unexpected preprocessing failure", idx, exc_info=True)
                errors[idx] = (
                    400, f"{SOURCE}: could not process the image ({type(exc).__name__}: {exc})", "processing_error"
                )
        for idx, (status, message, reason) in errors.items():
            logger.info("batch item %d rejected with %d (%s): %s", idx, status, reason, message)
        batch = self._to_device(torch.stack(tensors)) if tensors else None
        explain = {idx: size for idx, size in explain.items() if idx in good}
        return {"size": len(data), "tensor": batch, "good": good, "errors": errors, "tags": tags, "explain": explain}

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """TorchScript: channels_last (CUDA: through pinned memory, asynchronously). ONNX: as is."""
        if self.model_format != "torchscript":
            return batch
        if self.device.type != "cuda":
            return batch.contiguous(memory_format=torch.channels_last)
        return batch.pin_memory().to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    @timed
    def inference(self, data, *args, **kwargs):
        """One forward pass over the stacked good images (none if all failed)."""
        logits: list[float] = []
        evidence = None
        if data["tensor"] is not None:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda_half):
                if data.get("explain") and self.explainer is not None:  # same pass: logits and the map
                    out, evidence = self.explainer(data["tensor"])
                    evidence = evidence.float().cpu()
                else:
                    out = self.model(data["tensor"], *args, **kwargs)
            if out.numel() != len(data["good"]):
                raise RuntimeError(f"model returned {tuple(out.shape)} for {len(data['good'])} images; expected [N, 1]")
            logits = out.reshape(-1).float().cpu().tolist()
        logger.info(
            "watermark batch: %d requests, %d decoded, %d rejected", data["size"], len(data["good"]), len(data["errors"])
        )
        return {**data, "logits": logits, "evidence": evidence}

    @timed
    def postprocess(self, data):
        """Exactly one output per request, in request order; bad ones get their own status."""
        outputs: list[dict[str, Any]] = [None] * data["size"]  # type: ignore[list-item]
        verdicts: Counter[str] = Counter()
        explain = data.get("explain") or {}
        for row, (idx, logit) in enumerate(zip(data["good"], data["logits"])):
            probability = sigmoid(logit)
            watermark = bool(probability >= self.threshold)
            verdicts["watermark" if watermark else "clean"] += 1
            outputs[idx] = {
                "watermark": watermark,
                "probability": round(probability, PROBABILITY_DIGITS),
                "threshold": self.threshold,
                "model": self.model_name,
                "version": self.model_version,
            }
            if idx in explain:
                outputs[idx].update(self._explanation(data.get("evidence"), row, explain[idx]))
            # TorchServe otherwise sends an empty reason phrase ("HTTP/1.1 200 ").
            self._set_status(200, "OK", idx)
        for idx, (status, message, _reason) in data["errors"].items():
            outputs[idx] = {"error": message, "status": status}
            self._set_status(status, message, idx)
        for idx in range(data["size"]):
            self._set_content_type(idx)
        for idx, tag in data.get("tags", {}).items():
            self._set_header(idx, REQUEST_TAG_HEADER, tag)
        self._count(VERDICT_METRIC, "Verdict", verdicts)
        self._count(REJECT_METRIC, "Reason", Counter(reason for _s, _m, reason in data["errors"].values()))
        return outputs

    def _explanation(self, evidence: torch.Tensor | None, row: int, size: tuple[int, int]) -> dict[str, Any]:
        """``{"explanation": {...}}`` for one image, or ``None`` with ``explanation_error``
        (the verdict is answered either way)."""
        if evidence is None:
            return {"explanation": None, "explanation_error": self.no_explanation}
        width, height = size
        try:
            return {
                "explanation": summarize(
                    evidence[row], size=self.spec.image_size, content=content_box(width, height, self.spec),
                    width=width, height=height,
                )
            }
        except Exception as exc:  # never fail the verdict for its map
            logger.warning("evidence map of batch row %d could not be summarised", row, exc_info=True)
            return {"explanation": None, "explanation_error": f"the evidence map could not be summarised ({type(exc).__name__})"}

    def _count(self, name: str, label: str, counts: Counter) -> None:
        """Add per-batch counts to a counter; metrics must never fail a batch."""
        metrics = getattr(self.context, "metrics", None)
        if metrics is None or not hasattr(metrics, "add_counter"):
            return
        for value, count in sorted(counts.items()):
            # Order = the dimensions of this metric in metrics.yaml (the frontend adds Hostname).
            dimensions = [
                Dimension("ModelName", self.model_name),
                Dimension("ModelVersion", self.model_version),
                Dimension("Level", "Model"),
                Dimension(label, value),
            ]
            try:
                metrics.add_counter(name, count, None, dimensions)
            except Exception:  # a metrics problem must never fail the requests
                logger.warning("could not update metric %s{%s=%s}", name, label, value, exc_info=True)

    def _set_header(self, idx: int, key: str, value: str) -> None:
        context = self.context
        if context is not None and hasattr(context, "set_response_header"):
            context.set_response_header(idx, key, value)

    def _set_status(self, status: int, message: str, idx: int) -> None:
        context = self.context
        if context is not None and hasattr(context, "set_response_status"):
            context.set_response_status(status, reason_phrase(message), idx)

    def _set_content_type(self, idx: int) -> None:
        context = self.context
        if context is None or not hasattr(context, "set_response_content_type"):
            return
        try:
            context.set_response_content_type(idx, "application/json")
        except (TypeError, IndexError, AttributeError):  # context without per-request processors
            pass

    def _is_explain(self):
        """Never BaseHandler's Captum path: it would call the missing get_insights() and
        fail the whole batch with 503, deciding from request 0 alone for a mixed batch.

        Instead every item of a batch reads its own ``explain`` header in :meth:`preprocess`;
        items sent to /explanations/<name> get their verdict plus the evidence map of the
        same forward pass (:meth:`inference`), the others their plain verdict.
        """
        return False

    def describe_handle(self):
        """GET /models/<name>?customized=true on the management API."""
        return json.dumps(
            {
                "model": self.model_name,
                "version": self.model_version,
                "threshold": self.threshold,
                "preprocess": self.spec.to_dict() if self.spec else None,
                "max_pixels": self.max_pixels,
                "decode_memory_mb": self.decode_memory.capacity // 1_000_000 if self.decode_memory else None,
                "model_info": self.model_info,
                "explanations": self.explainer is not None,
            }
        )
