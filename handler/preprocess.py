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
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager
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
    "over_memory_budget",  # decoding would take more than decode_budget() bytes (413)
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


# The decode budget is what the largest allowed RGB image takes (Pillow stores RGB in 4 bytes).
BYTES_PER_PIXEL_BUDGET = 4


def decode_budget(max_pixels: int) -> int:
    """Bytes one image may hold while it is decoded and converted: ``4 * max_pixels``
    (200 MB at the default 50 MP), i.e. an RGB image at the pixel limit just fits; modes
    that cost more per pixel (alpha, CMYK, WebP's decode buffer) fit fewer pixels."""
    return BYTES_PER_PIXEL_BUDGET * max_pixels


# Pillow's storage per pixel by mode (modes not listed take 4 bytes: RGB, RGBA, LA, CMYK, ...).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}
_RGB_BYTES = 4
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# WebP decodes into a separate buffer that is then copied into the image: measured 16 bytes per
# pixel in all for an RGB WebP (scripts/bench_inputs.py).
_WEBP_DECODE_BYTES = 12
_ORIENTATION_TAG = 0x0112


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation known before the pixels are read (1 when none or unreadable).

    A PNG's eXIf chunk counts only when it precedes the image data (Pillow reads it at open).
    """
    try:
        if image.format == "PNG":
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = image.getexif()
        value = exif.get(_ORIENTATION_TAG, 1)
        return value if isinstance(value, int) else 1
    except Exception:  # a broken EXIF block is ignored here as in exif_transpose
        return 1


def decode_cost(image: Image.Image) -> int:
    """Peak bytes that decoding ``image`` (opened, not loaded) and converting it to RGB take.

    Each step of :func:`decode_image` holds its input and its output at once: the decoded
    image, an EXIF transposition (same mode), the 8-bit step of 16-bit/float images and the
    RGB result (alpha is flattened by pasting onto white: source + result). The figures per
    mode are Pillow's storage; ``scripts/bench_inputs.py`` measures the real peaks.
    """
    width, height = image.size
    mode = image.mode
    stored = _STORED_BYTES.get(mode, 4)
    if mode == "RGB":
        per_pixel = stored
    elif mode in _WIDE_MODES:
        per_pixel = max(stored + 1, 1 + _RGB_BYTES)  # -> 8-bit grey (chunked), then grey -> RGB
    elif (mode == "P" and "transparency" in image.info) or mode in ("PA", "La", "RGBa"):
        per_pixel = stored + 4 + _RGB_BYTES  # -> RGBA, then pasted onto a white RGB canvas
    else:  # 1, L, opaque P: + RGB; LA, RGBA: pasted onto RGB; CMYK, YCbCr, LAB, ...: + RGB
        per_pixel = stored + _RGB_BYTES
    if _orientation(image) != 1:
        per_pixel = max(per_pixel, 2 * stored)  # transposed in its own mode before conversion
    if image.format == "WEBP":
        per_pixel = max(per_pixel, stored + _WEBP_DECODE_BYTES)
    return width * height * per_pixel


class DecodeBudget:
    """Bytes that decodes running at the same time may hold together (threads of one batch).

    ``reserve(nbytes)`` waits until the estimate fits beside the decodes already running,
    so a batch of large images decodes partly in sequence instead of all at once; one image
    never waits for more than the whole capacity.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity!r}: must be a positive number of bytes")
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0  # the most bytes reserved at once so far (tests and logs read it)
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = min(max(0, nbytes), self.capacity)
        with self._changed:
            self._changed.wait_for(lambda: self.in_use + nbytes <= self.capacity)
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= nbytes
                self._changed.notify_all()


