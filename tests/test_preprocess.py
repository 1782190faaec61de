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
    # numpy's buffers are traced: reading the pixels (16 MB at its peak), the uint8 result
    # (4 MB) and 8 MB of float64 scratch; the whole-image float64 formulas peaked at 92 MB
    assert peak < 30 * 2**20, peak
