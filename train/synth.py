"""Synthetic watermarks for marketplace product photos.

Seller photos are rejected when they carry a visible watermark: a shop name, an
Instagram/Telegram handle, a phone number or a URL, very often in Persian, often
faint, small, rotated or tiled. This module draws such marks onto clean photos so a
detector can be trained on (clean, watermarked) pairs.

Everything is a pure image function driven by a caller-supplied ``random.Random``:
the same seed, image and fonts give the same bytes. The look of a mark is organised
in named *style families* (:data:`STYLE_FAMILIES`); each is a function registered in
``_FAMILY_RENDERERS`` that returns the geometry of the mark (masks), after which
colour, opacity, compositing and an optional JPEG re-encode are shared.

Fonts are discovered lazily on first use (``fc-list``, the usual font folders,
``$WATERMARK_FONT_DIRS`` and matplotlib's bundled DejaVu fonts) and checked glyph by
glyph, so a font that would draw empty boxes ("tofu") for Persian is never used for
Persian text. Nothing is scanned at import time.
"""

from __future__ import annotations

import colorsys
import functools
import importlib.util
import io
import math
import os
import random
import subprocess
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageStat, features

__all__ = [
    "FAMILY_WEIGHTS",
    "SCRIPTS",
    "STYLE_FAMILIES",
    "TEXT_KINDS",
    "WatermarkInfo",
    "available_fonts",
    "jpeg_roundtrip",
    "render_watermark",
    "sample_text",
]

SCRIPTS = ("latin", "persian")
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
FONT_DIRS_ENV = "WATERMARK_FONT_DIRS"
DEFAULT_JPEG_PROB = 0.5
JPEG_QUALITY_RANGE = (70, 95)
MIN_FONT_PX = 7
# opacity * |luminance(mark) - luminance(background)| / 255 must reach this, so a mark
# is faint at worst but never invisible (about 18 grey levels on average).
MIN_VISIBILITY = 0.07

# --------------------------------------------------------------------------- text

_PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
_FA_SHOP_WORDS = (
    "فروشگاه", "گالری", "مزون", "بوتیک", "خانه", "دنیای", "پوشاک", "لوازم خانگی", "دکوراسیون",
    "مبلمان", "آرایشی", "عطر", "کیف و کفش", "تولیدی", "پخش", "جواهری", "ساعت", "کالای خواب",
    "سیسمونی", "اکسسوری", "شال و روسری", "چرم",
)  # fmt: skip
_FA_NAMES = (
    "آرا", "نیلوفر", "پارسا", "رز", "مهسا", "آوا", "ستاره", "الماس", "نگین", "سپید", "بهار",
    "پرنیان", "ماهان", "کیان", "ترمه", "شیدا", "یاس", "سارینا", "آریا", "پرستو", "مهرگان", "تینا",
    "دلارام", "گلستان", "نقش جهان", "پردیس", "آسمان", "ژینا", "چکاوک", "مروارید", "افرا",
)  # fmt: skip
_FA_TAGLINES = (
    "ارسال به سراسر کشور", "خرید آنلاین", "فروش عمده و تک", "کیفیت برتر", "تخفیف ویژه",
    "تضمین اصالت کالا", "ارسال رایگان", "سفارش در دایرکت", "تولید و پخش",
)  # fmt: skip
_FA_HANDLE_LABELS = ("اینستاگرام:", "آیدی تلگرام:", "پیج ما:", "کانال تلگرام:", "آیدی:", "ما را دنبال کنید")
_FA_PHONE_LABELS = ("تماس:", "تلفن:", "واتساپ:", "سفارش:", "")
_LATIN_NAMES = (
    "negin", "arya", "parsa", "rose", "mahsa", "ava", "setareh", "almas", "bahar", "kian", "termeh",
    "yas", "sarina", "niloofar", "mahan", "shida", "donya", "tara", "atlas", "persia", "parmis",
    "avin", "helia", "raha", "baran", "sepid", "mehr", "nika", "diba", "kimia",
)  # fmt: skip
_LATIN_SHOP_WORDS = (
    "shop", "gallery", "store", "mezon", "boutique", "decor", "home", "style", "collection", "mode",
    "design", "market", "lux",
)  # fmt: skip
_LATIN_LABELS = ("Instagram:", "IG:", "Telegram:", "ID:", "Follow", "Tel:", "Call:", "WhatsApp:")
_MOBILE_PREFIXES = (
    "10", "11", "12", "13", "14", "15", "16", "17", "18", "19", "01", "02", "03", "05", "30", "33",
    "35", "36", "37", "38", "39", "90", "91", "92", "93", "94", "98", "99",
)  # fmt: skip

