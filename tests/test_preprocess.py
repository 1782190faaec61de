"""The one preprocessing definition: decoding any input, the tensor, the spec file."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handler.preprocess import (
    ImageDecodeError,
    PreprocessSpec,
    bytes_to_tensor,
    decode_image,
    image_to_tensor,
    load_image_file,
    resize_for_model,
)

SPEC = PreprocessSpec(image_size=75)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def red_left_image(mode: str = "RGB", size=(40, 20)) -> Image.Image:
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, : size[0] // 2] = (255, 0, 0)
    return Image.fromarray(arr, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(arr, "RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression-bomb probe)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "CMYK", "LA", "I;16", "1"])
def test_any_mode_becomes_rgb(mode: str) -> None:
    if mode == "I;16":
        arr = (np.linspace(0, 65535, 40 * 20).reshape(20, 40)).astype(np.uint16)
        image = Image.fromarray(arr)
        data = encode(image, "PNG")
    else:
        image = red_left_image(mode)
        data = encode(image, "JPEG" if mode == "CMYK" else "PNG")
    decoded = decode_image(data)
    assert decoded.mode == "RGB" and decoded.size == (40, 20)
    if mode == "I;16":
        values = np.asarray(decoded)[:, :, 0]
        assert values.min() < 10 and values.max() > 245  # 16-bit range scaled, not clipped


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    assert np.asarray(decode_image(encode(image, "PNG"))).min() == 255


def test_exif_orientation_is_applied() -> None:
    image = red_left_image(size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (20, 40)
    top = np.asarray(decoded)[:5].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 60  # red half now on top


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(decode_image(buf.getvalue()))[10, 10, 0] > 200


@pytest.mark.parametrize(
    "data, status, words",
    [
        (b"", 400, "empty"),
        (b"hello, I am text", 400, "not a decodable image"),
        (b"<html><body>hi</body></html>", 400, "not a decodable image"),
        (encode(Image.new("RGB", (1, 1)), "PNG"), 400, "too small"),
        (png_header_only(30_000, 30_000), 413, "pixels"),
    ],
)
def test_bad_inputs_get_clear_errors(data: bytes, status: int, words: str) -> None:
    with pytest.raises(ImageDecodeError, match=words) as info:
        decode_image(data, source="upload.bin")
    assert info.value.status == status
    assert "upload.bin" in str(info.value)


def test_truncated_jpeg_is_rejected() -> None:
    data = encode(Image.new("RGB", (300, 300), (10, 200, 30)), "JPEG")
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def test_tensor_matches_the_spec() -> None:
    image = Image.new("RGB", (120, 80), (255, 0, 128))
    tensor = image_to_tensor(image, SPEC)
    assert tensor.shape == (3, 75, 75) and tensor.dtype == torch.float32
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=1e-6)
    imagenet = PreprocessSpec.for_weights("imagenet", image_size=75)
    t2 = image_to_tensor(image, imagenet)
    assert torch.allclose(t2[0, 0, 0], torch.tensor((1.0 - 0.485) / 0.229), atol=1e-5)


def test_letterbox_keeps_aspect_and_pads() -> None:
    spec = PreprocessSpec(image_size=100, resize="letterbox", fill=0)
    out = resize_for_model(Image.new("RGB", (200, 100), (255, 255, 255)), spec)
    arr = np.asarray(out)
    assert out.size == (100, 100)
    assert arr[0, 50].max() == 0 and arr[50, 50].min() == 255  # padded top, content centre


def test_bytes_to_tensor_equals_file_path(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    red_left_image().save(path)
    a = bytes_to_tensor(path.read_bytes(), SPEC)
    b = image_to_tensor(load_image_file(path), SPEC)
    assert torch.equal(a, b)


def test_spec_roundtrip_and_validation(tmp_path: Path) -> None:
    spec = PreprocessSpec.for_weights("imagenet", image_size=598, resize="letterbox")
    path = tmp_path / "preprocess.json"
    path.write_text(json.dumps(spec.to_dict()))
    assert PreprocessSpec.load(path) == spec
    with pytest.raises(ValueError, match="resize='crop'"):
        PreprocessSpec(resize="crop")
    with pytest.raises(ValueError, match="image_size=10"):
        PreprocessSpec(image_size=10)
    path.write_text(json.dumps({"image_size": 299, "colour": "red"}))
    with pytest.raises(ValueError, match="colour"):
        PreprocessSpec.load(path)
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        PreprocessSpec.load(tmp_path / "nothere.json")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="nope.jpg"):
        load_image_file(tmp_path / "nope.jpg")


@pytest.mark.parametrize(
    ("fmt", "status", "words"),
    [
        ("PPM", 415, "Netpbm (PBM/PGM/PPM/PAM) images are not accepted"),
        ("ICO", 415, "ICO images are not accepted"),
        ("EPS", 415, "PostScript/EPS images are not accepted"),
        ("PDF", 415, "PDF images are not accepted"),
        ("SGI", 415, "SGI images are not accepted"),
        ("QOI", 415, "QOI images are not accepted"),
        ("DDS", 415, "DDS images are not accepted"),
        ("JPEG2000", 415, "JPEG 2000 images are not accepted"),
        ("PCX", 415, "PCX images are not accepted"),
        ("IM", 415, "IM images are not accepted"),
        ("TGA", 400, "not a decodable image (unrecognised format)"),
        ("SPIDER", 400, "not a decodable image (unrecognised format)"),
    ],
)
def test_formats_outside_the_allow_list_never_reach_a_decoder(fmt: str, status: int, words: str, monkeypatch) -> None:
    image = Image.new("L" if fmt == "SPIDER" else "RGB", (64, 48), 128)
    data = encode(image, fmt)
    if fmt != "PDF":  # Pillow writes PDF but has no reader for it
        assert Image.open(io.BytesIO(data)).format  # Pillow itself would open it
    opened: list[str] = []
    real_open = Image.open

    def spy(fp, mode="r", formats=None):
        opened.append(",".join(formats or ["any"]))
        return real_open(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, source="upload.bin")
    assert err.value.status == status and words in str(err.value)
    assert "upload.bin" in str(err.value) and "allowed are JPEG, PNG, WebP, GIF, BMP and TIFF" in str(err.value)
    assert err.value.reason == ("unsupported_format" if status == 415 else "undecodable")
    assert opened == ["JPEG,PNG,WEBP,GIF,BMP,TIFF"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"])
def test_allowed_formats_decode(fmt: str) -> None:
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    assert decode_image(encode(image, fmt)).size == (64, 48)


def test_long_decoder_messages_are_cut() -> None:
    data = encode(Image.new("RGB", (64, 48)), "PNG")
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data[:60] + b"x" * 5000, source="cut.png")
    assert len(str(err.value)) < 400


def _old_to_l(image: Image.Image) -> np.ndarray:
    """The whole-array float64 formulas to_rgb used before it worked in chunks."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        return np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
    return np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("mode", "values"),
    [
        ("I;16", np.arange(0, 65536, dtype=np.uint16)),
        ("I", np.arange(-300, 70000, 7, dtype=np.int32)),
        ("I", np.arange(0, 256, dtype=np.int32)),
        ("F", np.linspace(-0.1, 1.0, 50001, dtype=np.float32)),
        ("F", np.linspace(-5, 300, 50001, dtype=np.float32)),
    ],
)
def test_high_bit_depth_conversion_is_chunked_and_unchanged(mode: str, values: np.ndarray, monkeypatch) -> None:
    from handler import preprocess

    side = int(np.ceil(np.sqrt(values.size)))
    grid = np.resize(values, side * side).reshape(side, side)
    image = Image.frombytes(mode, (side, side), grid.astype("<u2").tobytes()) if mode == "I;16" else Image.fromarray(grid, mode)
    monkeypatch.setattr(preprocess, "CONVERT_CHUNK_PIXELS", side * 3)  # many chunks, a short last one
    got = np.asarray(preprocess.to_rgb(image))
    assert got.shape == (side, side, 3)
    assert np.array_equal(got[..., 0], _old_to_l(image)) and np.array_equal(got[..., 0], got[..., 2])


