"""The int8 model (static ONNX quantisation) and the .pt2 package (torch.export + AOTInductor):
written only when they keep their verdicts / match eager, and served by the same handler.

An untrained Inception V3 at 96 px stands in for a trained one: quantisation and
compilation see the real architecture (its block names decide what stays float), and
speed or quality are for ``make bench``, not for these tests.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from handler.preprocess import PreprocessSpec
from handler.watermark_handler import WatermarkHandler
from tests import serving_fixtures as sf
from tests.conftest import write_dataset
from tests.ts_server import create_mar, put_image, serve
from train import quantize
from train.evaluate import collect_items
from train.export import ExportError, export_model, export_pt2, parity_inputs
from train.model import WatermarkNet
from train.quantize import INT8_FILE, INT8_THRESHOLD_FILE, QuantizationRejected, export_int8

SIZE = 96


def labelled(folder: Path) -> tuple[list[Path], list[int]]:
    items, _, _ = collect_items(folder)
    return [i.path for i in items], [i.label for i in items]


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> dict[str, Path]:
    """An export bundle, its checkpoint, and labelled validation and check folders."""
    root = tmp_path_factory.mktemp("inception")
    torch.manual_seed(0)
    model = WatermarkNet(pool="avgmax", dropout=0.5).eval()
    spec = PreprocessSpec.for_weights("tf-inception", image_size=SIZE)
    threshold = {"threshold": 0.5, "rule": "target-fpr", "target": 0.1}
    export_model(model, spec, threshold, root / "export", info={"model_name": "watermark"})
    checkpoint = root / "best.pt"
    config = {"pool": "avgmax", "dropout": 0.5, "weights": "none"}
    torch.save({"model": model.state_dict(), "spec": spec.to_dict(), "config": config, "threshold": threshold}, checkpoint)
    write_dataset(root / "val", pairs=10, size=SIZE, seed=1)
    write_dataset(root / "check", pairs=8, size=SIZE, seed=2)
    return {"root": root, "export": root / "export", "checkpoint": checkpoint, "val": root / "val" / "train", "check": root / "check" / "train"}


@pytest.fixture(scope="module")
def int8_bundle(inception, tmp_path_factory) -> tuple[Path, dict]:
    bundle = tmp_path_factory.mktemp("int8") / "export"
    shutil.copytree(inception["export"], bundle)
    record = export_int8(bundle, labelled(inception["val"]), labelled(inception["check"]), calibration_images=8, max_drop=0.99)
    return bundle, record


@pytest.fixture(scope="module")
def pt2_bundle(inception, tmp_path_factory) -> tuple[Path, dict]:
    bundle = tmp_path_factory.mktemp("pt2") / "export"
    shutil.copytree(inception["export"], bundle)
    return bundle, export_pt2(bundle, inception["checkpoint"], max_batch=8)


# ------------------------------------------------------------------ int8: pure parts
def test_head_nodes_are_everything_outside_the_backbone_blocks() -> None:
    names = ["/Conv2d_1a_3x3/conv/Conv", "/Mixed_7c/Concat", "/maxpool1/MaxPool", "/GlobalAveragePool", "/MaxPool", "/Concat", "/fc/Gemm"]
    assert quantize.head_nodes(names) == ["/GlobalAveragePool", "/MaxPool", "/Concat", "/fc/Gemm"]


def test_quality_gate_allows_small_drops_and_gains_only() -> None:
    fp32 = {"f1": 0.90, "roc_auc": 0.96}
    assert quantize.quality_gate(fp32, {"f1": 0.896, "roc_auc": 0.97}, 0.005) == []
    failures = quantize.quality_gate(fp32, {"f1": 0.89, "roc_auc": float("nan")}, 0.005)
    assert len(failures) == 2 and failures[0].startswith("f1 0.8900 is 0.0100 below")


def test_calibration_sample_is_balanced_and_seeded() -> None:
    paths = [Path(f"{c}{i}") for c in "np" for i in range(10)]
    labels = [0] * 10 + [1] * 10
    chosen = quantize.balanced_sample(paths, labels, 6, seed=3)
    assert sorted(p.name[0] for p in chosen) == list("nnnppp")
    assert chosen == quantize.balanced_sample(paths, labels, 6, seed=3)
    assert len(quantize.balanced_sample(paths[:12], labels[:12], 8, seed=0)) == 8  # 2 positives: 6 clean fill up


def test_int8_needs_labelled_sets_of_both_classes(inception, tmp_path: Path) -> None:
    paths, labels = labelled(inception["val"])
    only_clean = ([p for p, y in zip(paths, labels) if y == 0], [0] * labels.count(0))
    with pytest.raises(ValueError, match="validation set needs labelled images of both classes"):
        export_int8(inception["export"], only_clean, (paths, labels))
    with pytest.raises(ValueError, match="max_drop=1.5"):
        export_int8(inception["export"], (paths, labels), (paths, labels), max_drop=1.5)


# ------------------------------------------------------------------ int8: the export
def test_int8_export_writes_model_threshold_and_the_check(int8_bundle) -> None:
    bundle, record = int8_bundle
    assert (bundle / INT8_FILE).is_file() and (bundle / "model.onnx").is_file()
    info = json.loads((bundle / "model_info.json").read_text())["int8"]
    assert info["passed"] is True and info["failures"] == [] and info["calibration_images"] == 8
    assert set(info["check"]) == {"fp32", "int8", "fp32_rechosen"} and info["check_images"] == 16
    chosen = json.loads((bundle / INT8_THRESHOLD_FILE).read_text())
    assert chosen["rule"] == "target-fpr" and chosen["target"] == 0.1 and chosen["model"] == INT8_FILE
    assert chosen["threshold"] == info["thresholds"]["int8"]
    # the head stayed float: the int8 graph ends in a float Gemm fed by a float Concat
    import onnx

    graph = onnx.load(str(bundle / INT8_FILE)).graph
    ops = {n.name: n.op_type for n in graph.node}
    assert ops["/fc/Gemm"] == "Gemm" and any(t == "QuantizeLinear" for t in ops.values())
    assert record["check_max_probability_diff"] < 0.05


def test_rejected_int8_model_writes_nothing_but_the_check(inception, tmp_path: Path, monkeypatch) -> None:
    bundle = tmp_path / "export"
    shutil.copytree(inception["export"], bundle)
    monkeypatch.setattr(quantize, "quality_gate", lambda *a: ["f1 0.1 is 0.8 below fp32's 0.9 (allowed 0.005)"])
    with pytest.raises(QuantizationRejected, match="nothing written: f1 0.1 is 0.8 below"):
        export_int8(bundle, labelled(inception["val"]), labelled(inception["check"]), calibration_images=4)
    assert not (bundle / INT8_FILE).exists() and not (bundle / INT8_THRESHOLD_FILE).exists()
    assert json.loads((bundle / "model_info.json").read_text())["int8"]["passed"] is False


# ------------------------------------------------------------------ pt2
def test_pt2_matches_eager_and_is_recorded(inception, pt2_bundle) -> None:
    bundle, record = pt2_bundle
    assert (bundle / "model.pt2").is_file() and record["max_abs_diff"] <= 1e-4
    info = json.loads((bundle / "model_info.json").read_text())["pt2"]
    assert info["max_batch"] == 8 and info["torch"] == torch.__version__
    compiled = torch._inductor.aoti_load_package(str(bundle / "model.pt2"))
    scripted = torch.jit.load(str(bundle / "model.pt"))
    for batch in parity_inputs(PreprocessSpec.load(bundle / "preprocess.json")):
        with torch.no_grad():
            assert torch.allclose(compiled(batch), scripted(batch), atol=1e-4)


def test_pt2_refuses_a_checkpoint_that_is_not_the_bundles(inception, tmp_path: Path) -> None:
    torch.manual_seed(1)
    other = WatermarkNet().eval()
    state = torch.load(inception["checkpoint"], weights_only=False)
    torch.save({**state, "model": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ExportError, match="not this bundle's checkpoint"):
        export_pt2(inception["export"], tmp_path / "other.pt")
    assert not (inception["export"] / "model.pt2").exists()
    with pytest.raises(FileNotFoundError, match="--checkpoint .*missing.pt: not found"):
        export_pt2(inception["export"], tmp_path / "missing.pt")


# ------------------------------------------------------------------ serving
def _archive_dir(bundle: Path, model_file: str, threshold_file: str, into: Path) -> Path:
    """What create_mar.sh unpacks into the model directory for a format."""
    into.mkdir()
    for name in ("preprocess.json", "model_info.json", model_file):
        shutil.copy(bundle / name, into / name)
    shutil.copy(bundle / threshold_file, into / "threshold.json")
    return into


def test_handler_serves_int8_and_pt2_with_their_thresholds(int8_bundle, pt2_bundle, tmp_path: Path) -> None:
    bodies = [sf.jpeg_bytes(120, 100, seed=s) for s in range(3)] + [b"not an image"]
    cases = {
        "int8": (_archive_dir(int8_bundle[0], INT8_FILE, INT8_THRESHOLD_FILE, tmp_path / "int8"), INT8_FILE, "onnx"),
        "pt2": (_archive_dir(pt2_bundle[0], "model.pt2", "threshold.json", tmp_path / "pt2"), "model.pt2", "pt2"),
        "torchscript": (_archive_dir(pt2_bundle[0], "model.pt", "threshold.json", tmp_path / "ts"), "model.pt", "torchscript"),
    }
    results = {}
    for name, (model_dir, model_file, fmt) in cases.items():
        manifest = sf.manifest_for()
        manifest["model"]["serializedFile"] = model_file
        context = sf.FakeContext(model_dir, manifest=manifest, model_yaml_config={"handler": {"threads": 1}})
        handler = WatermarkHandler()
        handler.initialize(context)
        assert handler.model_format == fmt
        context.new_batch(len(bodies))
        context.request_headers[0]["explain"] = "True"  # item 0 was sent to /explanations
        results[name] = handler.handle([{"body": b} for b in bodies], context)
        assert results[name][3]["status"] == 400  # per-item errors as for every format
        explained = results[name][0]
        if name == "pt2":  # no evidence output in an AOTInductor package: the verdict, and why no map
            assert explained["explanation"] is None and ".pt2 package" in explained["explanation_error"]
        else:  # the int8 graph keeps the float evidence output of model.onnx
            assert explained["explanation"]["image"] == {"width": 120, "height": 100}, explained
        assert "explanation" not in results[name][1]
        if name == "int8":
            assert handler.threshold == json.loads((int8_bundle[0] / INT8_THRESHOLD_FILE).read_text())["threshold"]
    for ts_out, pt2_out, int8_out in zip(results["torchscript"][:3], results["pt2"][:3], results["int8"][:3]):
        assert pt2_out["probability"] == pytest.approx(ts_out["probability"], abs=1e-5)
        assert int8_out["probability"] == pytest.approx(ts_out["probability"], abs=0.05)


@pytest.mark.integration
def test_torchserve_serves_the_int8_and_pt2_archives(int8_bundle, pt2_bundle, tmp_path_factory) -> None:
    image = sf.jpeg_bytes(140, 120, seed=7)

    def setup(srv):
        missing = create_mar("--export-dir", str(pt2_bundle[0]), "--format", "onnx-int8", "--model-store", str(srv.store))
        assert missing.returncode != 0 and "python -m train export-int8" in missing.stderr
        built = create_mar("--export-dir", str(int8_bundle[0]), "--format", "onnx-int8", "--model-store", str(srv.store))
        assert built.returncode == 0, built.stderr
        with zipfile.ZipFile(srv.store / "watermark.mar") as mar:
            names = set(mar.namelist())
            packed = json.loads(mar.read("threshold.json"))
        assert INT8_FILE in names and "model.onnx" not in names and "model.pt" not in names
        assert packed == json.loads((int8_bundle[0] / INT8_THRESHOLD_FILE).read_text())
        built = create_mar("--export-dir", str(pt2_bundle[0]), "--format", "pt2", "--archive-name", "watermark-pt2",
                           "--model-store", str(srv.store))  # fmt: skip
        assert built.returncode == 0, built.stderr

    gen = serve(tmp_path_factory.mktemp("ts-int8"), setup)
    srv = next(gen)
    try:
        int8 = put_image(srv, image)
        assert int8.status_code == 200, int8.text
        registered = requests.post(
            f"{srv.management}/models", params={"url": "watermark-pt2.mar", "model_name": "watermark-pt2", "initial_workers": 1,
                                                "synchronous": "true"},
            headers=srv.auth("management"), timeout=120,
        )  # fmt: skip
        assert registered.status_code == 200, registered.text
        pt2 = put_image(srv, image, url=f"{srv.inference}/predictions/watermark-pt2")
        assert pt2.status_code == 200, pt2.text
        expected = sf.expected_probability(pt2_bundle[0], image)
        assert pt2.json()["probability"] == pytest.approx(expected, abs=1e-5)
        assert int8.json()["probability"] == pytest.approx(expected, abs=0.05)
        assert np.isfinite(int8.json()["probability"])
        log = srv.model_log()
        assert "format=onnx" in log and "format=pt2" in log
    finally:
        gen.close()


def test_export_int8_command_names_the_bad_option(inception, tmp_path: Path, capsys) -> None:
    from train.cli import main

    args = ["export-int8", "--export", str(inception["export"]), "--check", str(inception["check"])]
    assert main([*args, "--val", str(tmp_path / "missing")]) == 2
    assert f"--val {tmp_path / 'missing'}: not a folder" in capsys.readouterr().err
    assert main([*args, "--val", str(inception["val"]), "--val-labels", str(tmp_path / "none.csv")]) == 2
    assert f"--val-labels {tmp_path / 'none.csv'}: not found" in capsys.readouterr().err
    assert not (inception["export"] / INT8_FILE).exists()


def test_export_command_re_exports_a_checkpoint(inception, tmp_path: Path, capsys) -> None:
    from train.cli import main

    assert main(["export", "--checkpoint", str(inception["checkpoint"]), "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "threshold.json").read_text())["threshold"] == 0.5
    assert PreprocessSpec.load(tmp_path / "again" / "preprocess.json").image_size == SIZE
    assert main(["export", "--checkpoint", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "x")]) == 2
    assert f"--checkpoint {tmp_path / 'absent.pt'}: not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_create_mar_refuses_a_failed_int8_check_and_too_large_pt2_batches(int8_bundle, pt2_bundle, tmp_path: Path) -> None:
    bundle = tmp_path / "export"
    shutil.copytree(int8_bundle[0], bundle)
    info = json.loads((bundle / "model_info.json").read_text())
    info["int8"] = {**info["int8"], "passed": False, "failures": ["f1 0.8 is 0.1 below fp32's 0.9 (allowed 0.005)"]}
    (bundle / "model_info.json").write_text(json.dumps(info))  # as a later export-int8 whose check failed leaves it
    refused = create_mar("--export-dir", str(bundle), "--format", "onnx-int8", "--model-store", str(tmp_path / "store"))
    assert refused.returncode != 0 and "the int8 model's latest check did not pass (f1 0.8 is 0.1 below" in refused.stderr
    too_large = create_mar("--export-dir", str(pt2_bundle[0]), "--format", "pt2", "--batch-size", "16", "--model-store", str(tmp_path / "store"))
    assert too_large.returncode != 0 and "--batch-size 16: the .pt2 package takes batches of at most 8" in too_large.stderr
    assert not list((tmp_path / "store").glob("*.mar"))
