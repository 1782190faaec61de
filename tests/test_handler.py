"""Unit tests of handler/watermark_handler.py with a fake TorchServe context (no server)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from handler.preprocess import ImageDecodeError, decode_image
from handler.watermark_handler import WatermarkHandler, extract_body, reason_phrase
from tests import serving_fixtures as sf

PROB_TOL = 2e-6  # 6-decimal rounding plus batch-vs-single float noise
RESULT_KEYS = {"watermark", "probability", "threshold", "model", "version"}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return sf.build_tiny_export(tmp_path_factory.mktemp("export"))


def make_handler(model_dir, **context_kwargs) -> tuple[WatermarkHandler, sf.FakeContext]:
    context = sf.FakeContext(model_dir, **context_kwargs)
    handler = WatermarkHandler()
    handler.initialize(context)
    return handler, context


@pytest.fixture(scope="module")
def loaded(export_dir):
    return make_handler(export_dir)


def run(handler: WatermarkHandler, context: sf.FakeContext, rows: list) -> list:
    context.new_batch(len(rows))
    return handler.handle(rows, context)


class CountingModel:
    """Wraps the TorchScript model to count forward passes and their batch sizes."""

    def __init__(self, model) -> None:
        self.model = model
        self.batch_sizes: list[int] = []
        self.inference_mode: list[bool] = []

    def __call__(self, x, *args, **kwargs):
        self.batch_sizes.append(int(x.shape[0]))
        self.inference_mode.append(torch.is_inference_mode_enabled())
        return self.model(x, *args, **kwargs)


@pytest.fixture()
def counting(loaded):
    handler, context = loaded
    original = handler.model
    handler.model = CountingModel(original)
    yield handler, context, handler.model
    handler.model = original


def assert_verdict(result: dict, export_dir: Path, data: bytes, version: str = "1.0") -> None:
    assert set(result) == RESULT_KEYS, result
    expected = sf.expected_probability(export_dir, data)
    assert result["probability"] == pytest.approx(expected, abs=PROB_TOL)
    assert result["probability"] == round(result["probability"], 6)
    assert isinstance(result["watermark"], bool)
    if abs(expected - sf.THRESHOLD) > PROB_TOL:
        assert result["watermark"] is (expected >= sf.THRESHOLD)
    assert result["threshold"] == sf.THRESHOLD
    assert result["model"] == "watermark"
    assert result["version"] == version


# ------------------------------------------------------------------- verdicts
def test_single_image(loaded, export_dir):
    handler, context = loaded
    data = sf.jpeg_bytes()
    out = run(handler, context, [{"body": data}])
    assert len(out) == 1
    assert_verdict(out[0], export_dir, data)
    assert context.get_response_status(0) == (200, "OK")
    assert context.response_headers[0]["content-type"] == "application/json"
    json.dumps(out)  # what TorchServe does with a dict output
    assert any(rec[1] == "HandlerTime" for rec in context.metrics.records)


def test_batch_of_several_runs_model_once(counting, export_dir):
    handler, context, model = counting
    images = [sf.jpeg_bytes(seed=s) for s in range(3)] + [sf.png_bytes(seed=9), sf.rgba_png_bytes()]
    out = run(handler, context, [{"body": data} for data in images])
    assert len(out) == len(images)
    for result, data in zip(out, images):
        assert_verdict(result, export_dir, data)
    assert model.batch_sizes == [len(images)]
    assert model.inference_mode == [True]
    assert {context.get_response_status(i)[0] for i in range(len(images))} == {200}


@pytest.mark.parametrize("kind", list(sf.good_image_kinds()))
def test_image_modes_give_verdicts(loaded, export_dir, kind):
    handler, context = loaded
    data = sf.good_image_kinds()[kind]
    out = run(handler, context, [{"body": data}])
    assert_verdict(out[0], export_dir, data)


def test_exif_orientation_is_applied():
    assert decode_image(sf.exif_rotated_jpeg_bytes()).size == (60, 120)


def test_bad_items_get_their_own_status_and_good_ones_verdicts(counting, export_dir):
    handler, context, model = counting
    bad = sf.bad_image_kinds()
    good = [sf.jpeg_bytes(seed=1), sf.png_bytes(seed=2), sf.cmyk_jpeg_bytes()]
    rows, expected = [], []
    for i, (name, (body, status)) in enumerate(bad.items()):
        if i < len(good):
            rows.append({"body": good[i]})
            expected.append(("good", good[i]))
        rows.append({"body": body})
        expected.append((name, status))
    out = run(handler, context, rows)

    assert len(out) == len(rows)
    assert model.batch_sizes == [len(good)]  # one forward pass over the good ones only
    for idx, (result, (name, info)) in enumerate(zip(out, expected)):
        code, phrase = context.get_response_status(idx)
        if name == "good":
            assert_verdict(result, export_dir, info)
            assert code == 200
            continue
        assert result["status"] == info == code, (name, result)
        assert set(result) == {"error", "status"}
        message = result["error"]
        assert message.startswith("request body: ")
        assert phrase == reason_phrase(message) and "\n" not in phrase and phrase.isascii()
        assert context.response_headers[idx]["content-type"] == "application/json"
        if name == "empty":
            assert "empty body" in message and "JPEG, PNG" in message
        elif name in ("text", "truncated_jpeg"):
            assert "not a decodable image" in message and "allowed are JPEG" in message
        elif name == "one_pixel_png":
            assert "1x1" in message and ">= 8 px" in message
        elif name == "bomb_png":
            assert "too large" in message and "at most 50000000 pixels" in message


def test_all_bad_batch_skips_the_model(counting):
    handler, context, model = counting
    out = run(handler, context, [{"body": b""}, {"body": b"GIF89a broken"}])
    assert [r["status"] for r in out] == [400, 400]
    assert model.batch_sizes == []
    assert context.get_response_status(1)[0] == 400


def test_multipart_and_other_body_shapes(loaded, export_dir):
    handler, context = loaded
    data = sf.jpeg_bytes(seed=3)
    rows = [
        {"data": data},  # multipart field "data"
        {"file": bytearray(data)},  # multipart field "file", bytearray
        {"image": data, "note": "seller 42"},  # known field next to a text field
        {"upload": data},  # any single binary field
        data,  # bare bytes
        {"a": data, "b": data},  # ambiguous
        {"body": {"url": "https://example.invalid/x.jpg"}},  # JSON decoded by the worker
        {"body": "a text body"},  # text/* decoded by the worker
        {},  # no field at all
    ]
    out = run(handler, context, rows)
    assert len(out) == len(rows)
    for result in out[:5]:
        assert_verdict(result, export_dir, data)
    assert [r.get("status") for r in out[5:]] == [400, 400, 400, 400]
    assert "cannot tell which form field" in out[5]["error"] and "'a', 'b'" in out[5]["error"]
    assert "JSON document" in out[6]["error"] and "curl -T" in out[6]["error"]
    assert "got text" in out[7]["error"]
    assert "empty body" in out[8]["error"]


def test_extract_body_accepts_bytearray_and_memoryview():
    assert extract_body({"body": bytearray(b"abc")}) == b"abc"
    assert extract_body({"data": memoryview(b"xyz")}) == b"xyz"
    # two image fields, even with one empty, are ambiguous (never the first one silently)
    with pytest.raises(ImageDecodeError, match=r"cannot tell which form field holds the image \(2 fields: 'body', 'data'\)") as err:
        extract_body({"data": b"", "body": b"x"})
    assert err.value.reason == "ambiguous_form"
    assert extract_body({"data": b""}) == b""  # an empty field is reported as empty by the decoder


def test_reason_phrase_is_one_ascii_line():
    phrase = reason_phrase("bad\r\nimage \u00e9\t" + "x" * 500)
    assert phrase.isascii() and "\n" not in phrase and "\r" not in phrase and len(phrase) == 200
    assert reason_phrase("") == "Bad Request"


def assert_explanation(result: dict, width: int, height: int) -> None:
    explanation = result["explanation"]
    assert explanation["kind"] == "class-activation"
    assert explanation["image"] == {"width": width, "height": height}
    grid = explanation["grid"]
    assert len(grid) == explanation["rows"] and all(len(row) == explanation["cols"] for row in grid)
    values = [v for row in grid for v in row]
    assert min(values) >= 0 and max(values) <= 1
    assert 0 <= explanation["peak"]["x"] <= width and 0 <= explanation["peak"]["y"] <= height
    box = explanation["box"]
    assert 0 <= box["left"] < box["right"] <= width and 0 <= box["top"] < box["bottom"] <= height
    assert box["left"] <= explanation["peak"]["x"] <= box["right"] and box["top"] <= explanation["peak"]["y"] <= box["bottom"]


def test_explanations_come_per_item_from_the_same_pass(counting, export_dir):
    handler, context, model = counting
    wide, rotated, plain = sf.jpeg_bytes(160, 90, seed=1), sf.exif_rotated_jpeg_bytes(), sf.jpeg_bytes(seed=2)
    context.new_batch(4)
    for idx in (0, 1, 3):
        context.request_headers[idx]["explain"] = "True"
    out = handler.handle([{"body": wide}, {"body": rotated}, {"body": plain}, {"body": b"not an image"}], context)
    assert model.batch_sizes == []  # one pass of the model's explain method, not of forward
    for idx, data in ((0, wide), (1, rotated), (2, plain)):
        assert_verdict({k: v for k, v in out[idx].items() if k != "explanation"}, export_dir, data)
    assert_explanation(out[0], 160, 90)
    size = decode_image(rotated).size  # shown upright: EXIF orientation applied
    assert_explanation(out[1], *size)
    assert "explanation" not in out[2]  # a /predictions item in the same batch
    assert out[3]["status"] == 400 and "explanation" not in out[3]


def test_a_model_without_a_map_still_answers_explanations(tmp_path):
    old = sf.build_tiny_export(tmp_path / "old", explain=False)
    handler, context = make_handler(old)
    data = sf.jpeg_bytes()
    context.new_batch(1)
    context.request_headers[0]["explain"] = "True"
    out = handler.handle([{"body": data}], context)
    assert_verdict({k: v for k, v in out[0].items() if not k.startswith("explanation")}, old, data)
    assert out[0]["explanation"] is None
    assert "model.pt has no explain method" in out[0]["explanation_error"] and "export it again" in out[0]["explanation_error"]
    assert json.loads(handler.describe_handle())["explanations"] is False


def test_describe(loaded):
    handler, _ = loaded
    described = json.loads(handler.describe_handle())
    assert described["threshold"] == sf.THRESHOLD and described["version"] == "1.0"
    assert described["preprocess"]["image_size"] == sf.IMAGE_SIZE
    assert described["model_info"]["weights"] == "tiny-test"


# --------------------------------------------------------------- initialisation
def test_name_and_version_come_from_context_and_manifest(export_dir):
    handler, context = make_handler(
        export_dir, model_name="wm-canary", manifest=sf.manifest_for("watermark", "2.3.1")
    )
    out = run(handler, context, [{"body": sf.jpeg_bytes()}])
    assert out[0]["model"] == "wm-canary" and out[0]["version"] == "2.3.1"


def test_handler_settings_from_model_yaml_config(export_dir):
    handler, context = make_handler(export_dir, model_yaml_config={"handler": {"max_pixels": 5000}})
    assert handler.max_pixels == 5000
    out = run(handler, context, [{"body": sf.jpeg_bytes(120, 90)}, {"body": sf.jpeg_bytes(60, 60)}])
    assert out[0]["status"] == 413 and "at most 5000" in out[0]["error"]
    assert context.get_response_status(0)[0] == 413
    assert set(out[1]) == RESULT_KEYS


@pytest.mark.parametrize("value", [0, "many", 10.5, True])
def test_invalid_handler_settings_fail_at_load(export_dir, value):
    with pytest.raises(ValueError, match="max_pixels"):
        make_handler(export_dir, model_yaml_config={"handler": {"max_pixels": value}})
    with pytest.raises(ValueError, match="decode_memory_mb"):
        make_handler(export_dir, model_yaml_config={"handler": {"decode_memory_mb": value}})
    with pytest.raises(ValueError, match="decode_memory_mb=199: must be an integer >= 200"):
        make_handler(export_dir, model_yaml_config={"handler": {"decode_memory_mb": 199}})  # < one 50 MP image


def test_a_batch_of_large_images_decodes_within_the_batch_budget(export_dir):
    """Threads decode in parallel, but never hold more than decode_memory_mb between them."""
    config = {"handler": {"threads": 4, "max_pixels": 1_000_000, "decode_memory_mb": 6}}
    handler, context = make_handler(export_dir, model_yaml_config=config)
    assert handler.decode_memory.capacity == 6_000_000 and handler.threads == 4
    bodies = [{"body": sf.png_bytes(1000, 900, seed)} for seed in range(6)]  # 3.6 MB each: one at a time
    out = run(handler, context, bodies)
    assert all(set(item) == RESULT_KEYS for item in out)
    assert 3_600_000 <= handler.decode_memory.peak <= 6_000_000 and handler.decode_memory.in_use == 0
    default, _ = make_handler(export_dir)
    assert default.decode_memory.capacity == 2 * 4 * default.max_pixels  # two images at the budget


def copy_export(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("threshold.json", None, FileNotFoundError, "threshold.json.*not found"),
        ("threshold.json", "{not json", ValueError, "threshold.json.*not valid JSON"),
        ("threshold.json", '{"rule": "target-fpr"}', ValueError, "threshold.json.*expected an object"),
        ("threshold.json", '{"threshold": 1.5}', ValueError, r"threshold.json.*\[0, 1\]"),
        ("threshold.json", '{"threshold": "0.3"}', ValueError, "threshold.json.*must be a number"),
        ("preprocess.json", None, FileNotFoundError, "preprocess.json.*not found"),
        ("preprocess.json", '{"image_size": 10}', ValueError, "preprocess.json.*image_size"),
    ],
)
def test_missing_or_invalid_export_files_name_the_file(export_dir, tmp_path, name, content, error, match):
    model_dir = copy_export(export_dir, tmp_path / "model")
    if content is None:
        (model_dir / name).unlink()
    else:
        (model_dir / name).write_text(content)
    with pytest.raises(error, match=match):
        make_handler(model_dir)


def test_manifest_without_torchscript_file_is_refused(export_dir):
    manifest = sf.manifest_for()
    del manifest["model"]["serializedFile"]
    with pytest.raises(RuntimeError, match="serializedFile"):
        make_handler(export_dir, manifest=manifest)


def test_missing_model_file_is_refused(export_dir, tmp_path):
    model_dir = copy_export(export_dir, tmp_path / "model")
    (model_dir / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model.pt"):
        make_handler(model_dir)


def test_model_with_wrong_output_shape_is_refused_at_load(export_dir, tmp_path):
    model_dir = copy_export(export_dir, tmp_path / "model")
    wrong = torch.jit.trace(torch.nn.Conv2d(3, 2, 3, stride=8).eval(), torch.zeros(1, 3, 75, 75))
    wrong.save(str(model_dir / "model.pt"))
    with pytest.raises(RuntimeError, match=r"expected logits of shape \[2, 1\]"):
        make_handler(model_dir)


# ------------------------------------------------------------------ packaging
def test_imports_flat_and_as_package_without_training_code(tmp_path):
    """Inside the .mar the files are flat; TorchServe needs exactly one class in the module."""
    flat = tmp_path / "model_dir"
    flat.mkdir()
    for name in ("watermark_handler.py", "preprocess.py", "evidence.py"):
        shutil.copy(sf.REPO_ROOT / "handler" / name, flat / name)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(flat)!r})
        import watermark_handler
        assert watermark_handler.__package__ == "", watermark_handler.__package__
        from ts.utils.util import list_classes_from_module
        classes = list_classes_from_module(watermark_handler)
        assert [c.__name__ for c in classes] == ["WatermarkHandler"], classes
        sys.path.insert(0, {str(sf.REPO_ROOT)!r})
        import handler.watermark_handler as packaged
        assert [c.__name__ for c in list_classes_from_module(packaged)] == ["WatermarkHandler"]
        banned = sorted(m for m in sys.modules if m.split(".")[0] in ("train", "mlflow", "optuna"))
        assert not banned, banned
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


# ------------------------------------------------------- metrics, request tags, reasons
VERDICT_METRIC = "watermark_verdicts_total"
REJECT_METRIC = "watermark_rejected_inputs_total"


def test_batch_counts_verdicts_and_rejections_by_reason(export_dir):
    handler, context = make_handler(export_dir)
    rows = [
        {"body": sf.jpeg_bytes(seed=1)}, {"body": sf.png_bytes(seed=2)},  # verdicts (tiny model: p ~ 0.48 >= 0.37)
        {"body": b""}, {"body": b"<html></html>"}, {"body": sf.corrupt_png_bytes()},
        {"body": sf.tiny_png_bytes()}, {"body": sf.bomb_png_bytes()}, {"body": "text"},
        {"a": b"1", "b": b"2"},
    ]
    run(handler, context, rows)
    assert context.metrics.counters(VERDICT_METRIC, "Verdict") == {"watermark": 2}
    assert context.metrics.counters(REJECT_METRIC, "Reason") == {
        "empty": 1, "undecodable": 2, "too_small": 1, "too_many_pixels": 1, "not_image_bytes": 1, "ambiguous_form": 1,
    }
    # the dimensions, in the order metrics.yaml declares them
    dims = [rec[3] for rec in context.metrics.records if rec[1] == VERDICT_METRIC][0]
    assert list(dims) == ["ModelName", "ModelVersion", "Level", "Verdict"]
    assert dims["ModelName"] == "watermark" and dims["ModelVersion"] == "1.0" and dims["Level"] == "Model"


def test_clean_verdicts_are_counted_too(export_dir, tmp_path):
    model_dir = copy_export(export_dir, tmp_path / "model")
    (model_dir / "threshold.json").write_text('{"threshold": 0.99}')
    handler, context = make_handler(model_dir)
    run(handler, context, [{"body": sf.jpeg_bytes()}])
    assert context.metrics.counters(VERDICT_METRIC, "Verdict") == {"clean": 1}


def test_metrics_yaml_declares_the_handler_metrics():
    import yaml

    declared = yaml.safe_load((sf.REPO_ROOT / "metrics.yaml").read_text())["model_metrics"]["counter"]
    by_name = {m["name"]: m["dimensions"] for m in declared}
    assert by_name[VERDICT_METRIC] == ["ModelName", "ModelVersion", "Level", "Verdict"]
    assert by_name[REJECT_METRIC] == ["ModelName", "ModelVersion", "Level", "Reason"]
    # TorchServe's own metrics are kept (metrics_config replaces the default file)
    default = yaml.safe_load(
        (Path(__import__("ts").__file__).parent / "configs" / "metrics.yaml").read_text()
    )
    ours = yaml.safe_load((sf.REPO_ROOT / "metrics.yaml").read_text())
    assert ours["ts_metrics"] == default["ts_metrics"] and ours["dimensions"] == default["dimensions"]


def test_request_tag_is_echoed_and_a_bad_one_is_refused(loaded, export_dir):
    handler, context = loaded
    data = sf.jpeg_bytes()
    context.new_batch(4)
    context.request_headers[0]["X-Request-Tag"] = "client-7:000042"
    context.request_headers[1]["x-request-tag"] = "lower.case_ok"
    context.request_headers[2]["X-Request-Tag"] = "has space"
    out = handler.handle([{"body": data}, {"body": b""}, {"body": data}, {"body": data}], context)
    assert_verdict(out[0], export_dir, data)
    assert context.response_headers[0]["X-Request-Tag"] == "client-7:000042"
    assert out[1]["status"] == 400 and context.response_headers[1]["X-Request-Tag"] == "lower.case_ok"
    assert out[2]["status"] == 400
    assert out[2]["error"] == (
        "X-Request-Tag header: 'has space' is not allowed; use 1-64 characters from A-Z, a-z, 0-9, '.', '_', ':', '-'"
    )
    assert "X-Request-Tag" not in context.response_headers.get(2, {})
    assert_verdict(out[3], export_dir, data)
    assert "X-Request-Tag" not in context.response_headers.get(3, {})
    too_long = "x" * 65
    context.new_batch(1)
    context.request_headers[0]["X-Request-Tag"] = too_long
    assert handler.handle([{"body": data}], context)[0]["status"] == 400


def test_metrics_failure_never_fails_the_batch(export_dir):
    handler, context = make_handler(export_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("metrics backend down")

    context.metrics.add_counter = broken
    out = run(handler, context, [{"body": sf.jpeg_bytes()}, {"body": b""}])
    assert set(out[0]) == RESULT_KEYS and out[1]["status"] == 400


def test_a_broken_evidence_map_turns_explanations_off_at_load(export_dir, tmp_path):
    """An explain that does not give [N, h, w] is found at load; verdicts still come, with the reason."""

    class BrokenMap(sf.TinyNet):
        def explain(self, x):
            return self.forward(x), x.mean()  # a scalar, not a map

    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    example = (torch.zeros(2, 3, sf.IMAGE_SIZE, sf.IMAGE_SIZE),)
    torch.jit.trace_module(BrokenMap().eval(), {"forward": example, "explain": example}).save(str(broken / "model.pt"))
    handler, context = make_handler(broken)
    assert handler.explainer is None
    context.new_batch(1)
    context.request_headers[0]["explain"] = "True"
    out = handler.handle([{"body": sf.jpeg_bytes()}], context)
    assert isinstance(out[0]["watermark"], bool) and out[0]["explanation"] is None
    assert "failed a check at load" in out[0]["explanation_error"]
