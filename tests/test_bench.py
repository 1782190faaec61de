"""scripts/bench.py runs end to end (raw backends and preprocessing; the served part is what
tests/test_fast_inference.py and the serving tests cover) and reports the targets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from handler.preprocess import PreprocessSpec
from train.export import export_model
from train.model import WatermarkNet

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bench") / "export"
    export_model(WatermarkNet(), PreprocessSpec(image_size=75), {"threshold": 0.5, "rule": "manual"}, out, info={"config": {"pool": "avgmax"}})
    return out


def test_bench_writes_the_tables_and_target_verdicts(small_export: Path, tmp_path: Path, capsys) -> None:
    bench = load_bench()
    out = tmp_path / "results.md"
    backends = "eager,torchscript,onnx,int8,bf16"  # pt2: compiling is tests/test_int8_pt2.py's
    assert bench.main(["--export", str(small_export), "--backends", backends, "--no-served", "--repeats", "1", "--out", str(out)]) == 0
    report = out.read_text()
    for heading in ("## Raw model", "## Preprocessing per image", "## Targets"):
        assert heading in report
    for backend in ("eager (PyTorch)", "TorchScript", "ONNX fp32", "ONNX int8", "TorchScript bf16 (measured only)"):
        assert report.count(f"| {backend} |") == 2, backend  # batch 1 and batch 8
    assert "AOTInductor" not in report
    assert "4000 x 3000 JPEG (12 MP)" in report and "3000 x 2000 PNG" in report
    assert "served onnx-int8 (shipped) / raw TorchScript fp32 b8 >= 3 | not measured" in report
    assert "int8 model made here for speed only" in report  # the bundle had none: not quality-checked
    assert "not checked (no export-int8 check in the bundle)" in report
    assert "input 75 x 75" in report and "OMP_WAIT_POLICY=" in report
    assert not list(small_export.glob("model*.onnx"))  # the ONNX exports went to a temporary copy
    assert "written:" in capsys.readouterr().out


def test_target_rows_say_by_how_much_a_target_is_missed() -> None:
    bench = load_bench()
    pre = [{"input": "4000 x 3000 JPEG (12 MP)", "% of TorchScript b8 model time": 20.0}]
    served = [
        {"archive": "torchscript, 1 worker x 2 threads", "format": "torchscript", "workers": 1, "images/s": 9.0, "lone p50 ms": 300.0},
        {"archive": "onnx, 1 worker x 2 threads", "format": "onnx", "workers": 1, "images/s": 16.0, "lone p50 ms": 200.0},
        {"archive": "onnx-int8, 1 worker x 2 threads", "format": "onnx-int8", "workers": 1, "images/s": 24.0, "lone p50 ms": 120.0},
        {"archive": "onnx-int8, 2 workers x 1 thread", "format": "onnx-int8", "workers": 2, "images/s": 32.0, "lone p50 ms": 180.0},
    ]
    check = {"check": {"fp32": {"f1": 0.90, "roc_auc": 0.96}, "int8": {"f1": 0.89, "roc_auc": 0.961}}}
    rows = {r["target"]: r for r in bench.target_rows(pre, served, ts8=10.0, int8_check=check)}
    shipped = rows["served onnx-int8 (shipped) / raw TorchScript fp32 b8 >= 3"]
    assert shipped["measured"] == "3.20" and shipped["result"] == "met"  # the faster layout counts
    lone = rows["lone-request p50: onnx-int8 / served TorchScript fp32 <= 0.5"]
    assert lone["measured"] == "0.60" and lone["result"] == "missed by 20 %"  # that layout's lone latency
    assert rows["int8 F1 and ROC-AUC drop vs fp32 <= 0.005 (export-int8 check)"]["result"] == "missed by 100 %"
    assert rows["served TorchScript / raw TorchScript b8 >= 0.9"]["result"] == "met"
    assert rows["served ONNX fp32 / raw TorchScript b8 >= 1.5"]["result"] == "met"
    assert rows["12 MP JPEG preprocessing <= 10 % of TorchScript b8 model time"]["result"] == "missed by 100 %"


def test_bad_options_are_refused(capsys) -> None:
    bench = load_bench()
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0"])
    assert "--repeats 0: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--backends", "onnx,tflite"])
    assert "allowed are eager, torchscript, onnx, int8, pt2, bf16" in capsys.readouterr().err


def test_training_bench_prints_its_tables(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "scripts" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "train.md"
    assert module.main(["--size", "75", "--batch", "2", "--repeats", "1", "--cut", "Mixed_7c", "--from", "Mixed_7c", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| channels-last, bfloat16 |" in text and "| NCHW, float32 |" in text
    assert "| Mixed_7c | 2048 x 1 x 1 |" in text
    with pytest.raises(ValueError, match="block 'Mixed_9z'"):
        module.main(["--cut", "Mixed_9z"])


def test_a_bundles_checked_int8_model_is_used_and_its_check_reported(small_export: Path, tmp_path: Path) -> None:
    bench = load_bench()
    bundle = tmp_path / "bundle"
    import json
    import shutil

    shutil.copytree(small_export, bundle)
    (bundle / "model.int8.onnx").write_bytes(b"stand-in: prepare_export only checks that it is there")
    check = {"fp32": {"f1": 0.9, "roc_auc": 0.96}, "int8": {"f1": 0.91, "roc_auc": 0.962}}
    info = {**json.loads((bundle / "model_info.json").read_text()), "int8": {"passed": True, "check": check, "check_images": 50, "check_verdicts_changed": 2}}
    (bundle / "model_info.json").write_text(json.dumps(info))
    work = tmp_path / "work"
    work.mkdir()
    copied, _, notes = bench.prepare_export(bundle, work, 75, {"torchscript", "int8"})
    assert set(notes) == {"int8_checked"} and "on 50 held-out photos F1 0.9100 (fp32 0.9000)" in notes["int8_checked"]
    assert (copied / "model.int8.onnx").read_bytes() == (bundle / "model.int8.onnx").read_bytes()


def test_a_speed_only_int8_model_can_be_archived_for_the_served_rows(small_export: Path, tmp_path: Path) -> None:
    from tests.ts_server import create_mar

    bench = load_bench()
    work = tmp_path / "work"
    work.mkdir()
    bundle, _, notes = bench.prepare_export(small_export, work, 75, {"torchscript", "int8"})
    assert "int8" in notes and "int8_checked" not in notes  # never reported as a quality check
    built = create_mar("--export-dir", str(bundle), "--format", "onnx-int8", "--model-store", str(tmp_path / "store"))
    assert built.returncode == 0, built.stderr
