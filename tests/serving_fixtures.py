"""Shared helpers for the serving tests (a plain module; tests/conftest.py is owned elsewhere).

* :func:`build_tiny_export` writes an export folder like training does (model.pt,
  preprocess.json, threshold.json, model_info.json) with a tiny traced conv net.
* ``*_bytes`` helpers make image bodies of many kinds, good and bad.
* :class:`FakeContext` is the small stand-in for ``ts.context.Context`` that the
  handler and ``BaseHandler`` read (cf. ts/torch_handler/unit_tests MockContext).
* :func:`free_port`, :func:`load_properties` help the integration test.
"""

from __future__ import annotations

import io
import json
import random
import socket
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from handler.preprocess import SPEC_FILE, PreprocessSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 75  # the smallest size PreprocessSpec allows
THRESHOLD = 0.37


# ----------------------------------------------------------------- tiny export
class TinyNet(torch.nn.Module):
    """Conv(3->4, k3, s4) -> ReLU -> global max pool -> Linear(4->1): logits [N, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=3, stride=4)
        self.pool = torch.nn.AdaptiveMaxPool2d(1)
        self.fc = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))

    def explain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the evidence map of the same pass, as the real model's ``explain``
        (``train.model.evidence_map`` of a max-pool head: the head's weights at every cell)."""
        features = torch.relu(self.conv(x))
        return self.fc(self.pool(features).flatten(1)), torch.einsum("c,nchw->nhw", self.fc.weight[0], features)


def build_tiny_export(
    export_dir: str | Path,
    *,
    threshold: float = THRESHOLD,
    image_size: int = IMAGE_SIZE,
    model_info: bool = True,
    seed: int = 0,
    explain: bool = True,
) -> Path:
    """Write model.pt (torch.jit.trace), preprocess.json, threshold.json [, model_info.json].

    With ``explain`` (the default) model.pt has the ``explain`` method exports have since
    explanations; ``explain=False`` writes a model as older exports were.
    """
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = TinyNet().eval()
    with torch.no_grad():
        net.fc.bias.fill_(-0.2)
        example = (torch.zeros(2, 3, image_size, image_size),)
        if explain:
            traced = torch.jit.trace_module(net, {"forward": example, "explain": example})
        else:
            traced = torch.jit.trace(net, example)
    traced.save(str(export_dir / "model.pt"))
    spec = PreprocessSpec.for_weights("tf-inception", image_size=image_size)
    (export_dir / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2), encoding="utf-8")
    (export_dir / "threshold.json").write_text(
        json.dumps({"threshold": threshold, "rule": "target-fpr", "target_fpr": 0.05}), encoding="utf-8"
    )
    if model_info:
        (export_dir / "model_info.json").write_text(
            json.dumps({"model_name": "watermark", "weights": "tiny-test", "metrics": {"auc": 0.5}}), encoding="utf-8"
        )
    return export_dir


def expected_probability(export_dir: str | Path, data: bytes) -> float:
    """sigmoid(model(image_to_tensor(decode_image(data)))) computed without the handler."""
    from handler.preprocess import decode_image, image_to_tensor, sigmoid

    export_dir = Path(export_dir)
    spec = PreprocessSpec.load(export_dir / SPEC_FILE)
    model = torch.jit.load(str(export_dir / "model.pt"), map_location="cpu").eval()
    tensor = image_to_tensor(decode_image(data, max_pixels=spec.max_pixels, draft_size=spec.draft_size), spec)
    with torch.no_grad():
        logit = model(tensor.unsqueeze(0)).reshape(-1)[0].item()
    return sigmoid(logit)


def manifest_for(model_name: str = "watermark", version: str = "1.0") -> dict[str, Any]:
    """What MAR-INF/MANIFEST.json holds for an archive built by scripts/create_mar.sh."""
    return {
        "runtime": "python",
        "model": {
            "modelName": model_name,
            "serializedFile": "model.pt",
            "handler": "watermark_handler.py",
            "modelVersion": version,
            "configFile": "model-config.yaml",
        },
        "archiverVersion": "0.12.0",
    }


