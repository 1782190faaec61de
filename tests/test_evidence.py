"""The evidence map read back onto the photo (handler/evidence.py) and the model's map itself."""

from __future__ import annotations

import pytest
import torch

from handler.evidence import summarize
from handler.preprocess import PreprocessSpec, content_box
from train.model import WatermarkNet, evidence_map


def spec(resize: str) -> PreprocessSpec:
    return PreprocessSpec.for_weights("tf-inception", image_size=96, resize=resize)


def one_hot_map(row: int, col: int, cells: int = 8) -> torch.Tensor:
    evidence = torch.full((cells, cells), -1.0)
    evidence[row, col] = 5.0
    return evidence


@pytest.mark.parametrize("resize", ["squash", "letterbox"])
def test_peak_and_box_land_on_the_strong_cell_in_photo_pixels(resize):
    s = spec(resize)
    width, height = 400, 200  # a wide photo: padded above and below when letterboxed
    content = content_box(width, height, s)
    # the strong cell: bottom-right corner of the model input's photo area
    left, top, right, bottom = content
    cells = 8
    row, col = (bottom - 1) * cells // s.image_size, (right - 1) * cells // s.image_size
    out = summarize(one_hot_map(row, col, cells), size=s.image_size, content=content, width=width, height=height)
    assert out["peak"]["x"] > 0.8 * width and out["peak"]["y"] > 0.6 * height
    box = out["box"]
    assert box["right"] == width and box["bottom"] == height
    assert box["left"] <= out["peak"]["x"] <= box["right"] and box["top"] <= out["peak"]["y"] <= box["bottom"]
    assert (box["right"] - box["left"]) * (box["bottom"] - box["top"]) < 0.2 * width * height


def test_letterbox_content_box_matches_the_resize():
    s = spec("letterbox")
    assert content_box(400, 200, s) == (0, 24, 96, 72)
    assert content_box(200, 400, s) == (24, 0, 72, 96)
    assert content_box(300, 300, spec("squash")) == (0, 0, 96, 96)


def test_grid_is_normalised_and_all_negative_evidence_gives_zeros():
    s = spec("squash")
    out = summarize(torch.full((8, 8), -3.0), size=96, content=(0, 0, 96, 96), width=50, height=80, cells=4)
    assert out["rows"] == out["cols"] == 4 and out["grid"] == [[0.0] * 4] * 4
    assert out["image"] == {"width": 50, "height": 80}
    assert 0 <= out["box"]["left"] < out["box"]["right"] <= 50
    peaked = summarize(one_hot_map(2, 3), size=s.image_size, content=(0, 0, 96, 96), width=96, height=96)
    values = [v for row in peaked["grid"] for v in row]
    assert max(values) == 1.0 and min(values) == 0.0


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax"])
def test_evidence_map_is_the_heads_logit_per_cell(pool):
    """With every cell equal, each cell's evidence plus the bias is exactly the logit."""
    features = torch.rand(2, 5, 1, 1).expand(2, 5, 3, 4).contiguous()
    weight = torch.randn(1, 10 if pool == "avgmax" else 5)
    pooled = features.mean((2, 3))
    if pool == "avgmax":
        expected = pooled @ weight[0, :5] + pooled @ weight[0, 5:]
        per_cell = evidence_map(features, weight, pool)  # avg weights shared over 12 cells
        assert torch.allclose(per_cell.sum((1, 2)) - 11 * (pooled @ weight[0, 5:]), expected, atol=1e-5)
    else:
        expected = pooled @ weight[0]
        per_cell = evidence_map(features, weight, pool)
        total = per_cell.sum((1, 2)) if pool == "avg" else per_cell[:, 0, 0]
        assert torch.allclose(total, expected, atol=1e-5)


def test_watermarknet_explain_returns_forwards_logits():
    model = WatermarkNet(pool="avgmax").eval()
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        logits, evidence = model.explain(x)
        assert torch.allclose(logits, model(x), atol=1e-6)
    assert evidence.shape[0] == 1 and evidence.dim() == 3


def test_localisation_benchmark_scores_map_and_baselines(tmp_path, capsys):
    """scripts/bench_localize.py end to end on a tiny model: a table, the records, the target line."""
    import importlib.util
    import json

    from tests import serving_fixtures as sf

    export = sf.build_tiny_export(tmp_path / "export", image_size=96)
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(3):
        sf.rgb_image(160, 120, seed).save(photos / f"p{seed}.jpg")
    spec = importlib.util.spec_from_file_location("bench_localize", sf.REPO_ROOT / "scripts" / "bench_localize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "localize.md"
    assert module.main(["--export", str(export), "--photos", str(photos), "--count", "6", "--threads", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| all marks | 6 |" in text and "Target: pointing-game accuracy >= 0.8" in text
    records = json.loads(out.with_suffix(".json").read_text())
    assert len(records) == 6 and all({"map", "centre", "prior", "family"} <= set(r) for r in records)
    assert module.hit((10, 10), (0, 0, 5, 5), 100, 0.05) and not module.hit((10, 10), (0, 0, 5, 5), 100, 0.01)
    old = sf.build_tiny_export(tmp_path / "old", explain=False)
    with pytest.raises(SystemExit):
        module.main(["--export", str(old), "--photos", str(photos), "--count", "1"])
    assert "has no explain method" in capsys.readouterr().err