TEXT_KINDS = (
    "persian_shop",  # فروشگاه نگین
    "latin_shop",  # NEGIN GALLERY
    "handle",  # @negin.shop
    "mixed_handle",  # اینستاگرام: @negin.shop
    "phone_fa",  # تماس: ۰۹۱۲ ۳۴۵ ۶۷۸۹
    "phone_latin",  # 0912-345-6789
    "url",  # www.negin.ir, t.me/negin_shop
    "two_line",  # shop name over a handle / phone / tagline
)
_LATIN_ONLY_KINDS = ("latin_shop", "handle", "phone_latin", "url")


def _ltr(text: str, rng: random.Random) -> str:
    """Isolate a left-to-right run inside Persian text (left raw now and then, as in real uploads)."""
    return f"\u2066{text}\u2069" if rng.random() < 0.8 else text


def _latin_slug(rng: random.Random) -> str:
    name = rng.choice(_LATIN_NAMES)
    word = rng.choice(_LATIN_SHOP_WORDS)
    sep = rng.choice((".", "_", "", "."))
    slug = rng.choice((f"{name}{sep}{word}", f"{word}{sep}{name}", name + rng.choice(("", "98", "_official", "1400"))))
    return slug


def _phone_digits(rng: random.Random) -> str:
    if rng.random() < 0.85:
        rest = "".join(str(rng.randrange(10)) for _ in range(7))
        digits = "09" + rng.choice(_MOBILE_PREFIXES) + rest  # 11 digits, 09xx xxx xxxx
        style = rng.randrange(5)
        if style == 0:
            return digits
        if style == 1:
            return f"{digits[:4]} {digits[4:7]} {digits[7:]}"
        if style == 2:
            return f"{digits[:4]}-{digits[4:7]}-{digits[7:]}"
        if style == 3:
            return f"+98 {digits[1:4]} {digits[4:7]} {digits[7:]}"
        return f"{digits[:4]} {digits[4:]}"
    area = rng.choice(("021", "031", "051", "071", "041", "026"))
    return f"{area}-{''.join(str(rng.randrange(10)) for _ in range(8))}"


def _make_text(kind: str, rng: random.Random) -> str:
    if kind == "persian_shop":
        text = f"{rng.choice(_FA_SHOP_WORDS)} {rng.choice(_FA_NAMES)}"
        return text if rng.random() < 0.85 else f"{text} {rng.choice(('شیک', 'لوکس', 'آنلاین', 'مرکزی', 'اصل'))}"
    if kind == "latin_shop":
        text = f"{rng.choice(_LATIN_NAMES).capitalize()} {rng.choice(_LATIN_SHOP_WORDS).capitalize()}"
        roll = rng.random()
        if roll < 0.35:
            return text.upper()
        if roll < 0.5:
            return f"© {text}"
        return text
    if kind == "handle":
        return "@" + _latin_slug(rng)
    if kind == "mixed_handle":
        handle = "@" + _latin_slug(rng)
        if rng.random() < 0.75:
            return f"{rng.choice(_FA_HANDLE_LABELS)} {_ltr(handle, rng)}"
        return f"{rng.choice(_LATIN_LABELS)} {handle}"
    if kind == "phone_fa":
        label = rng.choice(_FA_PHONE_LABELS)
        number = _phone_digits(rng).translate(_PERSIAN_DIGITS)
        return f"{label} {_ltr(number, rng)}" if label else number
    if kind == "phone_latin":
        number = _phone_digits(rng)
        return f"{rng.choice(('', '', 'Tel: ', 'Call ', 'WhatsApp '))}{number}"
    if kind == "url":
        slug = _latin_slug(rng).replace("_", "-").replace(".", "-")
        handle = _latin_slug(rng)
        return rng.choice(
            (
                f"www.{slug}.ir",
                f"{slug}.ir",
                f"www.{slug}.com",
                f"{slug}.shop",
                f"t.me/{handle}",
                f"instagram.com/{handle}",
                f"https://{slug}.ir",
            )
        )
    if kind == "two_line":
        first = _make_text(rng.choice(("persian_shop", "latin_shop")), rng)
        second = _make_text(rng.choice(("handle", "mixed_handle", "phone_fa", "phone_latin", "url")), rng)
        if _is_persian(first) and rng.random() < 0.3:
            second = rng.choice(_FA_TAGLINES)
        return f"{first}\n{second}"
    raise ValueError(f"text kind={kind!r}: allowed are {', '.join(TEXT_KINDS)}")


def sample_text(rng: random.Random, kind: str | None = None) -> tuple[str, str]:
    """Draw the content of a watermark.

    Args:
        rng: source of randomness.
        kind: one of :data:`TEXT_KINDS`, or None for a uniform choice.

    Returns:
        ``(kind, text)``; ``text`` may hold a newline (``two_line``).

    Raises:
        ValueError: ``kind`` is not in :data:`TEXT_KINDS`.
    """
    if kind is None:
        kind = rng.choice(TEXT_KINDS)
    elif kind not in TEXT_KINDS:
        raise ValueError(f"text kind={kind!r}: allowed are {', '.join(TEXT_KINDS)}")
    return kind, _make_text(kind, rng)