def test_sixteen_bit_conversion_needs_no_whole_image_float_copy() -> None:
    import tracemalloc

    from handler.preprocess import to_rgb

    image = Image.frombytes("I;16", (2000, 2000), np.full((2000, 2000), 40000, dtype="<u2").tobytes())  # 4 MP
    tracemalloc.start()
    try:
        to_rgb(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy's buffers are traced: the uint8 result and its copy into Pillow (4 MB each), one
    # band of rows read out (2 MB) and its float64 scratch (8 MB); the whole-image float64
    # formulas peaked at 92 MB
    assert peak < 30 * 2**20, peak


# --------------------------------------------------------------- memory and time bounds


def _budget_case(mode: str, fmt: str, side: int, **kw) -> bytes:
    fill = {"I;16": 40000, "F": 0.5}.get(mode, 0)  # P: index 0, the transparent one where asked
    return encode(Image.new(mode, (side, side), fill), fmt, **kw)


@pytest.mark.parametrize(
    ("mode", "fmt", "kw", "per_pixel"),
    [
        ("RGB", "PNG", {}, 4),
        ("L", "PNG", {}, 5),
        ("P", "GIF", {}, 5),
        ("P", "GIF", {"transparency": 0}, 9),
        ("I;16", "PNG", {}, 5),
        ("F", "TIFF", {}, 5),
        ("RGBA", "PNG", {}, 8),
        ("LA", "PNG", {}, 8),
        ("CMYK", "TIFF", {}, 8),
        ("RGB", "WEBP", {"lossless": True}, 16),
    ],
)
def test_memory_budget_by_mode(mode: str, fmt: str, kw: dict, per_pixel: int) -> None:
    """The per-image budget (4 bytes x max_pixels) admits fewer pixels for costlier modes."""
    from handler.preprocess import decode_budget, decode_cost, open_image

    max_pixels = 40_000  # budget 160,000 bytes
    fits = int((decode_budget(max_pixels) / per_pixel) ** 0.5)
    image = open_image(_budget_case(mode, fmt, fits, **kw), max_pixels=max_pixels)
    assert decode_cost(image) == fits * fits * per_pixel <= decode_budget(max_pixels)
    assert decode_image(_budget_case(mode, fmt, fits, **kw), max_pixels=max_pixels).size == (fits, fits)
    with pytest.raises(ImageDecodeError) as err:
        decode_image(_budget_case(mode, fmt, fits + 2, **kw), max_pixels=max_pixels, source="big.img")
    assert err.value.status == 413
    if per_pixel == 4:  # RGB fits the budget up to the pixel limit, which refuses it first
        assert err.value.reason == "too_many_pixels"
        return
    assert err.value.reason == "over_memory_budget"
    assert f"big.img: a {fits + 2}x{fits + 2} {fmt} image in mode {mode} needs about" in str(err.value)
    assert "at most 0.16 MB per image allowed" in str(err.value) and "40000 in RGB" in str(err.value)


def test_rotated_images_count_their_transposed_copy() -> None:
    from handler.preprocess import decode_cost, open_image

    exif = Image.Exif()
    exif[0x0112] = 6
    for fmt in ("JPEG", "PNG"):
        upright = open_image(encode(Image.new("L", (100, 80)), fmt))
        turned = open_image(encode(Image.new("L", (100, 80)), fmt, exif=exif.tobytes()))
        assert decode_cost(upright) == decode_cost(turned) == 100 * 80 * 5  # L: 1 + 1 < 1 + 4
        rgb = open_image(encode(Image.new("RGB", (100, 80)), fmt, exif=exif.tobytes()))
        assert decode_cost(rgb) == 100 * 80 * 8  # RGB: the decoded image and its transposed copy


def test_measured_peak_stays_within_the_estimate() -> None:
    """Decoding at the budget, in a fresh process: the real peak is the estimate plus small change."""
    from scripts.bench_inputs import measure_local

    spec = PreprocessSpec(image_size=299, max_pixels=6_000_000)  # budget 24 MB
    cases = {
        "RGBA PNG": _budget_case("RGBA", "PNG", 1700),
        "16-bit PNG": _budget_case("I;16", "PNG", 2150),
        "transparent GIF": _budget_case("P", "GIF", 1600, transparency=0),
        "WebP": _budget_case("RGB", "WEBP", 1200, lossless=True),
    }
    for name, data in cases.items():
        row = measure_local(data, spec)
        assert row["answer"] == "ok", (name, row)
        assert row["estimate"] > 20e6, (name, row)  # sized near the budget, well above the noise
        assert row["peak"] <= 1.15 * row["estimate"] + 12e6, (name, row)


def test_alpha_is_flattened_like_compositing_over_white() -> None:
    from handler.preprocess import flatten_to_rgb

    values, alphas = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    rgba = Image.fromarray(np.stack([values, 255 - values, values // 2, alphas], -1), "RGBA")
    for image in (rgba, rgba.convert("LA"), rgba.convert("RGBa")):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        reference = np.asarray(Image.alpha_composite(white, image.convert("RGBA")).convert("RGB"))
        assert np.array_equal(np.asarray(flatten_to_rgb(image)), reference), image.mode


def test_truncated_jpeg_claiming_a_large_size_is_refused() -> None:
    from scripts.bench_inputs import jpeg_claiming

    with pytest.raises(ImageDecodeError) as err:
        decode_image(jpeg_claiming(7000, 7000), source="bomb.jpg")
    assert err.value.status == 400 and err.value.reason == "undecodable"
    assert "bomb.jpg: truncated JPEG: a 7000x7000 JPEG has at least 95703 bytes" in str(err.value)
    # the bound holds for real encodings of flat images, baseline and progressive
    for kw in ({}, {"progressive": True}, {"quality": 5, "optimize": True}, {"progressive": True, "quality": 5}):
        flat = encode(Image.new("L", (4000, 3000), 255), "JPEG", **kw)
        assert decode_image(flat, draft_size=598).size == (1000, 750), kw


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_header_floods_are_refused_before_pillow_parses_them(fmt: str) -> None:
    from handler.preprocess import MAX_HEADER_STEPS
    from scripts.bench_inputs import header_flood

    assert decode_image(header_flood(fmt, 1000)).size == (64, 64)  # a long header is fine
    with pytest.raises(ImageDecodeError) as err:
        decode_image(header_flood(fmt, MAX_HEADER_STEPS + 10), source="flood")
    assert err.value.status == 400
    assert f"flood: {fmt} with more than {MAX_HEADER_STEPS} header markers, chunks or blocks" in str(err.value)


def test_run_length_bmp_is_refused() -> None:
    from scripts.bench_inputs import rle_bmp

    with pytest.raises(ImageDecodeError) as err:
        decode_image(rle_bmp(40, 30), source="rle.bmp")
    assert err.value.status == 415 and err.value.reason == "unsupported_format"
    assert "rle.bmp: run-length-compressed BMP images are not accepted" in str(err.value)
    assert decode_image(encode(Image.new("RGB", (40, 30)), "BMP")).size == (40, 30)


def test_only_the_first_frame_or_page_is_decoded() -> None:
    from scripts.bench_inputs import many_frames

    for fmt in ("GIF", "TIFF"):
        image = decode_image(many_frames(fmt, 300, 32))
        assert image.size == (32, 32) and image.getpixel((5, 5))[0] == 0, fmt


def test_decode_budget_bounds_parallel_decodes() -> None:
    """Reservations beyond the capacity wait; a batch never holds more than the capacity."""
    import threading
    import time

    from handler.preprocess import DecodeBudget

    budget = DecodeBudget(100)
    inside, most = [0], [0]
    lock = threading.Lock()

    def work(nbytes: int) -> None:
        charged = min(nbytes, budget.capacity)  # one image never waits for more than the whole
        with budget.reserve(nbytes):
            with lock:
                inside[0] += charged
                most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= charged

    threads = [threading.Thread(target=work, args=(n,)) for n in (60, 60, 30, 30, 500, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert most[0] <= 100 and budget.peak <= 100 and budget.in_use == 0
    with pytest.raises(ValueError, match="capacity"):
        DecodeBudget(0)