# Arithmetic-coded JPEG frames (SOF9-11, 13-15): no lower bound on their size below.
_ARITHMETIC_SOF = tuple(bytes((0xFF, marker)) for marker in (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def jpeg_min_bytes(width: int, height: int) -> int:
    """Fewest bytes a complete Huffman-coded JPEG of this size can have.

    Every 8x8 luminance block is coded with at least one bit (its DC difference, in the
    first scan whether baseline or progressive), so a 7000x7000 JPEG needs ~96 KB; a smaller
    one is truncated (libjpeg would invent the missing rows instead of failing).
    """
    return math.ceil(width / 8) * math.ceil(height / 8) // 8


def _decode_error(exc: Exception, data: bytes, source: str, max_pixels: int) -> ImageDecodeError:
    """The ImageDecodeError (status, reason, message) for an exception raised by Pillow."""
    if isinstance(exc, ImageDecodeError):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        # Pillow refuses > 2x its own limit inside Image.open(); its message has the count
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"{int(claimed.group(1))} pixels, " if claimed else ""
        return ImageDecodeError(
            f"{source}: image too large ({what}beyond Pillow's decompression-bomb limit); "
            f"at most {max_pixels} pixels allowed",
            status=413,
            reason="too_many_pixels",
        )
    if isinstance(exc, UnidentifiedImageError):
        other = sniff_format(data)
        if other is not None:
            return ImageDecodeError(
                f"{source}: {other} images are not accepted; allowed are {ALLOWED_TEXT}",
                status=415,
                reason="unsupported_format",
            )
        return ImageDecodeError(f"{source}: not a decodable image (unrecognised format); allowed are {ALLOWED_TEXT}")
    detail = str(exc)[:200]  # a decoder message can quote the input; keep it short
    return ImageDecodeError(
        f"{source}: not a decodable image ({type(exc).__name__}: {detail}); allowed are {ALLOWED_TEXT}"
    )


# Pillow parses the headers of JPEG (markers up to the first scan), PNG (every chunk) and GIF
# (blocks before the first frame) in Python, one step per marker, chunk, sub-block or stray
# byte: 20 MB of tiny ones held a worker for 2-4.5 s. Walking them here first, with a cap,
# costs milliseconds; real photos have a few dozen (a 20 MB PNG in 8 KB chunks: 2,560).
MAX_HEADER_STEPS = 50_000


def _jpeg_steps(data: bytes, cap: int) -> int:
    """Markers, fill bytes and stray bytes from the start of a JPEG to its first scan."""
    pos, steps, size = 2, 0, len(data)
    while pos + 4 <= size and steps <= cap:
        steps += 1
        if data[pos] != 0xFF:  # stray byte: Pillow skips it, one at a time
            pos += 1
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in (0xDA, 0xD9):  # start of scan (the C decoder takes over), end of image
            break
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return steps


def _png_steps(data: bytes, cap: int) -> int:
    """Chunks of a PNG up to IEND (Pillow reads the ones after the image data too)."""
    pos, steps, size = 8, 0, len(data)
    while pos + 8 <= size and steps <= cap:
        steps += 1
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
    return steps


def _gif_steps(data: bytes, cap: int) -> int:
    """Extension blocks and their sub-blocks before a GIF's first frame."""
    if len(data) < 13:
        return 0
    flags = data[10]
    pos = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    steps, size = 0, len(data)
    while pos < size and data[pos] == 0x21 and steps <= cap:  # extension introducer
        pos += 2
        steps += 1
        while pos < size and data[pos] != 0 and steps <= cap:
            pos += 1 + data[pos]
            steps += 1
        pos += 1
    return steps


_STEP_WALKERS = (
    (b"\xff\xd8", "JPEG", _jpeg_steps),
    (b"\x89PNG\r\n\x1a\n", "PNG", _png_steps),
    (b"GIF8", "GIF", _gif_steps),
)


def check_header_steps(data: bytes, source: str = "input", cap: int = MAX_HEADER_STEPS) -> None:
    """Refuse (400) a JPEG, PNG or GIF whose header takes more than ``cap`` parsing steps."""
    for signature, name, walk in _STEP_WALKERS:
        if data.startswith(signature):
            if walk(data, cap) > cap:
                raise ImageDecodeError(
                    f"{source}: {name} with more than {cap} header markers, chunks or blocks "
                    f"(real photos have a few dozen); allowed are {ALLOWED_TEXT}"
                )
            return


def open_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "input", draft_size: int | None = None
) -> Image.Image:
    """Identify ``data`` and read its header only (no pixels): the checks that cost nothing.

    Refuses empty data, formats outside :data:`ALLOWED_FORMATS` (no other decoder is tried)
    and run-length BMPs, headers of more than :data:`MAX_HEADER_STEPS` steps, more than
    ``max_pixels`` pixels, sides under :data:`MIN_SIDE`, JPEGs too short for their size
    (:func:`jpeg_min_bytes`) and images whose decoding would take more than
    :func:`decode_budget` bytes (:func:`decode_cost`). Selects the JPEG draft scale.
    """
    if not data:
        raise ImageDecodeError(
            f"{source}: empty body; send the bytes of a {ALLOWED_TEXT.replace(' and ', ' or ')} image", reason="empty"
        )
    check_header_steps(data, source)
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below replaces Pillow's global warning level
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Exception as exc:  # PIL raises many types for corrupt data
        raise _decode_error(exc, data, source, max_pixels) from None
    if image.format == "BMP" and image.tile and image.tile[0][0] == "bmp_rle":
        raise ImageDecodeError(
            f"{source}: run-length-compressed BMP images are not accepted (Pillow decodes them in "
            f"slow Python; BMP is accepted uncompressed); allowed are {ALLOWED_TEXT}",
            status=415,
            reason="unsupported_format",
        )
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{source}: {width}x{height} = {width * height} pixels; at most {max_pixels} allowed",
            status=413,
            reason="too_many_pixels",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageDecodeError(
            f"{source}: {width}x{height} is too small; each side must be >= {MIN_SIDE} px", reason="too_small"
        )
    if image.format == "JPEG":
        needed = jpeg_min_bytes(width, height)
        if len(data) < needed and not any(marker in data[:65536] for marker in _ARITHMETIC_SOF):
            raise ImageDecodeError(
                f"{source}: truncated JPEG: a {width}x{height} JPEG has at least {needed} bytes, this one "
                f"{len(data)}; allowed are {ALLOWED_TEXT}"
            )
        if draft_size is not None and min(width, height) >= 2 * draft_size:
            image.draft(image.mode if image.mode in ("L", "RGB", "CMYK") else "RGB", (draft_size, draft_size))
    cost, budget = decode_cost(image), decode_budget(max_pixels)
    if cost > budget:
        width, height = image.size
        raise ImageDecodeError(
            f"{source}: a {width}x{height} {image.format} image in mode {image.mode} needs about "
            f"{cost / 1e6:.3g} MB to decode; at most {budget / 1e6:.3g} MB per image allowed "
            f"(about {budget * width * height // cost} pixels in this mode, {max_pixels} in RGB)",
            status=413,
            reason="over_memory_budget",
        )
    return image


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "input", draft_size: int | None = None
) -> Image.Image:
    """Decode bytes into an upright 8-bit RGB image: :func:`open_image`, then :func:`load_rgb`.

    Any mode becomes RGB (transparency is composited on white, 16-bit is scaled
    down, CMYK is converted); EXIF orientation is applied; animated and multi-page
    images give their first frame only (the others are never decoded). With
    ``draft_size`` a JPEG is decoded at the largest DCT reduction (1/2, 1/4, 1/8) that
    keeps both sides >= ``draft_size`` (:attr:`PreprocessSpec.draft_size`); the pixel
    limit applies to the full size.

    Only the :data:`ALLOWED_FORMATS` decoders are ever tried (training, prediction and
    serving all come here, so they accept the same files), and only after the header
    checks of :func:`open_image`, memory included.

    Raises:
        ImageDecodeError: empty or undecodable data, truncated JPEGs (400), a format
            outside the allow-list (415, naming it when its leading bytes are known), more
            than ``max_pixels`` pixels or more than the memory budget (413), or a side
            shorter than 8 pixels (400). ``source`` names the input in the message.
    """
    # no local name for the opened image: load_rgb holds the only reference and can free it
    return load_rgb(open_image(data, max_pixels=max_pixels, source=source, draft_size=draft_size), data,
                    source=source, max_pixels=max_pixels)


