"""Fast inference: JPEG draft decoding keeps verdicts, the ONNX export matches TorchScript,
and the same handler serves either format (fake context here, real TorchServe below)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handler.preprocess import PreprocessSpec, bytes_to_tensor, decode_image, sigmoid
from handler.watermark_handler import WatermarkHandler
from tests import serving_fixtures as sf
from tests.ts_server import create_mar, put_image, serve
from train.export import ExportError, export_onnx

PROB_TOL = 2e-6


def real_photos() -> list[np.ndarray]:
    """Photos that installed packages ship (scikit-image, scikit-learn)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    photos += list(load_sample_images().images)
    return photos


def twelve_megapixel_jpegs() -> dict[str, bytes]:
    """4000 x 3000 JPEGs: each real photo upscaled, plus a mosaic of them at native scale
    (full-resolution detail across the whole frame, like a real 12 MP photo)."""
    out: dict[str, bytes] = {}
    photos = real_photos()
    for i, photo in enumerate(photos):
        buf = io.BytesIO()
        Image.fromarray(photo).resize((4000, 3000), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=92)
        out[f"upscaled_{i}"] = buf.getvalue()
    mosaic = Image.new("RGB", (4000, 3000))
    tiles = [Image.fromarray(p) for p in photos]
    x = y = k = 0
    while y < 3000:
        tile = tiles[k % len(tiles)]
        mosaic.paste(tile, (x, y))
        x += tile.width
        k += 1
        if x >= 4000:
            x, y = 0, y + 400
    buf = io.BytesIO()
    mosaic.save(buf, "JPEG", quality=92)
    out["mosaic"] = buf.getvalue()
    return out


def test_old_specs_keep_full_decoding_and_new_ones_draft() -> None:
    old = PreprocessSpec.from_dict({k: v for k, v in PreprocessSpec().to_dict().items() if k != "jpeg_draft"})
    assert old.jpeg_draft is False and old.draft_size is None
    assert PreprocessSpec().draft_size == 598
    with pytest.raises(ValueError, match="jpeg_draft='yes': allowed are true and false"):
        PreprocessSpec(jpeg_draft="yes")


def test_draft_decoding_only_shrinks_large_jpegs() -> None:
    big = twelve_megapixel_jpegs()["mosaic"]
    assert decode_image(big, draft_size=598).size == (1000, 750)  # 1/4 scale: both sides >= 598
    assert decode_image(big).size == (4000, 3000)
    small = sf.jpeg_bytes(900, 700)
    assert decode_image(small, draft_size=598).size == (900, 700)  # a 1/2 scale would go below 598
    png = sf.png_bytes(1400, 1300)
    assert decode_image(png, draft_size=598).size == (1400, 1300)  # not a JPEG: decoded in full


def test_fast_path_keeps_verdicts_on_real_12mp_photos() -> None:
    """Probabilities of a real ImageNet backbone (fid-inception) with a fixed random head:
    the draft-decoded input must give the same probability within 0.02 (measured: 0.011)."""
    from train.model import build_model

    torch.manual_seed(0)
    model, _ = build_model("fid-inception")
    model.eval()
    fast, full = PreprocessSpec(jpeg_draft=True), PreprocessSpec(jpeg_draft=False)
    images = twelve_megapixel_jpegs()
    batch_fast = torch.stack([bytes_to_tensor(data, fast) for data in images.values()])
    batch_full = torch.stack([bytes_to_tensor(data, full) for data in images.values()])
    assert float((batch_fast - batch_full).abs().mean()) < 0.01  # inputs in [-1, 1]
    with torch.no_grad():
        p_fast = torch.sigmoid(model(batch_fast)).squeeze(1)
        p_full = torch.sigmoid(model(batch_full)).squeeze(1)
    assert p_full.std() > 0.01  # the probe separates the photos at all
    assert float((p_fast - p_full).abs().max()) <= 0.02, (p_fast, p_full)


# ------------------------------------------------------------------ ONNX


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory) -> Path:
    export_dir = sf.build_tiny_export(tmp_path_factory.mktemp("onnx-export"))
    result = export_onnx(export_dir)
    assert result["max_abs_diff"] <= 1e-4
    return export_dir


def test_onnx_export_is_parity_checked_and_recorded(onnx_export: Path) -> None:
    info = json.loads((onnx_export / "model_info.json").read_text())
    assert info["onnx"]["opset"] == 17 and info["onnx"]["max_abs_diff"] <= 1e-4
    assert info["weights"] == "tiny-test"  # the rest of the provenance is kept


