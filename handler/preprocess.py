"""The one definition of how an image becomes the tensor the model sees.

Training evaluation, prediction, export checks and the TorchServe handler all call
this module, driven by a :class:`PreprocessSpec` that is saved next to the exported
model (``preprocess.json``) and travels inside the ``.mar``. Nothing here imports
training code; it needs only numpy, Pillow and torch.
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

SPEC_FILE = "preprocess.json"
RESIZE_POLICIES = ("squash", "letterbox")
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
TF_INCEPTION_MEAN = (0.5, 0.5, 0.5)  # scales [0, 1] to [-1, 1]
TF_INCEPTION_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_PIXELS = 50_000_000  # decompression-bomb guard: 50 MP covers any phone photo
MIN_SIDE = 8

# The image formats the product accepts, as Pillow names them; no other decoder ever runs
# (Pillow knows ~40 more, some with slow pure-Python decoders, EPS calls Ghostscript).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
ALLOWED_TEXT = "JPEG, PNG, WebP, GIF, BMP and TIFF"
# Leading bytes of common formats outside the allow-list, only to name them in the answer.
OTHER_SIGNATURES = (
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"SIMPLE  =", "FITS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"Image type:", "IM"),
    (b"\x0a\x05\x01", "PCX"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"),
    (b"\x01\xda", "SGI"),
    (b"icns", "ICNS"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"#?RADIANCE", "HDR"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
)


# Machine-readable reasons an input is refused (metric labels; keep them stable).
REJECT_REASONS = (
    "empty",  # no bytes at all
    "undecodable",  # not an image, or a truncated/corrupt one
    "too_small",  # a side under MIN_SIDE pixels
    "too_many_pixels",  # more than max_pixels (decompression bomb)
    "unreadable",  # a file that cannot be read
    "unsupported_format",  # an image format outside ALLOWED_FORMATS (415)
)


class ImageDecodeError(ValueError):
    """An input that is not a usable image.

    ``status`` is the HTTP code to answer with; ``reason`` a short stable label for
    metrics (one of :data:`REJECT_REASONS`, or a caller's own such as the handler's).
    """

    def __init__(self, message: str, status: int = 400, reason: str = "undecodable") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class PreprocessSpec:
    """How to turn any image into the model input.

    Attributes:
        image_size: side of the square input in pixels (299 for Inception V3; the
            network is fully convolutional, so larger sizes such as 598 also work).
        resize: ``squash`` resizes the whole image to a square (nothing is cropped
            away: watermarks sit in corners); ``letterbox`` keeps the aspect ratio and
            pads with ``fill``.
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel divisor after subtracting ``mean``.
        interpolation: ``bilinear`` or ``bicubic``.
        fill: grey level (0-255) of letterbox padding.
        max_pixels: images with more pixels are refused (decompression bombs).
        jpeg_draft: decode JPEGs at a reduced scale (libjpeg's DCT scaling: 1/2, 1/4
            or 1/8) that still leaves at least twice ``image_size`` on each side, then
            resize as usual. A 12-megapixel photo then decodes several times faster;
            the resize that follows is antialiased either way. Bundles written before
            this option existed load with ``False`` and keep their exact behaviour.
    """

    image_size: int = 299
    resize: str = "squash"
    mean: tuple[float, float, float] = TF_INCEPTION_MEAN
    std: tuple[float, float, float] = TF_INCEPTION_STD
    interpolation: str = "bilinear"
    fill: int = 128
    max_pixels: int = DEFAULT_MAX_PIXELS
    jpeg_draft: bool = True
    version: int = field(default=1)

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or not 75 <= self.image_size <= 2048:
            raise ValueError(f"image_size={self.image_size!r}: allowed is an integer in 75..2048")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize={self.resize!r}: allowed are {', '.join(RESIZE_POLICIES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation={self.interpolation!r}: allowed are {', '.join(INTERPOLATIONS)}"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
                raise ValueError(f"{name}={values!r}: allowed is a list of three numbers")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std={self.std!r}: every value must be > 0")
        if not 0 <= self.fill <= 255:
            raise ValueError(f"fill={self.fill!r}: allowed is 0..255")
        if self.max_pixels < MIN_SIDE * MIN_SIDE:
            raise ValueError(f"max_pixels={self.max_pixels!r}: must be at least {MIN_SIDE**2}")
        if not isinstance(self.jpeg_draft, bool):
            raise ValueError(f"jpeg_draft={self.jpeg_draft!r}: allowed are true and false")

    @property
    def draft_size(self) -> int | None:
        """The smallest side a JPEG may be decoded to (None: always full size)."""
        return 2 * self.image_size if self.jpeg_draft else None

    @classmethod
    def for_weights(cls, normalization: str, **overrides: Any) -> PreprocessSpec:
        """Spec whose normalisation matches a weight family (``tf-inception`` or ``imagenet``)."""
        table = {
            "tf-inception": (TF_INCEPTION_MEAN, TF_INCEPTION_STD),
            "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
        }
        if normalization not in table:
            raise ValueError(f"normalization={normalization!r}: allowed are {', '.join(table)}")
        mean, std = table[normalization]
        return cls(mean=mean, std=std, **overrides)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys {unknown}: allowed are {sorted(known)}")
        values = dict(data)
        values.setdefault("jpeg_draft", False)  # specs saved before the option: full decode, as then
        for name in ("mean", "std"):
            if name in values:
                values[name] = tuple(float(v) for v in values[name])
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> PreprocessSpec:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: preprocessing spec not found") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None


def sniff_format(data: bytes) -> str | None:
    """Name of a known format *outside* the allow-list that ``data`` starts with, else None.

    Only reads leading bytes; no decoder runs. Netpbm (``P1``-``P7``) and ISO-BMFF
    (HEIF/AVIF, ``ftyp`` at offset 4) are recognised by shape.
    """
    head = data[:32]
    for signature, name in OTHER_SIGNATURES:
        if head.startswith(signature):
            return name
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in b" \t\r\n":
        return "Netpbm (PBM/PGM/PPM/PAM)"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace").strip()
        return f"ISO media ({brand or 'unknown brand'}: HEIF/AVIF/video)"
    return None


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "input", draft_size: int | None = None
) -> Image.Image:
    """Decode bytes into an upright 8-bit RGB image.

    Any mode becomes RGB (transparency is composited on white, 16-bit is scaled
    down, CMYK is converted); EXIF orientation is applied; animated images give
    their first frame. With ``draft_size`` a JPEG is decoded at the largest DCT
    reduction (1/2, 1/4, 1/8) that keeps both sides >= ``draft_size``
    (:attr:`PreprocessSpec.draft_size`); the pixel limit applies to the full size.

    Only the :data:`ALLOWED_FORMATS` decoders are ever tried (training, prediction and
    serving all come here, so they accept the same files).

    Raises:
        ImageDecodeError: empty or undecodable data (400), a format outside the
            allow-list (415, naming it when its leading bytes are known), more than
            ``max_pixels`` pixels (413), or a side shorter than 8 pixels (400).
            ``source`` names the input in the message.
    """
    if not data:
        raise ImageDecodeError(
            f"{source}: empty body; send the bytes of a {ALLOWED_TEXT.replace(' and ', ' or ')} image", reason="empty"
        )
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below replaces Pillow's global warning level
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"{source}: {width}x{height} = {width * height} pixels; at most {max_pixels} allowed",
                    status=413,
                    reason="too_many_pixels",
                )
            if draft_size is not None and image.format == "JPEG" and min(width, height) >= 2 * draft_size:
                image.draft(image.mode if image.mode in ("L", "RGB", "CMYK") else "RGB", (draft_size, draft_size))
            image.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses > 2x its own limit inside Image.open(); its message has the count
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"{int(claimed.group(1))} pixels, " if claimed else ""
        raise ImageDecodeError(
            f"{source}: image too large ({what}beyond Pillow's decompression-bomb limit); "
            f"at most {max_pixels} pixels allowed",
            status=413,
            reason="too_many_pixels",
        ) from None
    except UnidentifiedImageError:
        other = sniff_format(data)
        if other is not None:
            raise ImageDecodeError(
                f"{source}: {other} images are not accepted; allowed are {ALLOWED_TEXT}",
                status=415,
                reason="unsupported_format",
            ) from None
        raise ImageDecodeError(f"{source}: not a decodable image (unrecognised format); allowed are {ALLOWED_TEXT}") from None
    except Exception as exc:  # PIL raises many types for corrupt data
        detail = str(exc)[:200]  # a decoder message can quote the input; keep it short
        raise ImageDecodeError(
            f"{source}: not a decodable image ({type(exc).__name__}: {detail}); allowed are {ALLOWED_TEXT}"
        ) from None
    if min(image.size) < MIN_SIDE:
        raise ImageDecodeError(
            f"{source}: {image.size[0]}x{image.size[1]} is too small; each side must be >= {MIN_SIDE} px",
            reason="too_small",
        )
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not reject an otherwise fine photo
        pass
    return to_rgb(image)


CONVERT_CHUNK_PIXELS = 1 << 20  # float64 scratch of a 16-bit or float conversion: 8 MB at a time


def _to_uint8(array: np.ndarray, divisor: float, scale: float, offset: float) -> np.ndarray:
    """``uint8(clip(array / divisor * scale + offset, 0, 255))`` computed in float64 a few rows at a
    time, so a 16-bit or float image never gets a whole-image float64 copy (8 bytes per
    pixel, several times over); same values as the whole-array formula."""
    out = np.empty(array.shape, dtype=np.uint8)
    rows = max(1, CONVERT_CHUNK_PIXELS // max(1, array.shape[1] if array.ndim > 1 else 1))
    for start in range(0, array.shape[0], rows):
        chunk = array[start : start + rows].astype(np.float64)
        chunk /= divisor  # in place: one scratch buffer, the same arithmetic as the formula
        chunk *= scale
        chunk += offset
        np.clip(chunk, 0, 255, out=chunk)
        out[start : start + rows] = chunk  # truncates like astype(np.uint8)
    return out


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent pixels become white.

    16-bit and 32-bit integer images scale their range (65535, or 255 when an ``I`` image
    stays within it) to 0-255 with rounding; float images scale 0-1 (or 0-255) with
    truncation. Both are computed in bounded chunks (:func:`_to_uint8`).
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(_to_uint8(array, peak, 255.0, 0.5), "L")
    elif image.mode == "F":
        array = np.asarray(image)
        image = Image.fromarray(_to_uint8(array, 1.0, 255.0 if array.max() <= 1.0 else 1.0, 0.0), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def load_image_file(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Read and decode one image file (errors name the file); see :func:`decode_image`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read ({exc.strerror or exc})", reason="unreadable") from None
    return decode_image(data, max_pixels=max_pixels, source=str(path), draft_size=draft_size)


def resize_for_model(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Resize an RGB image to ``spec.image_size`` squared by the spec's policy."""
    size = spec.image_size
    resample = INTERPOLATIONS[spec.interpolation]
    if image.mode != "RGB":
        image = to_rgb(image)
    if spec.resize == "squash":
        if image.size == (size, size):
            return image
        return image.resize((size, size), resample=resample, reducing_gap=3.0)
    width, height = image.size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = image.resize((new_w, new_h), resample=resample, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), (spec.fill,) * 3)
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


def image_to_tensor(image: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """RGB image -> normalised float tensor ``[3, S, S]`` as the model expects.

    One copy out of Pillow, one float conversion, one fused multiply-add per channel:
    ``(x / 255 - mean) / std == x * (1 / (255 std)) - mean / std``.
    """
    resized = resize_for_model(image, spec)
    array = np.array(resized, dtype=np.uint8)  # writable copy, so torch shares it
    tensor = torch.from_numpy(array).permute(2, 0, 1).to(torch.float32)
    scale = torch.tensor([1.0 / (255.0 * s) for s in spec.std], dtype=torch.float32).view(3, 1, 1)
    offset = torch.tensor([m / s for m, s in zip(spec.mean, spec.std)], dtype=torch.float32).view(3, 1, 1)
    return torch.addcmul(-offset, tensor, scale).contiguous()


def bytes_to_tensor(data: bytes, spec: PreprocessSpec, *, source: str = "input") -> torch.Tensor:
    """Decode + resize + normalise in one call (what the handler does per request)."""
    return image_to_tensor(decode_image(data, max_pixels=spec.max_pixels, source=source, draft_size=spec.draft_size), spec)


def sigmoid(logit: float) -> float:
    """Numerically safe logistic function for one logit."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)