# ------------------------------------------------------------------ image bytes
def _pattern(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)), (xx + yy) % 256], axis=-1)
    noise = rng.integers(0, 40, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def rgb_image(width: int = 120, height: int = 90, seed: int = 0) -> Image.Image:
    img = Image.fromarray(_pattern(width, height, seed), "RGB")
    # a bright "watermark" block in a corner so images differ meaningfully
    img.paste((255, 255, 255), (width - width // 4, height - height // 5, width - 2, height - 2))
    return img


def encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def other_format_bytes(fmt: str) -> bytes:
    """A valid image in a Pillow format outside the product's allow-list (PPM, ICO, EPS, TGA, ...)."""
    return encode(rgb_image(64, 48, 5), fmt)


def jpeg_bytes(width: int = 120, height: int = 90, seed: int = 0) -> bytes:
    return encode(rgb_image(width, height, seed), "JPEG", quality=90)


def png_bytes(width: int = 120, height: int = 90, seed: int = 0) -> bytes:
    return encode(rgb_image(width, height, seed), "PNG")


def rgba_png_bytes() -> bytes:
    img = rgb_image(100, 80, 1).convert("RGBA")
    alpha = Image.new("L", img.size, 255)
    alpha.paste(0, (0, 0, 40, 40))
    img.putalpha(alpha)
    return encode(img, "PNG")


def palette_png_bytes() -> bytes:
    img = rgb_image(100, 80, 2).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    return encode(img, "PNG", transparency=0)


def gray_png_bytes() -> bytes:
    return encode(rgb_image(100, 80, 3).convert("L"), "PNG")


def cmyk_jpeg_bytes() -> bytes:
    return encode(rgb_image(100, 80, 4).convert("CMYK"), "JPEG", quality=90)


def gray16_png_bytes() -> bytes:
    array = (np.linspace(0, 65535, 100 * 80).reshape(80, 100)).astype(np.uint16)
    img = Image.fromarray(array)  # uint16 -> mode I;16
    assert img.mode == "I;16", img.mode
    return encode(img, "PNG")


def exif_rotated_jpeg_bytes() -> bytes:
    """A 120x60 JPEG whose EXIF says 'rotate 90 CW' (orientation 6): upright it is 60x120."""
    img = rgb_image(120, 60, 5)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=90, exif=exif.tobytes())


def webp_or_gif_bytes() -> bytes:
    try:
        return encode(rgb_image(90, 90, 6), "WEBP")
    except (KeyError, OSError):
        return encode(rgb_image(90, 90, 6).convert("P"), "GIF")


def good_image_kinds() -> dict[str, bytes]:
    return {
        "jpeg": jpeg_bytes(),
        "png": png_bytes(seed=7),
        "rgba": rgba_png_bytes(),
        "palette": palette_png_bytes(),
        "gray": gray_png_bytes(),
        "cmyk": cmyk_jpeg_bytes(),
        "gray16": gray16_png_bytes(),
        "exif_rotated": exif_rotated_jpeg_bytes(),
        "webp_or_gif": webp_or_gif_bytes(),
        "bmp": encode(rgb_image(64, 64, 8), "BMP"),
        "tiff": encode(rgb_image(64, 64, 9), "TIFF"),
    }


def truncated_jpeg_bytes() -> bytes:
    data = jpeg_bytes(200, 150, 11)
    return data[: len(data) // 3]


def tiny_png_bytes() -> bytes:
    return encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def bomb_png_bytes(width: int = 30000, height: int = 30000) -> bytes:
    """A few hundred bytes whose (valid, CRC-correct) IHDR claims width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def html_bytes() -> bytes:
    return b"<!DOCTYPE html><html><head><title>shop</title></head><body><img src='x.jpg'></body></html>\n"


def corrupt_png_bytes() -> bytes:
    """A real PNG whose compressed pixel data is overwritten with junk (CRCs fixed up)."""
    data = bytearray(png_bytes(120, 90, 12))
    pos = data.index(b"IDAT")
    length = struct.unpack(">I", data[pos - 4 : pos])[0]
    junk = bytes((i * 37 + 11) % 256 for i in range(length))
    data[pos + 4 : pos + 4 + length] = junk
    data[pos + 4 + length : pos + 8 + length] = struct.pack(">I", zlib.crc32(b"IDAT" + junk) & 0xFFFFFFFF)
    return bytes(data)


def palette_gif_bytes() -> bytes:
    return encode(rgb_image(100, 80, 13).convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "GIF")


def animated_gif_frames() -> list[Image.Image]:
    """Three clearly different RGB frames (the first is what the server must judge)."""
    return [rgb_image(96, 96, 20 + i).rotate(90 * i) for i in range(3)]


def animated_gif_bytes() -> bytes:
    frames = [f.convert("P", palette=Image.Palette.ADAPTIVE, colors=64) for f in animated_gif_frames()]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def first_frame_png_bytes(data: bytes) -> bytes:
    """Frame 0 of an animated image, re-encoded losslessly (the reference for 'first frame')."""
    with Image.open(io.BytesIO(data)) as img:
        img.seek(0)
        return encode(img.convert("RGB"), "PNG")


def webp_bytes() -> bytes:
    return encode(rgb_image(90, 90, 6), "WEBP", quality=90)


def exif_upright_png_bytes(data: bytes | None = None) -> bytes:
    """The pixels of an EXIF-rotated JPEG turned upright by hand, saved as PNG (lossless).

    Same decoded JPEG pixels, so the server's verdict for the EXIF JPEG must equal this.
    """
    data = data if data is not None else exif_rotated_jpeg_bytes()
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.getexif().get(0x0112) == 6
        return encode(img.convert("RGB").transpose(Image.Transpose.ROTATE_270), "PNG")


def exif_ignored_png_bytes(data: bytes | None = None) -> bytes:
    """The same pixels with the EXIF orientation ignored (what a server that forgot it would see)."""
    data = data if data is not None else exif_rotated_jpeg_bytes()
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return encode(img.convert("RGB"), "PNG")


def bad_image_kinds() -> dict[str, tuple[bytes, int]]:
    """name -> (body, expected HTTP status)."""
    return {
        "empty": (b"", 400),
        "text": (b"hello, this is not an image\n", 400),
        "truncated_jpeg": (truncated_jpeg_bytes(), 400),
        "one_pixel_png": (tiny_png_bytes(), 400),
        "bomb_png": (bomb_png_bytes(), 413),
    }


# ---------------------------------------------------------------- fake context
class FakeMetrics:
    """Records what BaseHandler.handle() and @timed report."""

    def __init__(self) -> None:
        self.records: list[tuple] = []

    def add_time(self, name, value, idx=None, unit="ms", dimensions=None):
        self.records.append(("time", name, value, unit))

    def add_counter(self, name, value, idx=None, dimensions=None):
        dims = {d.name: d.value for d in dimensions or []}
        self.records.append(("counter", name, value, dims))

    def counters(self, name: str, label: str) -> dict[str, float]:
        """Sum of a counter by one dimension, e.g. counters("watermark_verdicts_total", "Verdict")."""
        totals: dict[str, float] = {}
        for rec in self.records:
            if rec[0] == "counter" and rec[1] == name:
                totals[rec[3][label]] = totals.get(rec[3][label], 0) + rec[2]
        return totals


class FakeContext:
    """Just what BaseHandler/WatermarkHandler read from ``ts.context.Context``.

    Per-index response statuses and headers are recorded the way
    ``RequestProcessor`` does it: default status 200 with no phrase.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        model_name: str = "watermark",
        version: str = "1.0",
        manifest: dict[str, Any] | None = None,
        model_yaml_config: dict[str, Any] | None = None,
    ) -> None:
        self.model_name = model_name
        self.manifest = manifest if manifest is not None else manifest_for(model_name, version)
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 8}
        self.model_yaml_config = model_yaml_config if model_yaml_config is not None else {}
        self.metrics = FakeMetrics()
        self.request_headers: list[dict[str, str]] = []
        self.statuses: dict[int, tuple[int, str | None]] = {}
        self.response_headers: dict[int, dict[str, str]] = {}

    def new_batch(self, size: int) -> None:
        """What Service.predict does before each batch: fresh per-request processors."""
        self.request_headers = [{} for _ in range(size)]
        self.statuses = {}
        self.response_headers = {}

    def get_request_header(self, idx: int, key: str):
        if idx < len(self.request_headers):
            return self.request_headers[idx].get(key)
        return None

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return dict(self.request_headers[idx]) if idx < len(self.request_headers) else {}

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.response_headers.setdefault(idx, {})[key] = value

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def get_response_status(self, idx: int) -> tuple[int, str | None]:
        return self.statuses.get(idx, (200, None))

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.response_headers.setdefault(idx, {})["content-type"] = value


# ------------------------------------------------------------- process helpers
# Below Linux's ephemeral range (32768-60999): a port handed out by bind(0) can be taken
# again as the local port of an outgoing connection before TorchServe binds it.
_PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that is free now, outside the ephemeral range, not given out before."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {_PORT_RANGE}")


def dump_properties(props: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in props.items())


def load_properties(path: str | Path) -> dict[str, str]:
    """``config.properties`` as a dict, parsed by the operators' script ``scripts/manage_models.py``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_ts_models_script", Path(__file__).resolve().parents[1] / "scripts" / "manage_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_properties(Path(path))

