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
    assert bench.main(["--export", str(small_export), "--no-served", "--repeats", "1", "--out", str(out)]) == 0
    report = out.read_text()
    for heading in ("## Raw model", "## Preprocessing per image", "## Targets"):
        assert heading in report
    for backend in ("eager (PyTorch)", "TorchScript", "ONNX (onnxruntime"):
        assert report.count(f"| {backend}") == 2, backend  # batch 1 and batch 8
    assert "4000 x 3000 JPEG (12 MP)" in report and "3000 x 2000 PNG" in report
    assert "served TorchScript / raw TorchScript b8 >= 0.9 | not measured" in report
    assert "input 75 x 75" in report and "OMP_WAIT_POLICY=" in report
    assert not list(small_export.glob("model.onnx"))  # the ONNX export went to a temporary copy
    assert "written:" in capsys.readouterr().out


def test_target_rows_say_by_how_much_a_target_is_missed() -> None:
    bench = load_bench()
    pre = [{"input": "4000 x 3000 JPEG (12 MP)", "% of TorchScript b8 model time": 20.0}]
    served = [{"archive": "torchscript, 1 worker x 2 threads", "images/s": 9.0}, {"archive": "onnx, 1 worker x 2 threads", "images/s": 16.0}]
    rows = {r["target"]: r["result"] for r in bench.target_rows(pre, served, ts8=10.0)}
    assert rows["served TorchScript / raw TorchScript b8 >= 0.9"] == "met"
    assert rows["served ONNX / raw TorchScript b8 >= 1.5"] == "met"
    assert rows["12 MP JPEG preprocessing <= 10 % of TorchScript b8 model time"] == "missed by 100 %"


def test_bad_options_are_refused(capsys) -> None:
    bench = load_bench()
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0"])
    assert "--repeats 0: must be >= 1" in capsys.readouterr().err


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
