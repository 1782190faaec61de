"""Export: trace the eval-mode model to TorchScript, check parity, write the bundle.

The export folder is everything serving needs (``scripts/create_mar.sh`` packs it):

* ``model.pt`` — TorchScript; input ``[N, 3, S, S]`` normalised per the spec,
  output plain logits ``[N, 1]``; its ``explain`` method returns the logits and the
  evidence map ``[N, h, w]`` of the same pass (what ``/explanations`` serves);
* ``preprocess.json`` — the :class:`~handler.preprocess.PreprocessSpec`;
* ``threshold.json`` — the decision threshold on the probability and the rule
  that chose it;
* ``model_info.json`` — provenance: weights, metrics, training parameters, and the
  checks of the optional model files below.

Optional model files, each added to a bundle by its own command and written only when
its check passes: ``model.onnx`` (:func:`export_onnx`), ``model.int8.onnx`` with
``threshold.int8.json`` (:mod:`train.quantize`) and ``model.pt2``, a ``torch.export`` +
AOTInductor package (:func:`export_pt2`).

The folder is built beside the target and renamed into place, so a failed export
never leaves a half-written bundle that a later step could trust.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from handler.preprocess import SPEC_FILE, PreprocessSpec
from train.io import staged_folder, write_bytes_atomic, write_json_atomic

MODEL_FILE = "model.pt"
THRESHOLD_FILE = "threshold.json"
INFO_FILE = "model_info.json"
DEFAULT_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The traced model disagrees with the eager one, or the bundle is invalid."""


EXPLAIN_METHOD = "explain"