def test_failed_onnx_parity_writes_nothing(tmp_path: Path) -> None:
    export_dir = sf.build_tiny_export(tmp_path / "export")
    before = sorted(p.name for p in export_dir.iterdir())
    with pytest.raises(ExportError, match="nothing written"):
        export_onnx(export_dir, tolerance=-1.0)
    assert sorted(p.name for p in export_dir.iterdir()) == before


def test_export_onnx_needs_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.pt: missing"):
        export_onnx(tmp_path)


def _onnx_manifest() -> dict:
    manifest = sf.manifest_for()
    manifest["model"]["serializedFile"] = "model.onnx"
    return manifest


def test_handler_serves_onnx_like_torchscript(onnx_export: Path) -> None:
    bodies = [sf.jpeg_bytes(seed=s) for s in range(3)] + [b"not an image"]
    results = {}
    for fmt, manifest in (("torchscript", sf.manifest_for()), ("onnx", _onnx_manifest())):
        context = sf.FakeContext(onnx_export, manifest=manifest, model_yaml_config={"handler": {"threads": 1}})
        handler = WatermarkHandler()
        handler.initialize(context)
        assert handler.model_format == fmt and handler.threads == 1
        context.new_batch(len(bodies))
        results[fmt] = handler.handle([{"body": b} for b in bodies], context)
    for ts_out, onnx_out in zip(results["torchscript"][:3], results["onnx"][:3]):
        assert onnx_out["probability"] == pytest.approx(ts_out["probability"], abs=PROB_TOL)
        assert onnx_out["watermark"] == ts_out["watermark"]
    assert results["onnx"][3]["status"] == 400  # per-item errors as before


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"threads": 0}, "handler.threads=0: must be an integer >= 1"), ({"threads": "2"}, "handler.threads='2'")],
)
def test_bad_thread_setting_is_a_clear_error(onnx_export: Path, settings: dict, message: str) -> None:
    context = sf.FakeContext(onnx_export, model_yaml_config={"handler": settings})
    with pytest.raises(ValueError, match=message):
        WatermarkHandler().initialize(context)


def test_unknown_model_format_is_refused(onnx_export: Path) -> None:
    manifest = sf.manifest_for()
    manifest["model"]["serializedFile"] = "model.tflite"
    with pytest.raises(RuntimeError, match="expected model.pt \\(TorchScript\\), a .onnx file"):
        WatermarkHandler().initialize(sf.FakeContext(onnx_export, manifest=manifest))


@pytest.mark.integration
def test_torchserve_serves_the_onnx_archive(onnx_export: Path, tmp_path_factory) -> None:
    image = sf.jpeg_bytes(seed=7)
    expected = sf.expected_probability(onnx_export, image)

    def setup(srv):
        no_onnx = sf.build_tiny_export(srv.root / "plain")
        refused = create_mar("--export-dir", str(no_onnx), "--format", "onnx", "--model-store", str(srv.store))
        assert refused.returncode != 0 and "python -m train export-onnx" in refused.stderr
        bad = create_mar("--export-dir", str(onnx_export), "--format", "tflite", "--model-store", str(srv.store))
        assert bad.returncode != 0 and "allowed are torchscript, onnx, onnx-int8 and pt2" in bad.stderr
        built = create_mar("--export-dir", str(onnx_export), "--format", "onnx", "--threads", "2", "--model-store", str(srv.store))
        assert built.returncode == 0, built.stderr
        with zipfile.ZipFile(srv.store / "watermark.mar") as mar:
            names = set(mar.namelist())
            config = mar.read("model-config.yaml").decode()
        assert "model.onnx" in names and "model.pt" not in names
        assert "threads: 2" in config

    gen = serve(tmp_path_factory.mktemp("ts-onnx"), setup)
    srv = next(gen)
    try:
        responses = [put_image(srv, image) for _ in range(2)]
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        assert responses[0].json()["probability"] == pytest.approx(expected, abs=PROB_TOL)
        bad = put_image(srv, b"GIF89a broken")
        assert bad.status_code == 400
        assert "format=onnx" in srv.model_log()
    finally:
        gen.close()


def test_sigmoid_matches_torch() -> None:
    for logit in (-30.0, -1.0, 0.0, 2.5, 40.0):
        assert sigmoid(logit) == pytest.approx(float(torch.sigmoid(torch.tensor(logit, dtype=torch.float64))), abs=1e-12)