def _is_persian(text: str) -> bool:
    return any("\u0600" <= ch <= "\u06ff" or "\ufb50" <= ch <= "\ufeff" for ch in text)


# -------------------------------------------------------------------------- fonts

_LATIN_PROBE = "AaBbEeGgKkMmRrSsWwZz0123456789@._:/-©"
_PERSIAN_PROBE = "ابپتجچخدرزژسشصطعفقکگلمنوهی۰۱۲۳۴۵۶۷۸۹" + "abcxyz0123456789@._:/-"
_PROBES = {"latin": _LATIN_PROBE, "persian": _PERSIAN_PROBE}
# Symbol/math/placeholder families whose cmap covers ASCII with unrelated glyphs.
_DENY_NAME_PARTS = (
    "lastresort", "cmex", "cmsy", "cmmi", "stixsize", "stixnonuni", "math", "symbol", "dingbat", "emoji",
)  # fmt: skip


def _raqm() -> bool:
    return bool(features.check("raqm"))


def _font_candidates() -> list[Path]:
    """Every font file that might be usable, in a deterministic order."""
    found: list[Path] = []
    try:
        result = subprocess.run(
            ["fc-list", "--format", "%{file}\n"], capture_output=True, text=True, timeout=20, check=False
        )
        if result.returncode == 0:
            found.extend(Path(line.strip()) for line in result.stdout.splitlines() if line.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    dirs = [Path(p) for p in os.environ.get(FONT_DIRS_ENV, "").split(os.pathsep) if p]
    dirs += [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts",
             Path.home() / ".local/share/fonts"]  # fmt: skip
    try:  # matplotlib bundles DejaVu Sans (Latin + Arabic script); located without importing it
        spec = importlib.util.find_spec("matplotlib")
    except (ImportError, ValueError):  # pragma: no cover - matplotlib is a requirement
        spec = None
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf")
    for folder in dirs:
        if folder.is_dir():
            found.extend(p for p in folder.rglob("*") if p.is_file())
    unique: dict[str, Path] = {}
    for path in found:
        if path.suffix.lower() in FONT_SUFFIXES and path.is_file():
            unique.setdefault(str(path.resolve()), path.resolve())
    return sorted(unique.values(), key=str)


def _glyph_signature(font: ImageFont.FreeTypeFont, text: str) -> bytes | None:
    left, top, right, bottom = font.getbbox(text)
    if right <= left or bottom <= top:
        return None
    canvas = Image.new("L", (right - left, bottom - top))
    ImageDraw.Draw(canvas).text((-left, -top), text, font=font, fill=255)
    if canvas.getbbox() is None:
        return None
    return f"{canvas.size}".encode() + canvas.tobytes()


def _covers(font: ImageFont.FreeTypeFont, probe: str) -> bool:
    """True when every probe character has its own visible glyph (not .notdef)."""
    notdef = _glyph_signature(font, "\U0010fffd")
    seen = set()
    for ch in probe:
        sig = _glyph_signature(font, ch)
        if sig is None or sig == notdef:
            return False
        seen.add(sig)
    return len(seen) >= 0.9 * len(probe)  # placeholder fonts draw one glyph per block


@functools.lru_cache(maxsize=1)
def _font_index() -> dict[str, tuple[Path, ...]]:
    index: dict[str, list[Path]] = {script: [] for script in SCRIPTS}
    seen_names: set[tuple[str, str]] = set()
    layout = ImageFont.Layout.RAQM if _raqm() else ImageFont.Layout.BASIC
    for path in _font_candidates():
        if any(part in path.name.lower() for part in _DENY_NAME_PARTS):
            continue
        try:
            font = ImageFont.truetype(str(path), 24, layout_engine=layout)
            name = font.getname()
        except Exception:  # unreadable or unsupported font file
            continue
        key = (str(name[0]), str(name[1]))
        if key in seen_names or any(part in key[0].lower().replace(" ", "") for part in _DENY_NAME_PARTS):
            continue
        seen_names.add(key)
        for script in SCRIPTS:
            try:
                if _covers(font, _PROBES[script]):
                    index[script].append(path)
            except Exception:  # a broken font must not stop discovery
                continue
    return {script: tuple(paths) for script, paths in index.items()}


def available_fonts(script: str = "latin") -> list[Path]:
    """TrueType/OpenType fonts that draw every probe glyph of ``script``.

    Discovery runs once, on first call (``fc-list``, ``/usr/share/fonts``,
    ``/usr/local/share/fonts``, ``~/.fonts``, ``$WATERMARK_FONT_DIRS`` and matplotlib's
    bundled fonts); fonts are deduplicated by family and style and checked by
    rendering, so one without Persian glyphs is never listed for ``persian``.

    Args:
        script: ``latin`` or ``persian``.

    Returns:
        Font paths in a stable order (possibly empty).

    Raises:
        ValueError: ``script`` is not in :data:`SCRIPTS`.
    """
    if script not in SCRIPTS:
        raise ValueError(f"script={script!r}: allowed are {', '.join(SCRIPTS)}")
    return list(_font_index()[script])


@functools.lru_cache(maxsize=512)
def _load_font(path: str, size: int, raqm: bool) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if not path:
        return ImageFont.load_default(size)
    layout = ImageFont.Layout.RAQM if raqm else ImageFont.Layout.BASIC
    return ImageFont.truetype(path, size, layout_engine=layout)


# ------------------------------------------------------------------- info & types


@dataclass(frozen=True)
class WatermarkInfo:
    """What :func:`render_watermark` drew (JSON-serialisable via ``dataclasses.asdict``).

    Attributes:
        family: style family, one of :data:`STYLE_FAMILIES`.
        text: the text drawn (may contain a newline).
        opacity: layer opacity of the text, 0..1.
        rel_size: font size in pixels divided by the image width.
        kind: content kind, one of :data:`TEXT_KINDS`.
        script: ``persian`` when the text holds Arabic-script letters, else ``latin``.
        font: file name of the font (``pillow-default`` for Pillow's fallback font).
        color: RGB of the text.
        effect: ``none``, ``outline`` or ``shadow``.
        angle: rotation in degrees (counter-clockwise).
        bbox: ``(left, top, right, bottom)`` of every pixel the mark touches.
        box_opacity: opacity of the box or banner behind the text (``stamp`` only).
        jpeg_quality: quality of the final JPEG re-encode, or None when not re-encoded.
    """

    family: str
    text: str
    opacity: float
    rel_size: float
    kind: str
    script: str
    font: str
    color: tuple[int, int, int]
    effect: str
    angle: float
    bbox: tuple[int, int, int, int]
    box_opacity: float | None = None
    jpeg_quality: int | None = None


@dataclass
class _Style:
    text: str
    kind: str
    script: str
    font_path: str  # "" -> Pillow's default font
    size: int
    opacity: float
    color_mode: str
    effect: str
    stroke: int
    shadow_offset: tuple[int, int]


@dataclass
class _Mark:
    """Geometry of one mark: full-image 'L' masks; colours are chosen afterwards."""

    style: _Style
    fill: Image.Image
    outer: Image.Image  # fill dilated by the stroke
    shadow: Image.Image
    angle: float = 0.0
    box: Image.Image | None = None
    box_opacity: float | None = None


# ----------------------------------------------------------------- style sampling

# Relative font size (of the width), maximal text width (of the width), opacity range.
_SIZE = {
    "corner_text": (0.025, 0.07, 0.6),
    "center_text": (0.06, 0.16, 0.9),
    "tiled_text": (0.03, 0.07, 0.6),
    "stamp": (0.03, 0.08, 0.75),
    "random_text": (0.03, 0.12, 0.8),
}
_OPACITY = {
    "corner_text": (0.25, 0.75),
    "center_text": (0.15, 0.5),
    "tiled_text": (0.12, 0.35),
    "stamp": (0.55, 0.95),
    "random_text": (0.2, 0.7),
}
_KIND_WEIGHTS: dict[str, dict[str, float]] = {
    "corner_text": {
        "handle": 3, "mixed_handle": 1, "url": 1.5, "phone_fa": 1, "phone_latin": 1, "persian_shop": 2, "latin_shop": 1,
    },
    "center_text": {"persian_shop": 3, "latin_shop": 2, "handle": 2.5, "url": 1, "two_line": 1.5, "mixed_handle": 0.5},
    "tiled_text": {"handle": 3.5, "url": 2, "persian_shop": 2, "latin_shop": 1.5, "phone_latin": 0.5, "phone_fa": 0.5},
    "stamp": {"two_line": 3.5, "persian_shop": 2, "handle": 2, "phone_fa": 1, "phone_latin": 0.5, "url": 1},
    "random_text": {kind: 1.0 for kind in TEXT_KINDS},
}  # fmt: skip
_COLOR_MODES = {"white": 0.4, "black": 0.25, "grey": 0.15, "random": 0.2}
_EFFECTS = {"none": 0.55, "outline": 0.25, "shadow": 0.2}


def _weighted(rng: random.Random, table: dict[str, float]) -> str:
    keys = list(table)
    return rng.choices(keys, weights=[table[k] for k in keys], k=1)[0]


def _pick_text(rng: random.Random, family: str) -> tuple[str, str, str, str]:
    """Return (kind, text, script, font_path) with a font able to draw the text."""
    kind = _weighted(rng, _KIND_WEIGHTS[family])
    text = _make_text(kind, rng)
    if _is_persian(text):
        fonts = available_fonts("persian")
        reason = "no installed font draws Persian glyphs" if not fonts else ""
        if fonts and not _raqm():
            reason = "Pillow was built without raqm, so Persian would not be shaped"
        if not reason:
            return kind, text, "persian", str(rng.choice(fonts))
        warnings.warn(f"{reason}; drawing a Latin watermark instead", RuntimeWarning, stacklevel=5)
        kind = rng.choice(_LATIN_ONLY_KINDS)
        text = _make_text(kind, rng)
    fonts = available_fonts("latin")
    if not fonts:
        warnings.warn(
            "no installed TrueType font draws Latin glyphs; using Pillow's default font "
            f"(install fonts-dejavu-core or add a folder to ${FONT_DIRS_ENV})",
            RuntimeWarning,
            stacklevel=5,
        )
        return kind, text, "latin", ""
    return kind, text, "latin", str(rng.choice(fonts))


def _sample_style(rng: random.Random, family: str, width: int) -> tuple[_Style, ImageFont.FreeTypeFont]:
    kind, text, script, font_path = _pick_text(rng, family)
    low, high, max_width = _SIZE[family]
    rel = math.exp(rng.uniform(math.log(low), math.log(high)))
    size = max(MIN_FONT_PX, round(rel * width))
    raqm = _raqm()
    font = _load_font(font_path, size, raqm)
    left, _, right, _ = _text_bbox(text, font, 0)
    text_w = right - left
    if text_w > max_width * width:
        size = max(MIN_FONT_PX, int(size * max_width * width / text_w))
        font = _load_font(font_path, size, raqm)
    effect = _weighted(rng, _EFFECTS)
    stroke = max(1, round(size * rng.uniform(0.05, 0.1)))
    shift = max(1, round(size * rng.uniform(0.04, 0.09)))
    shadow_offset = (shift * rng.choice((1, 1, -1)), shift)
    style = _Style(
        text=text,
        kind=kind,
        script=script,
        font_path=font_path,
        size=size,
        opacity=rng.uniform(*_OPACITY[family]),
        color_mode=_weighted(rng, _COLOR_MODES),
        effect=effect,
        stroke=stroke,
        shadow_offset=shadow_offset,
    )
    return style, font


# ------------------------------------------------------------------ mask helpers


def _text_bbox(text: str, font: ImageFont.FreeTypeFont, stroke: int) -> tuple[int, int, int, int]:
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    box = probe.multiline_textbbox((0, 0), text, font=font, stroke_width=stroke, align="center")
    return tuple(int(round(v)) for v in box)  # type: ignore[return-value]


def _text_masks(text: str, font: ImageFont.FreeTypeFont, style: _Style) -> tuple[Image.Image, Image.Image, Image.Image]:
    """Tight (fill, outer, shadow) masks of one text block, all the same size."""
    left, top, right, bottom = _text_bbox(text, font, style.stroke)
    dx, dy = style.shadow_offset
    blur = max(0.0, style.size / 30)
    pad = style.stroke + max(abs(dx), abs(dy)) + int(3 * blur) + 2
    size = (right - left + 2 * pad, bottom - top + 2 * pad)
    origin = (pad - left, pad - top)
    fill, outer, shadow = (Image.new("L", size) for _ in range(3))
    ImageDraw.Draw(fill).multiline_text(origin, text, font=font, fill=255, align="center")
    ImageDraw.Draw(outer).multiline_text(
        origin, text, font=font, fill=255, align="center", stroke_width=style.stroke, stroke_fill=255
    )
    ImageDraw.Draw(shadow).multiline_text((origin[0] + dx, origin[1] + dy), text, font=font, fill=255, align="center")
    if blur >= 0.5:
        shadow = shadow.filter(ImageFilter.GaussianBlur(blur))
    return fill, outer, shadow


def _rotate(masks: Sequence[Image.Image], angle: float) -> list[Image.Image]:
    if abs(angle) < 0.01:
        return list(masks)
    return [m.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True) for m in masks]