def trace_model(model: nn.Module, spec: PreprocessSpec) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of the eval-mode model on a batch of two at the spec's size.

    A model with an ``explain`` method (logits and evidence map, see
    :meth:`train.model.WatermarkNet.explain`) gets it traced too, beside ``forward``:
    the handler's ``/explanations`` answers come from it.
    """
    model = model.eval()
    example = torch.zeros(2, 3, spec.image_size, spec.image_size)
    with torch.no_grad():
        if callable(getattr(model, EXPLAIN_METHOD, None)):
            methods = {"forward": (example,), EXPLAIN_METHOD: (example,)}
            return torch.jit.trace_module(model, methods, check_trace=False)
        return torch.jit.trace(model, example, check_trace=False)


def explain_max_diff(eager: nn.Module, traced: torch.jit.ScriptModule, inputs: Sequence[torch.Tensor]) -> float | None:
    """Largest absolute difference of the ``explain`` outputs (logits and evidence map)
    between the eager and traced models; None when the model has no ``explain``."""
    if not hasattr(traced, EXPLAIN_METHOD) or not callable(getattr(eager, EXPLAIN_METHOD, None)):
        return None
    worst = 0.0
    with torch.no_grad():
        for batch in inputs:
            for a, b in zip(eager.explain(batch), traced.explain(batch)):
                if a.shape != b.shape:
                    raise ExportError(f"explain output shapes differ: eager {tuple(a.shape)}, traced {tuple(b.shape)}")
                worst = max(worst, float((a - b).abs().max()))
    return worst


def parity_max_diff(
    eager: nn.Module, traced: torch.jit.ScriptModule, inputs: Sequence[torch.Tensor]
) -> float:
    """Largest absolute logit difference between the eager and traced models."""
    eager.eval()
    worst = 0.0
    with torch.no_grad():
        for batch in inputs:
            a, b = eager(batch), traced(batch)
            if a.shape != b.shape or a.shape[1:] != (1,):
                raise ExportError(f"output shapes differ or are not [N, 1]: eager {tuple(a.shape)}, traced {tuple(b.shape)}")
            worst = max(worst, float((a - b).abs().max()))
    return worst


def parity_inputs(spec: PreprocessSpec, real: torch.Tensor | None = None, *, seed: int = 0) -> list[torch.Tensor]:
    """Batches of size 1 and 3 (different from the trace batch), random and real."""
    gen = torch.Generator().manual_seed(seed)
    size = spec.image_size
    batches = [torch.randn(1, 3, size, size, generator=gen), torch.randn(3, 3, size, size, generator=gen)]
    if real is not None and len(real):
        batches.append(real[:4])
    return batches


def export_model(
    model: nn.Module,
    spec: PreprocessSpec,
    threshold: dict[str, Any],
    out_dir: Path,
    *,
    info: dict[str, Any] | None = None,
    real_inputs: torch.Tensor | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """Trace, parity-check and write the export bundle to ``out_dir`` atomically.

    Args:
        model: module mapping normalised pixels to logits ``[N, 1]``.
        spec: the preprocessing the model was trained with.
        threshold: at least ``{"threshold": p}`` with ``0 < p < 1``, plus the rule.
        out_dir: target folder; replaced as a whole when it exists.
        info: provenance written to ``model_info.json``.
        real_inputs: a few preprocessed real images for the parity check.
        tolerance: largest allowed absolute logit difference (traced vs eager).

    Returns:
        ``{"max_abs_diff": ..., "tolerance": ..., "path": ...}``.

    Raises:
        ExportError: parity above ``tolerance`` (nothing is written).
    """
    value = threshold.get("threshold")
    if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"threshold={value!r}: allowed is a probability strictly between 0 and 1")
    traced = trace_model(model, spec)
    inputs = parity_inputs(spec, real_inputs)
    diff = parity_max_diff(model, traced, inputs)
    explain_diff = explain_max_diff(model, traced, inputs)
    diff = diff if explain_diff is None else max(diff, explain_diff)
    if not diff <= tolerance:
        raise ExportError(f"traced model differs from eager by {diff:.3g} > tolerance {tolerance:.3g}; nothing exported")
    out_dir = Path(out_dir)
    with staged_folder(out_dir) as staging:
        traced.save(str(staging / MODEL_FILE))
        write_json_atomic(staging / SPEC_FILE, spec.to_dict())
        write_json_atomic(staging / THRESHOLD_FILE, threshold)
        parity = {"max_abs_diff": diff, "tolerance": tolerance}
        write_json_atomic(staging / INFO_FILE, {**(info or {}), "parity": parity})
    return {"max_abs_diff": diff, "tolerance": tolerance, "path": str(out_dir)}


def load_export(export_dir: Path) -> tuple[torch.jit.ScriptModule, PreprocessSpec, dict[str, Any]]:
    """Load a bundle back (for prediction and checks); errors name the missing file."""
    export_dir = Path(export_dir)
    for name in (MODEL_FILE, SPEC_FILE, THRESHOLD_FILE):
        if not (export_dir / name).is_file():
            raise FileNotFoundError(f"{export_dir / name}: missing; run `python -m train train` or `python -m train export` first")
    model = torch.jit.load(str(export_dir / MODEL_FILE), map_location="cpu").eval()
    spec = PreprocessSpec.load(export_dir / SPEC_FILE)
    threshold = json.loads((export_dir / THRESHOLD_FILE).read_text(encoding="utf-8"))
    return model, spec, threshold


ONNX_FILE = "model.onnx"
ONNX_OPSET = 17


ONNX_OUTPUTS = ("logits", "evidence")
_AVG_POOLS = ("GlobalAveragePool", "ReduceMean")
_MAX_POOLS = ("GlobalMaxPool", "MaxPool", "ReduceMax")


def add_evidence_output(graph_bytes: bytes) -> bytes:
    """The exported graph plus the output ``evidence`` ``[N, h, w]``: one 1x1 convolution of
    the last feature map with the head's weights, as :func:`train.model.evidence_map`.

    The logits' part of the graph is left exactly as exported (node names included, which
    int8 quantisation reads). The head must be global pools of one feature map,
    concatenated, flattened and fed to the final Gemm (what ``WatermarkNet.head`` exports);
    anything else is an :class:`ExportError`.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(graph_bytes))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    gemm = producer.get(graph.output[0].name)
    if gemm is None or gemm.op_type != "Gemm":
        raise ExportError("ONNX head: the logits do not come from a Gemm; cannot add the evidence map")
    pools, todo = [], [gemm.input[0]]
    while todo:
        node = producer.get(todo.pop(0))
        if node is None:
            raise ExportError("ONNX head: the Gemm's input does not come from pooling; cannot add the evidence map")
        if node.op_type in _AVG_POOLS + _MAX_POOLS:
            pools.append(node)
        elif node.op_type in ("Concat", "Flatten", "Reshape"):
            todo = list(node.input[:1] if node.op_type != "Concat" else node.input) + todo
        else:
            raise ExportError(f"ONNX head: unexpected {node.op_type} between the features and the Gemm")
    features = {p.input[0] for p in pools}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    if len(features) != 1 or len(shapes.get(next(iter(features)), [])) != 4:
        raise ExportError("ONNX head: the pools do not share one 4-d feature map; cannot add the evidence map")
    feature = next(iter(features))
    _, channels, height, width = shapes[feature]
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    transposed = any(a.name == "transB" and a.i == 1 for a in gemm.attribute)
    weight = weights[gemm.input[1]]
    weight = (weight if transposed else weight.T).reshape(-1).astype(np.float32)
    if weight.size != channels * len(pools):
        raise ExportError(f"ONNX head: Gemm width {weight.size} is not {len(pools)} pools x {channels} channels")
    combined = np.zeros(channels, dtype=np.float32)
    for i, pool in enumerate(pools):
        share = weight[i * channels:(i + 1) * channels]
        combined += share / (height * width) if pool.op_type in _AVG_POOLS else share
    graph.initializer.extend([
        numpy_helper.from_array(combined.reshape(1, channels, 1, 1), "evidence.weight"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "evidence.axes"),
    ])  # fmt: skip
    graph.node.extend([
        helper.make_node("Conv", [feature, "evidence.weight"], ["evidence.map"], name="/evidence/Conv", kernel_shape=[1, 1]),
        helper.make_node("Squeeze", ["evidence.map", "evidence.axes"], [ONNX_OUTPUTS[1]], name="/evidence/Squeeze"),
    ])  # fmt: skip
    graph.output.append(helper.make_tensor_value_info(ONNX_OUTPUTS[1], onnx.TensorProto.FLOAT, ["batch", height, width]))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_runner(model: Path | bytes, threads: int, *, outputs: Sequence[str] | None = None) -> Callable[[torch.Tensor], Any]:
    """``[N,3,S,S] -> logits [N,1]`` through onnxruntime on the CPU, set up as the handler does
    (``threads`` intra-op threads that sleep between runs instead of spinning).

    With ``outputs`` (names of the graph's outputs), the callable returns that list of tensors.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model) if isinstance(model, Path) else model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    first = [session.get_outputs()[0].name]

    def run(batch: torch.Tensor) -> Any:
        got = session.run(list(outputs or first), {name: batch.contiguous().numpy()})
        return [torch.from_numpy(a) for a in got] if outputs else torch.from_numpy(got[0])

    return run


def export_onnx(
    export_dir: Path, *, tolerance: float = DEFAULT_TOLERANCE, opset: int = ONNX_OPSET, real_inputs: torch.Tensor | None = None
) -> dict[str, Any]:
    """Add ``model.onnx`` to an export bundle, converted from its TorchScript model.

    The ONNX graph takes the same input ``[N, 3, S, S]`` (dynamic batch) and returns the
    same logits ``[N, 1]`` (output ``logits``) and, when the TorchScript model has an
    ``explain`` method, its evidence map ``[N, h, w]`` (output ``evidence``);
    onnxruntime's outputs must match TorchScript's within
    ``tolerance`` on batches of 1 and 3 (and ``real_inputs``), or nothing is written.
    ``model_info.json`` records the opset and the measured difference.

    Raises:
        FileNotFoundError: the bundle is incomplete.
        ExportError: parity above ``tolerance``.
        RuntimeError: onnx or onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeError("ONNX export needs onnx and onnxruntime (pip install -r requirements.txt)") from None
    import warnings

    export_dir = Path(export_dir)
    model, spec, _ = load_export(export_dir)
    size = spec.image_size
    example = torch.zeros(2, 3, size, size)
    explains = hasattr(model, EXPLAIN_METHOD)
    outputs = list(ONNX_OUTPUTS if explains else ONNX_OUTPUTS[:1])
    onnx_bytes = io.BytesIO()  # checked in memory first: nothing is written unless it passes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns about its own deprecation
        torch.onnx.export(
            model, (example,), onnx_bytes, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=outputs[:1], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    graph = add_evidence_output(onnx_bytes.getvalue()) if explains else onnx_bytes.getvalue()
    run = onnx_runner(graph, torch.get_num_threads(), outputs=outputs)
    worst = 0.0
    with torch.no_grad():
        for batch in parity_inputs(spec, real_inputs):
            expected = model.explain(batch) if explains else (model(batch),)
            for want, got in zip(expected, run(batch)):
                if got.shape != want.shape:
                    raise ExportError(f"ONNX output shape {tuple(got.shape)} differs from TorchScript {tuple(want.shape)}")
                worst = max(worst, float((got - want).abs().max()))
    if not worst <= tolerance:
        raise ExportError(f"ONNX model differs from TorchScript by {worst:.3g} > tolerance {tolerance:.3g}; nothing written")
    info_path = export_dir / INFO_FILE
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    info["onnx"] = {"file": ONNX_FILE, "outputs": outputs, "opset": opset, "max_abs_diff": worst, "tolerance": tolerance, "onnxruntime": ort.__version__}
    write_bytes_atomic(export_dir / ONNX_FILE, graph)
    write_json_atomic(info_path, info)
    return {"max_abs_diff": worst, "tolerance": tolerance, "path": str(export_dir / ONNX_FILE), "opset": opset}


PT2_FILE = "model.pt2"
DEFAULT_MAX_BATCH = 64


def load_checkpoint(checkpoint: Path) -> tuple[nn.Module, PreprocessSpec, dict[str, Any]]:
    """The eval-mode eager model, its spec and the raw state of a training checkpoint."""
    from train.model import model_from_config

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: not found; train first (python -m train train)")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state or "spec" not in state or "config" not in state:
        raise ValueError(f"--checkpoint {checkpoint}: not a training checkpoint of this project")
    config = state["config"]
    model = model_from_config(config)
    model.load_state_dict(state["model"])
    return model.eval(), PreprocessSpec.from_dict(state["spec"]), state


def compile_pt2(model: nn.Module, spec: PreprocessSpec, package: Path, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
    """``torch.export`` (dynamic batch ``1..max_batch``) + AOTInductor into a ``.pt2`` package file.

    Compiled for the CPU with frozen weights (constant folding and oneDNN weight packing
    at compile time); the generated code targets this machine's vector instructions.
    """
    import warnings

    size = spec.image_size
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(model.eval(), (torch.zeros(2, 3, size, size),), dynamic_shapes=({0: batch},))
        torch._inductor.aoti_compile_and_package(program, package_path=str(package), inductor_configs={"freezing": True})


def load_pt2(path: Path | str) -> Any:
    """A compiled ``.pt2`` package as a callable ``[N,3,S,S] -> [N,1]``."""
    return torch._inductor.aoti_load_package(str(path))


def export_pt2(
    export_dir: Path, checkpoint: Path, *, tolerance: float = DEFAULT_TOLERANCE, max_batch: int = DEFAULT_MAX_BATCH
) -> dict[str, Any]:
    """Add ``model.pt2`` to an export bundle from the checkpoint it was exported from.

    The checkpoint must be the bundle's: same preprocessing, and its eager model must
    match the bundle's TorchScript model within ``tolerance``. The compiled package must
    match the eager model within ``tolerance`` on batches of 1 and 3 (and ``max_batch``
    must be at least 3), or nothing is written. ``model_info.json`` records the check.

    Raises:
        FileNotFoundError: the bundle or the checkpoint is missing.
        ExportError: the checkpoint is not the bundle's, or parity fails.
    """
    import platform
    import tempfile
    import time

    if not 3 <= max_batch <= 4096:
        raise ValueError(f"max_batch={max_batch!r}: allowed is an integer from 3 to 4096")
    export_dir = Path(export_dir)
    scripted, spec, _ = load_export(export_dir)
    model, checkpoint_spec, _ = load_checkpoint(checkpoint)
    if checkpoint_spec != spec:
        raise ExportError(f"{checkpoint}: its preprocessing differs from {export_dir / SPEC_FILE}; not this bundle's checkpoint")
    inputs = parity_inputs(spec)
    bundle_diff = parity_max_diff(model, scripted, inputs)
    if not bundle_diff <= tolerance:
        raise ExportError(f"{checkpoint}: differs from {export_dir / MODEL_FILE} by {bundle_diff:.3g}; not this bundle's checkpoint")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="pt2-") as tmp:
        package = Path(tmp) / PT2_FILE
        compile_pt2(model, spec, package, max_batch=max_batch)
        seconds = time.time() - started
        diff = parity_max_diff(model, load_pt2(package), inputs)
        if not diff <= tolerance:
            raise ExportError(f"compiled .pt2 differs from eager by {diff:.3g} > tolerance {tolerance:.3g}; nothing written")
        data = package.read_bytes()
    record = {
        "file": PT2_FILE, "max_abs_diff": diff, "tolerance": tolerance, "max_batch": max_batch, "torch": torch.__version__,
        "compile_seconds": round(seconds, 1), "compiled_on": f"{platform.machine()} CPU", "source_checkpoint": str(checkpoint),
    }  # fmt: skip
    info_path = export_dir / INFO_FILE
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    write_bytes_atomic(export_dir / PT2_FILE, data)
    write_json_atomic(info_path, {**info, "pt2": record})
    return {**record, "seconds": seconds, "path": str(export_dir / PT2_FILE)}