def load_rgb(
    image: Image.Image, data: bytes, *, source: str = "input", max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode the pixels of an image from :func:`open_image` (``data``: its bytes, to name a
    format in errors) and make it upright 8-bit RGB, one step at a time so that each
    intermediate is freed before the next is made (peak: :func:`decode_cost`). Pass the
    only reference to ``image``: one the caller keeps stays in memory until the end."""
    try:
        image.load()
    except Exception as exc:  # PIL raises many types for corrupt data
        raise _decode_error(exc, data, source, max_pixels) from None
    try:
        ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
    except Exception:  # a broken EXIF block must not reject an otherwise fine photo
        pass
    image = to_8bit(image)
    return flatten_to_rgb(image)


CONVERT_CHUNK_PIXELS = 1 << 20  # float64 scratch of a 16-bit or float conversion: 8 MB at a time


def _to_uint8(image: Image.Image, divisor: float, scale: float, offset: float) -> np.ndarray:
    """``uint8(clip(pixels / divisor * scale + offset, 0, 255))`` of a one-band image,
    computed in float64 a band of rows at a time (rows are cropped out of the image, so
    neither a whole-image array copy nor a whole-image float64 buffer is ever made)."""
    width, height = image.size
    out = np.empty((height, width), dtype=np.uint8)
    rows = max(1, CONVERT_CHUNK_PIXELS // max(1, width))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        chunk = np.asarray(image.crop((0, top, width, bottom))).astype(np.float64)
        chunk /= divisor  # in place: one scratch buffer, the same arithmetic as the formula
        chunk *= scale
        chunk += offset
        np.clip(chunk, 0, 255, out=chunk)
        out[top:bottom] = chunk  # truncates like astype(np.uint8)
    return out


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer or float images to 8-bit grey ("L"); other modes as they are.

    Integer images scale their range (65535, or 255 when an ``I`` image stays within it) to
    0-255 with rounding; float images scale 0-1 (or 0-255) with truncation.
    """
    if image.mode not in _WIDE_MODES:
        return image
    _low, high = image.getextrema()
    if image.mode == "F":
        return Image.fromarray(_to_uint8(image, 1.0, 255.0 if high <= 1.0 else 1.0, 0.0), "L")
    peak = 65535.0 if image.mode.startswith("I;16") or high > 255 else 255.0
    return Image.fromarray(_to_uint8(image, peak, 255.0, 0.5), "L")


def flatten_to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit image of any mode to RGB; transparent pixels become white.

    Alpha is flattened by pasting onto a white RGB canvas through the alpha band: the same
    values as compositing over opaque white, with one image-sized buffer instead of three.
    """
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("PA", "RGBa", "La"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image)
        return canvas
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (:func:`to_8bit`, then :func:`flatten_to_rgb`)."""
    return flatten_to_rgb(to_8bit(image))


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


def content_box(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """Where a ``width`` x ``height`` image lands in the model input: ``(left, top, right, bottom)``
    in model pixels (the whole square when squashed; the centred, padded rectangle otherwise)."""
    size = spec.image_size
    if spec.resize == "squash":
        return 0, 0, size, size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = (size - new_w) // 2, (size - new_h) // 2
    return left, top, left + new_w, top + new_h


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
    left, top, right, bottom = content_box(*image.size, spec)
    resized = image.resize((right - left, bottom - top), resample=resample, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), (spec.fill,) * 3)
    canvas.paste(resized, (left, top))
    return canvas


def upright_size(data: bytes) -> tuple[int, int]:
    """Width and height of an image as shown (EXIF orientation applied), from its header only."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


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