def _place(masks: Sequence[Image.Image], size: tuple[int, int], xy: tuple[int, int]) -> list[Image.Image]:
    placed = []
    for mask in masks:
        canvas = Image.new("L", size)
        canvas.paste(mask, xy)
        placed.append(canvas)
    return placed


def _corner_xy(rng: random.Random, size: tuple[int, int], mark: tuple[int, int], margin: float) -> tuple[int, int]:
    width, height = size
    w, h = mark
    gap_x, gap_y = round(margin * width), round(margin * height)
    corner = _weighted(rng, {"br": 0.35, "bl": 0.2, "tr": 0.17, "tl": 0.17, "bc": 0.11})
    x = {"l": gap_x, "r": width - w - gap_x, "c": (width - w) // 2}[corner[1]]
    y = gap_y if corner[0] == "t" else height - h - gap_y
    return x, y


def _random_xy(rng: random.Random, size: tuple[int, int], mark: tuple[int, int]) -> tuple[int, int]:
    span_x, span_y = size[0] - mark[0], size[1] - mark[1]
    x = rng.randint(min(0, span_x), max(0, span_x))
    y = rng.randint(min(0, span_y), max(0, span_y))
    return x, y


# ---------------------------------------------------------------------- families


def _family_corner_text(image: Image.Image, rng: random.Random) -> _Mark:
    style, font = _sample_style(rng, "corner_text", image.width)
    angle = 0.0 if rng.random() < 0.85 else rng.uniform(-8, 8)
    masks = _rotate(_text_masks(style.text, font, style), angle)
    xy = _corner_xy(rng, image.size, masks[0].size, rng.uniform(0.0, 0.05))
    fill, outer, shadow = _place(masks, image.size, xy)
    return _Mark(style, fill, outer, shadow, angle)


def _family_center_text(image: Image.Image, rng: random.Random) -> _Mark:
    style, font = _sample_style(rng, "center_text", image.width)
    roll = rng.random()
    angle = 0.0 if roll < 0.45 else rng.uniform(-45, 45) if roll < 0.8 else rng.choice((30.0, 45.0, -30.0, -45.0))
    masks = _rotate(_text_masks(style.text, font, style), angle)
    w, h = masks[0].size
    jitter_x, jitter_y = (round(rng.uniform(-0.06, 0.06) * d) for d in image.size)
    xy = ((image.width - w) // 2 + jitter_x, (image.height - h) // 2 + jitter_y)
    fill, outer, shadow = _place(masks, image.size, xy)
    return _Mark(style, fill, outer, shadow, angle)


def _family_random_text(image: Image.Image, rng: random.Random) -> _Mark:
    style, font = _sample_style(rng, "random_text", image.width)
    angle = 0.0 if rng.random() < 0.5 else rng.uniform(-40, 40)
    masks = _rotate(_text_masks(style.text, font, style), angle)
    fill, outer, shadow = _place(masks, image.size, _random_xy(rng, image.size, masks[0].size))
    return _Mark(style, fill, outer, shadow, angle)


def _family_tiled_text(image: Image.Image, rng: random.Random) -> _Mark:
    style, font = _sample_style(rng, "tiled_text", image.width)
    if style.effect == "shadow":
        style.effect = "none"
    tile = _text_masks(style.text, font, style)
    tile_w, tile_h = tile[0].size
    angle = rng.choice((1, -1)) * rng.uniform(20, 45) if rng.random() < 0.85 else 0.0
    side = int(math.hypot(*image.size)) + 2 * max(tile_w, tile_h)
    step_x = tile_w + max(4, round(rng.uniform(0.3, 1.2) * tile_w))
    step_y = tile_h + max(4, round(rng.uniform(0.8, 3.0) * tile_h))
    stagger = rng.choice((0.0, 0.5))
    phase_x, phase_y = rng.randrange(step_x), rng.randrange(step_y)
    canvases = [Image.new("L", (side, side)) for _ in tile]
    for row, y in enumerate(range(-phase_y, side, step_y)):
        offset = round(stagger * step_x * (row % 2))
        for x in range(-phase_x - offset, side, step_x):
            for canvas, mask in zip(canvases, tile):
                canvas.paste(mask, (x, y))
    if abs(angle) >= 0.01:
        canvases = [c.rotate(angle, resample=Image.Resampling.BICUBIC) for c in canvases]
    left, top = (side - image.width) // 2, (side - image.height) // 2
    fill, outer, shadow = (c.crop((left, top, left + image.width, top + image.height)) for c in canvases)
    return _Mark(style, fill, outer, shadow, angle)


def _family_stamp(image: Image.Image, rng: random.Random) -> _Mark:
    style, font = _sample_style(rng, "stamp", image.width)
    if style.effect == "outline":
        style.effect = "none"  # a box already separates the text from the photo
    fill, outer, shadow = _text_masks(style.text, font, style)
    pad_x = max(2, round(style.size * rng.uniform(0.3, 0.8)))
    pad_y = max(2, round(style.size * rng.uniform(0.15, 0.45)))
    text_w, text_h = fill.size
    if rng.random() < 0.65:  # rounded box around the text
        box_size = (text_w + 2 * pad_x, text_h + 2 * pad_y)
        radius = round(rng.uniform(0.0, 0.5) * box_size[1])
        box = Image.new("L", box_size)
        ImageDraw.Draw(box).rounded_rectangle((0, 0, box_size[0] - 1, box_size[1] - 1), radius=radius, fill=255)
        masks = [box] + _place((fill, outer, shadow), box_size, (pad_x, pad_y))
        angle = 0.0 if rng.random() < 0.8 else rng.uniform(-12, 12)
        masks = _rotate(masks, angle)
        where = _weighted(rng, {"corner": 0.6, "center": 0.2, "random": 0.2})
        if where == "corner":
            xy = _corner_xy(rng, image.size, masks[0].size, rng.uniform(0.0, 0.05))
        elif where == "center":
            xy = ((image.width - masks[0].width) // 2, (image.height - masks[0].height) // 2)
        else:
            xy = _random_xy(rng, image.size, masks[0].size)
        box, fill, outer, shadow = _place(masks, image.size, xy)
    else:  # banner strip across the whole width
        angle = 0.0
        band_h = text_h + 2 * pad_y
        top = 0 if rng.random() < 0.3 else image.height - band_h
        if rng.random() < 0.3:
            top += (1 if top == 0 else -1) * round(rng.uniform(0.0, 0.1) * image.height)
        box = Image.new("L", image.size)
        ImageDraw.Draw(box).rectangle((0, top, image.width, top + band_h - 1), fill=255)
        align = rng.choice(("center", "center", "left", "right"))
        x = {"center": (image.width - text_w) // 2, "left": pad_x, "right": image.width - text_w - pad_x}[align]
        fill, outer, shadow = _place((fill, outer, shadow), image.size, (x, top + pad_y))
    return _Mark(style, fill, outer, shadow, angle, box=box, box_opacity=rng.uniform(0.25, 0.6))


_FAMILY_RENDERERS: dict[str, Callable[[Image.Image, random.Random], _Mark]] = {
    "corner_text": _family_corner_text,
    "center_text": _family_center_text,
    "tiled_text": _family_tiled_text,
    "stamp": _family_stamp,
    "random_text": _family_random_text,
}
STYLE_FAMILIES: tuple[str, ...] = tuple(_FAMILY_RENDERERS)
# Relative frequency of each family when several are allowed (roughly as in real uploads).
FAMILY_WEIGHTS: dict[str, float] = {
    "corner_text": 0.3,
    "center_text": 0.2,
    "tiled_text": 0.15,
    "stamp": 0.15,
    "random_text": 0.2,
}

# ----------------------------------------------------------------- colour/compose


def _luma(rgb: Sequence[int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _base_color(rng: random.Random, mode: str) -> tuple[int, int, int]:
    if mode == "white":
        v = rng.randint(235, 255)
        return (v, v, v)
    if mode == "black":
        v = rng.randint(0, 30)
        return (v, v, v)
    if mode == "grey":
        v = rng.randint(90, 200)
        return (v, v, v)
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def _scaled(mask: Image.Image, factor: float) -> Image.Image:
    factor = min(1.0, max(0.0, factor))
    return mask.point([round(v * factor) for v in range(256)])


def _layer(size: tuple[int, int], color: tuple[int, int, int], alpha: Image.Image) -> Image.Image:
    layer = Image.new("RGBA", size, (*color, 0))
    layer.putalpha(alpha)
    return layer


def _median_contrast(gray: Image.Image, where: Image.Image, color: tuple[int, int, int]) -> float:
    """Median |luminance(color) - luminance(photo)| over the pixels of ``where``."""
    diff = ImageChops.difference(gray, Image.new("L", gray.size, round(_luma(color))))
    return float(ImageStat.Stat(diff, mask=where).median[0])


def _compose(image: Image.Image, mark: _Mark, rng: random.Random) -> tuple[Image.Image, tuple[int, int, int], float]:
    """Choose colours (keeping the mark visible) and composite; returns (image, colour, opacity)."""
    style = mark.style
    color = _base_color(rng, style.color_mode)
    effect = style.effect
    opacity = style.opacity
    stroke_color = (20, 20, 20) if _luma(color) > 127 else (245, 245, 245)
    box_color = (0, 0, 0)
    if mark.box is not None:  # the box separates text from photo: contrast with box + photo
        box_opacity = mark.box_opacity or 0.0
        box_color = (0, 0, 0) if _luma(color) > 127 else (255, 255, 255)
        if rng.random() < 0.25:
            box_color = _base_color(rng, "random" if _luma(color) > 127 else "white")
        under = ImageStat.Stat(image.convert("L"), mask=mark.box).mean[0] if mark.box.getbbox() else 128.0

        def behind(box: tuple[int, int, int]) -> float:
            return box_opacity * _luma(box) + (1 - box_opacity) * under

        if abs(_luma(color) - behind(box_color)) < 110:
            box_color = max(((0, 0, 0), (255, 255, 255)), key=lambda c: abs(_luma(color) - behind(c)))
        if abs(_luma(color) - behind(box_color)) < 110:
            color = (255, 255, 255) if behind(box_color) < 128 else (0, 0, 0)
        visible = abs(_luma(color) - behind(box_color))
        if opacity * visible < 80:
            opacity = min(1.0, 80 / max(visible, 1.0))
    else:
        where = mark.fill.point([255 if v > 127 else 0 for v in range(256)])
        if where.getbbox() is not None:
            gray = image.convert("L")
            visible = _median_contrast(gray, where, color)
            best = max(((255, 255, 255), (0, 0, 0)), key=lambda c: _median_contrast(gray, where, c))
            if visible < 70:
                if rng.random() < 0.7 or effect == "shadow":
                    color = best  # most sellers pick a colour that shows ...
                elif effect == "none":
                    effect = "outline"  # ... or outline a low-contrast one
                stroke_color = (20, 20, 20) if _luma(color) > 127 else (245, 245, 245)
                visible = _median_contrast(gray, where, color)
            if effect == "outline":
                visible = max(visible, 0.6 * _median_contrast(gray, where, stroke_color))
            if visible < 30:
                color = best
                visible = _median_contrast(gray, where, color)
            if opacity * visible / 255 < MIN_VISIBILITY:
                opacity = min(0.9, MIN_VISIBILITY * 255 / max(visible, 1.0) + 0.02)

    size = image.size
    text_layer = Image.new("RGBA", size, (*color, 0))
    if effect == "shadow":
        shadow_color = (0, 0, 0) if _luma(color) > 90 else (255, 255, 255)
        text_layer.alpha_composite(_layer(size, shadow_color, _scaled(mark.shadow, 0.75)))
    if effect == "outline":
        text_layer.alpha_composite(_layer(size, stroke_color, mark.outer))
    text_layer.alpha_composite(_layer(size, color, mark.fill))
    text_layer.putalpha(_scaled(text_layer.getchannel("A"), opacity))

    out = image.convert("RGBA")
    if mark.box is not None:
        out.alpha_composite(_layer(size, box_color, _scaled(mark.box, mark.box_opacity or 0.0)))
    out.alpha_composite(text_layer)
    style.effect = effect
    return out.convert("RGB"), color, opacity


# --------------------------------------------------------------------- public API


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """Encode ``image`` as JPEG at ``quality`` and decode it again (as an upload would).

    Args:
        image: any Pillow image; it is converted to RGB.
        quality: JPEG quality, 1..100.

    Returns:
        A new RGB image of the same size.

    Raises:
        ValueError: ``quality`` outside 1..100.
    """
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality={quality!r}: allowed is an integer in 1..100")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _check_families(families: Sequence[str] | None) -> tuple[str, ...]:
    if families is None:
        return STYLE_FAMILIES
    chosen = (families,) if isinstance(families, str) else tuple(families)
    if not chosen:
        raise ValueError(f"families is empty: allowed are {', '.join(STYLE_FAMILIES)}")
    unknown = [f for f in chosen if f not in _FAMILY_RENDERERS]
    if unknown:
        raise ValueError(f"unknown watermark style family {unknown[0]!r}: allowed are {', '.join(STYLE_FAMILIES)}")
    return chosen


def render_watermark(
    image: Image.Image,
    rng: random.Random,
    *,
    families: Sequence[str] | None = None,
    jpeg_prob: float = DEFAULT_JPEG_PROB,
) -> tuple[Image.Image, WatermarkInfo]:
    """Draw one synthetic watermark onto a copy of ``image``.

    Args:
        image: the clean photo (any mode; it is not modified).
        rng: source of all randomness; the same state gives the same output bytes.
        families: style families to choose from (see :data:`STYLE_FAMILIES`), sampled
            by :data:`FAMILY_WEIGHTS`; None allows all of them.
        jpeg_prob: probability of a final JPEG re-encode at quality 70..95. Pass 0 when
            the caller re-encodes clean and watermarked images alike (so that JPEG
            history cannot tell them apart).

    Returns:
        ``(watermarked RGB image of the same size, WatermarkInfo)``.

    Raises:
        ValueError: an unknown or empty family list, or ``jpeg_prob`` outside 0..1.
    """
    allowed = _check_families(families)
    if not 0.0 <= jpeg_prob <= 1.0:
        raise ValueError(f"jpeg_prob={jpeg_prob!r}: allowed is a number in 0..1")
    base = image.convert("RGB")
    if base is image:  # pragma: no cover - convert() always copies, but be explicit
        base = image.copy()
    family = rng.choices(allowed, weights=[FAMILY_WEIGHTS.get(f, 1.0) for f in allowed], k=1)[0]
    mark = _FAMILY_RENDERERS[family](base, rng)
    out, color, opacity = _compose(base, mark, rng)
    quality = None
    if rng.random() < jpeg_prob:
        quality = rng.randint(*JPEG_QUALITY_RANGE)
        out = jpeg_roundtrip(out, quality)
    union = mark.fill
    extra = {"outline": mark.outer, "shadow": mark.shadow}.get(mark.style.effect)
    for mask in (extra, mark.box):
        if mask is not None:
            union = ImageChops.lighter(union, mask)
    bbox = union.getbbox() or (0, 0, 0, 0)
    style = mark.style
    info = WatermarkInfo(
        family=family,
        text=style.text,
        opacity=round(opacity, 4),
        rel_size=round(style.size / base.width, 4),
        kind=style.kind,
        script=style.script,
        font=Path(style.font_path).name if style.font_path else "pillow-default",
        color=color,
        effect=style.effect,
        angle=round(float(mark.angle), 2),
        bbox=tuple(int(v) for v in bbox),  # type: ignore[arg-type]
        box_opacity=None if mark.box_opacity is None else round(mark.box_opacity, 4),
        jpeg_quality=quality,
    )
    return out, info
