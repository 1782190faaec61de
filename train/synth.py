"""Synthetic watermarks, and scene-text hard negatives, for marketplace product photos.

Seller photos are rejected when they carry a visible watermark: a shop name, an
Instagram/Telegram handle, a phone number or a URL, very often in Persian, often
faint, small, rotated or tiled, sometimes a semi-transparent logo or a social-network
glyph followed by a handle. This module draws such marks onto clean photos so a
detector can be trained on (clean, watermarked) pairs, and draws *scene text* (product
labels, print on the object, price tags, box faces) that must NOT be flagged.

Everything is a pure image function driven by a caller-supplied ``random.Random``:
the same seed, image and fonts give the same bytes. The look of a mark is organised
in named *style families* (:data:`STYLE_FAMILIES`); each is a function registered in
``_FAMILY_RENDERERS`` that returns the geometry of the mark (masks, or an RGBA logo),
after which colour, opacity, compositing and an optional JPEG re-encode are shared.

Families
    ``corner_text``, ``center_text``, ``random_text``; ``tiled_text`` (a full grid of
    repeated text); ``diagonal_tiled`` (one to three sparse rows of repeated text across
    the photo, usually diagonal); ``stamp`` (text on a box or a banner strip); ``logo``
    (semi-transparent RGBA logo: a procedural badge, circle/rounded rectangle/shield/
    hexagon/diamond/seal with initials or a short shop name and optional ring text, or
    an RGBA image shipped by a package, or any image passed as ``logos=``);
    ``icon_handle`` (a social-network glyph, Font Awesome when installed, followed by a
    handle, phone number, URL or e-mail; one or two rows).

Ranges
    opacity 0.08..0.8 (a fifth of the non-stamp marks are *faint*: 0.08..0.2, with a
    lower visibility floor, :data:`FAINT_MIN_VISIBILITY`; the others keep the floor
    :data:`MIN_VISIBILITY`); size from ~2 % (small corner text) to ~60 % of the width
    (centred logos); colour, outline, shadow; placement corner, edge, centre, tiling,
    random, rotated; then an optional JPEG re-encode.

Style splits (``render_watermark(..., split=...)``, :data:`STYLE_SPLITS`)
    ``train`` and ``heldout`` are disjoint pools, ``any`` (the default) is their union.
    Training data must use ``train``; ``heldout`` measures generalisation to marks whose
    fonts, logos, icons and placements were never seen. Held out are:

    * fonts (:func:`font_pool`): font files are grouped by design family (``Noto Sans``
      and ``Noto Sans Display`` are one group; weights and styles stay together) and a
      group is held out when ``sha256("font-group:" + name) % 3 == 0``. Groups are then
      moved (lowest hash first) until each pool has at least one Latin-capable and one
      Persian-capable font. When that is impossible by family (e.g. only DejaVu is
      installed) the same rule runs per font file (DejaVuSans.ttf vs -Bold.ttf ...).
      Scene text (hard negatives) uses the same font pools.
    * logos (:func:`logo_pool`): badge shapes ``circle``, ``rounded_rect``, ``shield``
      and matplotlib's ``logo2.png`` / ``matplotlib_large.png`` are train; badge shapes
      ``hexagon``, ``diamond``, ``seal`` and scikit-image's ``logo.png`` are held out.
      Images passed as ``logos=`` are the caller's business (used for any split).
    * icons (:func:`icon_pool`): Font Awesome instagram, telegram, phone, globe (or the
      symbols ☎ ✉ ★) are train; whatsapp, envelope, shopping-cart (✆ ♥ ✓) held out.
    * placements (:func:`placement_pool`): a placement is a position rule plus an angle
      band. Train: ``corner``, ``bottom_center``, ``center_upright``, ``center_diag``,
      ``random_upright``, ``random_diag``, ``tiled_horizontal``, ``tiled_diag``,
      ``rows_diag``, ``banner_top``, ``banner_bottom``; angles |a| <= 6 deg (upright)
      or 25..40 deg (diag). Held out: ``edge_middle`` (middle of the top, left or right
      edge; side ones often turned 90 deg), ``center_shallow``, ``center_steep``,
      ``random_shallow``, ``random_steep``, ``tiled_shallow``, ``tiled_steep``,
      ``rows_shallow``, ``rows_steep``, ``banner_middle``; angles 10..22 deg (shallow),
      45..70 deg (steep) or 90 deg. No train angle band meets a held-out one.

    Text content, colours, effects, opacity and size ranges are shared by both pools.
    :class:`WatermarkInfo` records ``font``, ``placement``, ``logo``, ``icon`` and
    ``split`` for every mark.

Hard negatives (:func:`render_scene_text`, :data:`HARD_NEGATIVE_KINDS`)
    Opaque text that belongs to the scene, labelled negative: ``product_label`` (paper
    or coloured label with brand, Persian product name, weight/volume, ingredient lines
    and a fake barcode), ``printed_text`` (ink printed on the object itself, bent round
    a cylinder, waved or in perspective), ``price_tag`` (sticker with a price) and
    ``box_face`` (a box side with a big brand name). They are placed on the object area
    found in the photo (never at the border), perspective-warped, lit by the photo's own
    low-frequency luminance, slightly blurred and shadowed, and opaque (alpha 1).

Fonts are discovered lazily on first use (``fc-list``, the usual font folders,
``$WATERMARK_FONT_DIRS`` and matplotlib's bundled DejaVu fonts) and checked glyph by
glyph, so a font that would draw empty boxes ("tofu") is never used for a text it
cannot draw, and a font is Persian-capable only when raqm actually joins its letters.
``scripts/setup_fonts.sh`` installs Noto, farsiweb, DejaVu and Font Awesome on Debian.
Nothing is scanned at import time.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import importlib.util
import io
import math
import os
import random
import subprocess
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageStat, features

__all__ = [
    "FAMILY_WEIGHTS",
    "HARD_NEGATIVE_KINDS",
    "SCRIPTS",
    "STYLE_FAMILIES",
    "STYLE_SPLITS",
    "TEXT_KINDS",
    "SceneTextInfo",
    "WatermarkInfo",
    "available_fonts",
    "font_pool",
    "icon_pool",
    "jpeg_roundtrip",
    "logo_pool",
    "placement_pool",
    "prepare_logo",
    "render_scene_text",
    "render_watermark",
    "sample_text",
    "style_pools",
]

SCRIPTS = ("latin", "persian")
STYLE_SPLITS = ("train", "heldout", "any")
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
FONT_DIRS_ENV = "WATERMARK_FONT_DIRS"
DEFAULT_JPEG_PROB = 0.5
JPEG_QUALITY_RANGE = (70, 95)
MIN_FONT_PX = 7
# opacity * |luminance(mark) - luminance(background)| / 255 must reach this, so a mark
# is faint at worst but never invisible (about 18 grey levels on average).
MIN_VISIBILITY = 0.07
# Faint marks (FAINT_PROB of the non-stamp marks, opacity FAINT_OPACITY) only need
# about 11 grey levels: hard to see, but there.
FAINT_PROB = 0.2
FAINT_OPACITY = (0.08, 0.2)
FAINT_MIN_VISIBILITY = 0.045
HELDOUT_FONT_SHARE = 3  # one font group in three is held out (before balancing)

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
_MAIL_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "chmail.ir", "mail.ir")

TEXT_KINDS = (
    "persian_shop",  # فروشگاه نگین
    "latin_shop",  # NEGIN GALLERY
    "handle",  # @negin.shop
    "mixed_handle",  # اینستاگرام: @negin.shop
    "phone_fa",  # تماس: ۰۹۱۲ ۳۴۵ ۶۷۸۹
    "phone_latin",  # 0912-345-6789
    "url",  # www.negin.ir, t.me/negin_shop
    "two_line",  # shop name over a handle / phone / tagline
    "email",  # negin.shop@gmail.com
)
_LATIN_ONLY_KINDS = ("latin_shop", "handle", "phone_latin", "url")
# Latin kind used instead of a Persian one when no Persian font can be used.
_LATIN_STAND_IN = {
    "persian_shop": "latin_shop", "mixed_handle": "handle", "phone_fa": "phone_latin", "two_line": "latin_shop",
}  # fmt: skip


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
    if kind == "email":
        return f"{_latin_slug(rng).replace('_', '.')}@{rng.choice(_MAIL_DOMAINS)}"
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


def _check_split(split: str) -> str:
    if split not in STYLE_SPLITS:
        raise ValueError(f"unknown style split {split!r}: allowed are {', '.join(STYLE_SPLITS)}")
    return split


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


# -------------------------------------------------------------------------- fonts

_LATIN_PROBE = "AaBbEeGgKkMmRrSsWwZz0123456789@._:/-©"
# Letters and digits only: many good Arabic-script fonts (Noto Naskh Arabic, Titr) have
# no Latin letters; texts that mix scripts are matched to fonts character by character.
_PERSIAN_PROBE = "ابپتجچخدرزژسشصطعفقکگلمنوهی۰۱۲۳۴۵۶۷۸۹"
_PROBES = {"latin": _LATIN_PROBE, "persian": _PERSIAN_PROBE}
# Symbol/math/placeholder families whose cmap covers ASCII with unrelated glyphs.
_DENY_NAME_PARTS = (
    "lastresort", "cmex", "cmsy", "cmmi", "stixsize", "stixnonuni", "math", "symbol", "dingbat", "emoji",
    "fontawesome",
)  # fmt: skip
# Characters that draw nothing by design (bidi controls, joiners) or are whitespace.
_INVISIBLE = frozenset("\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069 \n\t")
# Words dropped from a family name to get its design group.
_FAMILY_NOISE = frozenset(
    {"display", "condensed", "semicondensed", "extracondensed", "light", "extralight", "thin", "medium",
     "semibold", "black", "ui"}
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
    bundled = None
    if spec is not None and spec.origin:
        bundled = (Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf").resolve()
        dirs.append(bundled)
    for folder in dirs:
        if folder.is_dir():
            found.extend(p for p in folder.rglob("*") if p.is_file())
    unique: dict[str, Path] = {}
    for path in found:
        if path.suffix.lower() in FONT_SUFFIXES and path.is_file():
            unique.setdefault(str(path.resolve()), path.resolve())

    def order(path: Path) -> tuple[bool, str]:
        # matplotlib's copies last, ordered by file name: the order (and so every seeded
        # draw) must not depend on where the virtualenv lives
        if bundled is not None and path.is_relative_to(bundled):
            return True, path.name
        return False, str(path)

    return sorted(unique.values(), key=order)


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


def _joins(font: ImageFont.FreeTypeFont) -> bool:
    """True when raqm joins Arabic letters with this font (initial/final forms are narrower)."""

    def width(text: str) -> int:
        left, _, right, _ = font.getbbox(text)
        return right - left

    return width("بب") < 0.92 * 2 * width("ب")


@dataclass(frozen=True)
class _FontEntry:
    path: Path
    group: str  # design family, e.g. "noto sans"
    scripts: tuple[str, ...]


def _family_group(name: str) -> str:
    words = [w for w in name.lower().split() if w not in _FAMILY_NOISE]
    return " ".join(words) or name.lower()


@functools.lru_cache(maxsize=1)
def _font_catalog() -> tuple[_FontEntry, ...]:
    entries: list[_FontEntry] = []
    seen_names: set[tuple[str, str]] = set()
    raqm = _raqm()
    for path in _font_candidates():
        if any(part in path.name.lower().replace("-", "") for part in _DENY_NAME_PARTS):
            continue
        try:
            font = ImageFont.truetype(str(path), 24, layout_engine=ImageFont.Layout.BASIC)
            name = font.getname()
        except Exception:  # unreadable or unsupported font file
            continue
        key = (str(name[0]), str(name[1]))
        if key in seen_names or any(part in key[0].lower().replace(" ", "") for part in _DENY_NAME_PARTS):
            continue
        seen_names.add(key)
        scripts = []
        try:
            if _covers(font, _LATIN_PROBE):
                scripts.append("latin")
            if _covers(font, _PERSIAN_PROBE):
                shaped = ImageFont.truetype(str(path), 24, layout_engine=ImageFont.Layout.RAQM) if raqm else None
                if shaped is None or _joins(shaped):
                    scripts.append("persian")
        except Exception:  # a broken font must not stop discovery
            continue
        if scripts:
            entries.append(_FontEntry(path=path, group=_family_group(key[0]), scripts=tuple(scripts)))
    return tuple(entries)


def _font_index() -> dict[str, tuple[Path, ...]]:
    catalog = _font_catalog()
    return {script: tuple(e.path for e in catalog if script in e.scripts) for script in SCRIPTS}


def available_fonts(script: str = "latin") -> list[Path]:
    """TrueType/OpenType fonts that draw every probe glyph of ``script``.

    Discovery runs once, on first call (``fc-list``, ``/usr/share/fonts``,
    ``/usr/local/share/fonts``, ``~/.fonts``, ``$WATERMARK_FONT_DIRS`` and matplotlib's
    bundled fonts); fonts are deduplicated by family and style and checked by
    rendering, so one without Persian glyphs is never listed for ``persian``. A
    ``persian`` font draws the Persian letters and digits and is joined by raqm; it
    may lack Latin letters (texts are matched to fonts per character when drawn).

    Args:
        script: ``latin`` or ``persian``.

    Returns:
        Font paths in a stable order (possibly empty): all pools, see :func:`font_pool`.

    Raises:
        ValueError: ``script`` is not in :data:`SCRIPTS`.
    """
    if script not in SCRIPTS:
        raise ValueError(f"script={script!r}: allowed are {', '.join(SCRIPTS)}")
    return list(_font_index()[script])


def _partition(groups: dict[str, set[str]]) -> dict[str, str] | None:
    """Assign each group to train/heldout by hash, then balance scripts; None if impossible."""
    hashes = {g: _stable_hash(f"font-group:{g}") for g in groups}
    order = sorted(groups, key=lambda g: (hashes[g], g))
    pool = {g: "heldout" if hashes[g] % HELDOUT_FONT_SHARE == 0 else "train" for g in groups}
    scripts = sorted(set().union(*groups.values())) if groups else []

    def has(where: str, script: str, without: str | None = None) -> bool:
        return any(pool[g] == where and script in groups[g] for g in groups if g != without)

    for _ in range(4 * len(SCRIPTS)):
        changed = False
        for script in scripts:
            for where in ("heldout", "train"):
                if has(where, script):
                    continue
                other = "train" if where == "heldout" else "heldout"
                for group in order:
                    if pool[group] != other or script not in groups[group]:
                        continue
                    if all(has(other, s, without=group) for s in scripts if has(other, s)):
                        pool[group] = where
                        changed = True
                        break
        if not changed:
            break
    complete = all(has(where, s) for where in ("train", "heldout") for s in scripts)
    return pool if complete else None


@functools.lru_cache(maxsize=1)
def _font_partition() -> tuple[dict[str, str], str]:
    """(font file name -> "train"/"heldout", mode) where mode is family, file or incomplete."""
    entries = _font_catalog()
    for mode in ("family", "file"):
        groups: dict[str, set[str]] = {}
        for entry in entries:
            groups.setdefault(entry.group if mode == "family" else entry.path.name, set()).update(entry.scripts)
        pool = _partition(groups)
        if pool is not None:
            return {e.path.name: pool[e.group if mode == "family" else e.path.name] for e in entries}, mode
    by_file = {e.path.name: _hash_split(e.path.name) for e in entries}
    return by_file, "incomplete"


def _hash_split(name: str) -> str:
    return "heldout" if _stable_hash(f"font-group:{name}") % HELDOUT_FONT_SHARE == 0 else "train"


def _font_split(path: str | Path) -> str:
    return _font_split_by_name(os.path.basename(path))


@functools.lru_cache(maxsize=4096)
def _font_split_by_name(name: str) -> str:
    table, _ = _font_partition()
    return table.get(name) or _hash_split(name)


def font_pool(split: str = "any", script: str = "latin") -> list[Path]:
    """Fonts of one style pool (see the module docstring): train and heldout share none.

    Args:
        split: ``train``, ``heldout`` or ``any`` (all of :func:`available_fonts`).
        script: ``latin`` or ``persian``.

    Raises:
        ValueError: unknown split or script.
    """
    _check_split(split)
    fonts = available_fonts(script)
    return fonts if split == "any" else [p for p in fonts if _font_split(p) == split]


@functools.lru_cache(maxsize=512)
def _load_font(path: str, size: int, raqm: bool) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if not path:
        return ImageFont.load_default(size)
    layout = ImageFont.Layout.RAQM if raqm else ImageFont.Layout.BASIC
    return ImageFont.truetype(path, size, layout_engine=layout)


@functools.lru_cache(maxsize=256)
def _notdef(path: str) -> bytes | None:
    return _glyph_signature(_load_font(path, 24, False), "\U0010fffd")


@functools.lru_cache(maxsize=65536)
def _has_glyph(path: str, ch: str) -> bool:
    try:
        sig = _glyph_signature(_load_font(path, 24, False), ch)
    except Exception:
        return False
    return sig is not None and sig != _notdef(path)


def _draws(path: str | Path, text: str) -> bool:
    """True when the font has a real glyph for every visible character of ``text``."""
    if not str(path):
        return True
    return all(_has_glyph(str(path), ch) for ch in set(text) if ch not in _INVISIBLE)


# -------------------------------------------------------------------- icons, logos

FONT_AWESOME_FILES = (
    Path("/usr/share/fonts/truetype/font-awesome/fontawesome-webfont.ttf"),
    Path("/usr/share/fonts-font-awesome/fonts/fontawesome-webfont.ttf"),
)
# Font Awesome 4.7 code points (Debian fonts-font-awesome).
_FA_GLYPHS = {
    "instagram": "\uf16d", "telegram": "\uf2c6", "phone": "\uf095", "globe": "\uf0ac",
    "whatsapp": "\uf232", "envelope": "\uf0e0", "shopping-cart": "\uf07a",
}  # fmt: skip
# Stand-ins that DejaVu Sans draws, used when Font Awesome is missing.
_SYMBOL_GLYPHS = {
    "telephone": "\u260e", "envelope-symbol": "\u2709", "star": "\u2605",
    "telephone-sign": "\u2706", "heart": "\u2665", "check": "\u2713",
}  # fmt: skip
_ICON_SPLIT = {
    "instagram": "train", "telegram": "train", "phone": "train", "globe": "train",
    "whatsapp": "heldout", "envelope": "heldout", "shopping-cart": "heldout",
    "telephone": "train", "envelope-symbol": "train", "star": "train",
    "telephone-sign": "heldout", "heart": "heldout", "check": "heldout",
}  # fmt: skip
# Which text follows which icon.
_ICON_KINDS = {
    "instagram": ("handle", "handle", "mixed_handle"), "telegram": ("handle", "url"),
    "phone": ("phone_latin", "phone_fa"), "globe": ("url",), "whatsapp": ("phone_latin", "phone_fa"),
    "envelope": ("email",), "shopping-cart": ("url", "latin_shop", "persian_shop"),
    "telephone": ("phone_latin", "phone_fa"), "envelope-symbol": ("email",),
    "star": ("latin_shop", "persian_shop", "handle"), "telephone-sign": ("phone_latin", "phone_fa"),
    "heart": ("handle",), "check": ("url", "latin_shop"),
}  # fmt: skip


def _find_icon_font() -> Path | None:
    """Font Awesome's TrueType file, when installed and usable."""
    candidates = [p for p in FONT_AWESOME_FILES if p.is_file()]
    candidates += [p for p in _font_candidates() if "fontawesome" in p.name.lower().replace("-", "").replace("_", "")]
    for path in candidates:
        try:
            font = ImageFont.truetype(str(path), 24)
            sig = _glyph_signature(font, _FA_GLYPHS["instagram"])
            if sig is not None and sig != _glyph_signature(font, "\U0010fffd"):
                return path
        except Exception:
            continue
    return None


@functools.lru_cache(maxsize=1)
def _icon_source() -> tuple[str, str, dict[str, str]]:
    """(source, font path, icon name -> character); warns once when Font Awesome is missing."""
    path = _find_icon_font()
    if path is not None:
        return "fontawesome", str(path), dict(_FA_GLYPHS)
    for font in available_fonts("latin"):
        if all(_has_glyph(str(font), ch) for ch in _SYMBOL_GLYPHS.values()):
            warnings.warn(
                "Font Awesome not found (Debian: fonts-font-awesome, see scripts/setup_fonts.sh); icon_handle "
                f"marks use the symbols {' '.join(_SYMBOL_GLYPHS.values())} of {font.name} instead",
                RuntimeWarning,
                stacklevel=2,
            )
            return "symbols", str(font), dict(_SYMBOL_GLYPHS)
    warnings.warn(
        "Font Awesome not found and no installed font draws the fallback symbols; icon_handle marks are "
        "drawn without an icon (install fonts-font-awesome or fonts-dejavu-core)",
        RuntimeWarning,
        stacklevel=2,
    )
    return "none", "", {}


def icon_pool(split: str = "any") -> list[str]:
    """Icon names of one style pool (Font Awesome, or the symbol fallback)."""
    _check_split(split)
    return [name for name in _icon_source()[2] if split in ("any", _ICON_SPLIT[name])]


_BADGE_SHAPES = {
    "circle": "train", "rounded_rect": "train", "shield": "train",
    "hexagon": "heldout", "diamond": "heldout", "seal": "heldout",
}  # fmt: skip
# RGBA images that installed packages ship: name -> (package, path inside it, pool).
_PACKAGE_LOGOS = {
    "mpl-logo2": ("matplotlib", "mpl-data/sample_data/logo2.png", "train"),
    "mpl-icon": ("matplotlib", "mpl-data/images/matplotlib_large.png", "train"),
    "skimage-logo": ("skimage", "data/logo.png", "heldout"),
}


def _package_file(module: str, rel: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / rel
    return path if path.is_file() else None


def logo_pool(split: str = "any") -> list[str]:
    """Logo names of one style pool: ``badge:<shape>`` and ``image:<name>`` (installed only)."""
    _check_split(split)
    names = [f"badge:{shape}" for shape, pool in _BADGE_SHAPES.items() if split in ("any", pool)]
    names += [
        f"image:{name}"
        for name, (module, rel, pool) in _PACKAGE_LOGOS.items()
        if split in ("any", pool) and _package_file(module, rel) is not None
    ]
    return names


def prepare_logo(logo: Image.Image | str | os.PathLike) -> Image.Image:
    """Turn any image (or image file) into a tight RGBA logo.

    An image with transparency keeps its alpha. A fully opaque one has the flat colour
    around it (connected to the border, within 40 levels of the corners' colour) made
    transparent, unless that would remove almost everything. The result is cropped to
    its visible pixels.

    Raises:
        ValueError: the image is fully transparent.
    """
    if not isinstance(logo, Image.Image):
        with Image.open(logo) as handle:
            handle.load()
            logo = handle.copy()
    rgba = logo.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.size and int(alpha.min()) == 255 and min(rgba.size) >= 3:
        from scipy import ndimage

        rgb = np.asarray(rgba.convert("RGB"), dtype=np.int16)
        corners = np.stack([rgb[0, 0], rgb[0, -1], rgb[-1, 0], rgb[-1, -1]])
        near = np.abs(rgb - np.median(corners, axis=0)).max(axis=-1) <= 40
        labels, _ = ndimage.label(near)
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        background = np.isin(labels, np.unique(edge[edge > 0]))
        if 0.0 < background.mean() < 0.97:
            keyed = Image.fromarray(np.where(background, 0, 255).astype(np.uint8), "L")
            rgba.putalpha(keyed.filter(ImageFilter.GaussianBlur(0.6)))
    bbox = rgba.getchannel("A").getbbox()
    if bbox is None:
        raise ValueError("logo image is fully transparent")
    return rgba.crop(bbox)


@functools.lru_cache(maxsize=8)
def _package_logo(name: str) -> Image.Image:
    module, rel, _ = _PACKAGE_LOGOS[name]
    path = _package_file(module, rel)
    if path is None:
        raise FileNotFoundError(f"logo {name}: {module}/{rel} is not installed")
    return prepare_logo(path)


# --------------------------------------------------------------------- placements

# name: (position rule, angle band)
_PLACEMENT_RULES: dict[str, tuple[str, str]] = {
    "corner": ("corner", "upright"),
    "bottom_center": ("bottom_center", "upright"),
    "center_upright": ("center", "upright"),
    "center_diag": ("center", "diag"),
    "random_upright": ("random", "upright"),
    "random_diag": ("random", "diag"),
    "tiled_horizontal": ("tile", "flat"),
    "tiled_diag": ("tile", "diag"),
    "rows_diag": ("rows", "diag"),
    "banner_top": ("banner_top", "flat"),
    "banner_bottom": ("banner_bottom", "flat"),
    "edge_middle": ("edge_middle", "edge"),
    "center_shallow": ("center", "shallow"),
    "center_steep": ("center", "steep"),
    "random_shallow": ("random", "shallow"),
    "random_steep": ("random", "steep"),
    "tiled_shallow": ("tile", "shallow"),
    "tiled_steep": ("tile", "steep"),
    "rows_shallow": ("rows", "shallow"),
    "rows_steep": ("rows", "steep"),
    "banner_middle": ("banner_middle", "flat"),
}
# |angle| ranges in degrees; "upright" is 0 or within +-6, "edge" is 0 or +-90.
_ANGLE_BANDS = {"upright": (0.0, 6.0), "flat": (0.0, 0.0), "diag": (25.0, 40.0), "shallow": (10.0, 22.0),
                "steep": (45.0, 70.0)}  # fmt: skip
_FAMILY_PLACEMENTS: dict[str, dict[str, dict[str, float]]] = {
    "corner_text": {"train": {"corner": 0.8, "bottom_center": 0.2}, "heldout": {"edge_middle": 1.0}},
    "center_text": {
        "train": {"center_upright": 0.5, "center_diag": 0.5},
        "heldout": {"center_shallow": 0.5, "center_steep": 0.5},
    },
    "random_text": {
        "train": {"random_upright": 0.55, "random_diag": 0.45},
        "heldout": {"random_shallow": 0.5, "random_steep": 0.5},
    },
    "tiled_text": {
        "train": {"tiled_horizontal": 0.2, "tiled_diag": 0.8},
        "heldout": {"tiled_shallow": 0.5, "tiled_steep": 0.5},
    },
    "diagonal_tiled": {"train": {"rows_diag": 1.0}, "heldout": {"rows_shallow": 0.4, "rows_steep": 0.6}},
    "stamp": {
        "train": {"corner": 0.45, "bottom_center": 0.1, "center_upright": 0.1, "random_upright": 0.1,
                  "banner_bottom": 0.17, "banner_top": 0.08},
        "heldout": {"edge_middle": 0.4, "random_shallow": 0.35, "banner_middle": 0.25},
    },  # fmt: skip
    "logo": {
        "train": {"corner": 0.5, "bottom_center": 0.1, "center_upright": 0.25, "random_upright": 0.15},
        "heldout": {"edge_middle": 0.35, "center_shallow": 0.3, "random_shallow": 0.35},
    },
    "icon_handle": {
        "train": {"corner": 0.65, "bottom_center": 0.2, "random_upright": 0.15},
        "heldout": {"edge_middle": 0.6, "random_shallow": 0.4},
    },
}
_HELDOUT_WEIGHT_IN_ANY = 0.5  # split="any": held-out placements are half as frequent


def _placement_table(family: str, split: str) -> dict[str, float]:
    pools = _FAMILY_PLACEMENTS[family]
    if split != "any":
        return dict(pools[split])
    table = dict(pools["train"])
    table.update({name: w * _HELDOUT_WEIGHT_IN_ANY for name, w in pools["heldout"].items()})
    return table


def placement_pool(split: str = "any", family: str | None = None) -> list[str]:
    """Placement names of one style pool, for one family or all (see the module docstring)."""
    _check_split(split)
    families = [family] if family is not None else list(_FAMILY_PLACEMENTS)
    names: list[str] = []
    for fam in families:
        if fam not in _FAMILY_PLACEMENTS:
            raise ValueError(f"unknown watermark style family {fam!r}: allowed are {', '.join(_FAMILY_PLACEMENTS)}")
        names += [n for n in _placement_table(fam, split) if n not in names]
    return names


def style_pools(split: str) -> dict[str, object]:
    """Everything a style pool holds (fonts per script, logos, icons, placements): for manifests."""
    _check_split(split)
    return {
        "fonts": {script: [p.name for p in font_pool(split, script)] for script in SCRIPTS},
        "font_partition": _font_partition()[1],
        "logos": logo_pool(split),
        "icons": icon_pool(split),
        "icon_source": _icon_source()[0],
        "placements": placement_pool(split),
    }


# ------------------------------------------------------------------- info & types


@dataclass(frozen=True)
class WatermarkInfo:
    """What :func:`render_watermark` drew (JSON-serialisable via ``dataclasses.asdict``).

    Attributes:
        family: style family, one of :data:`STYLE_FAMILIES`.
        text: the text drawn (may contain a newline; empty for an image logo).
        opacity: layer opacity of the mark, 0..1.
        rel_size: font size in pixels divided by the image width (logo: logo width
            divided by the image width).
        kind: content kind, one of :data:`TEXT_KINDS`, or ``logo``.
        script: ``persian`` when the text holds Arabic-script letters, ``latin``, or
            ``none`` for an image logo.
        font: file name of the font (``pillow-default`` for Pillow's fallback font,
            ``none`` for an image logo).
        color: RGB of the text (logo: its single colour, or its mean colour).
        effect: ``none``, ``outline`` or ``shadow``.
        angle: rotation in degrees (counter-clockwise).
        bbox: ``(left, top, right, bottom)`` of every pixel the mark touches.
        box_opacity: opacity of the box or banner behind the text (``stamp`` only).
        jpeg_quality: quality of the final JPEG re-encode, or None when not re-encoded.
        placement: placement name (see :func:`placement_pool`).
        split: style pool the mark was drawn from: ``train``, ``heldout`` or ``any``.
        logo: ``badge:<shape>``, ``image:<name>`` or ``user:<name>`` (``logo`` only).
        icon: icon name(s), comma-separated (``icon_handle`` only).
        faint: drawn in the faint regime (opacity 0.08..0.2, lower visibility floor).
        rel_width: width of ``bbox`` divided by the image width.
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
    placement: str = ""
    split: str = "any"
    logo: str | None = None
    icon: str | None = None
    faint: bool = False
    rel_width: float = 0.0


@dataclass
class _Style:
    text: str
    kind: str
    script: str
    font_path: str  # "" -> Pillow's default font (or no font for an image logo)
    size: int
    opacity: float
    color_mode: str
    effect: str
    stroke: int
    shadow_offset: tuple[int, int]
    faint: bool = False


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
    placement: str = ""
    rgba: Image.Image | None = None  # full-image RGBA logo (its own colours)
    mono: bool = False  # logo recoloured to one colour
    logo: str | None = None
    icon: str | None = None


@dataclass
class _Ctx:
    split: str
    logos: tuple[Image.Image, ...] = ()
    logo_names: tuple[str, ...] = ()


# ----------------------------------------------------------------- style sampling

# Relative font size (of the width), maximal text width (of the width).
_SIZE = {
    "corner_text": (0.02, 0.07, 0.6),
    "center_text": (0.06, 0.16, 0.9),
    "tiled_text": (0.025, 0.07, 0.6),
    "diagonal_tiled": (0.035, 0.09, 0.6),
    "stamp": (0.03, 0.08, 0.75),
    "random_text": (0.025, 0.12, 0.8),
    "icon_handle": (0.022, 0.07, 0.7),
}
_OPACITY = {
    "corner_text": (0.25, 0.75),
    "center_text": (0.15, 0.5),
    "tiled_text": (0.12, 0.35),
    "diagonal_tiled": (0.12, 0.4),
    "stamp": (0.5, 0.8),
    "random_text": (0.2, 0.7),
    "icon_handle": (0.3, 0.8),
    "logo": (0.2, 0.7),
}
_NO_FAINT = frozenset({"stamp"})  # the box is what shows
_LOGO_WIDTH = (0.05, 0.3, 0.6)  # log-uniform logo width (of the image width): min, max off-centre, max centred
_KIND_WEIGHTS: dict[str, dict[str, float]] = {
    "corner_text": {
        "handle": 3, "mixed_handle": 1, "url": 1.5, "phone_fa": 1, "phone_latin": 1, "persian_shop": 2, "latin_shop": 1,
    },
    "center_text": {"persian_shop": 3, "latin_shop": 2, "handle": 2.5, "url": 1, "two_line": 1.5, "mixed_handle": 0.5},
    "tiled_text": {"handle": 3.5, "url": 2, "persian_shop": 2, "latin_shop": 1.5, "phone_latin": 0.5, "phone_fa": 0.5},
    "diagonal_tiled": {"handle": 3, "url": 2, "persian_shop": 2, "latin_shop": 1.5, "phone_latin": 1, "phone_fa": 1},
    "stamp": {"two_line": 3.5, "persian_shop": 2, "handle": 2, "phone_fa": 1, "phone_latin": 0.5, "url": 1},
    "random_text": {kind: 1.0 for kind in TEXT_KINDS},
    "icon_handle": {"handle": 3, "phone_latin": 1.5, "phone_fa": 1.5, "url": 1, "email": 0.5},
    "logo": {"persian_shop": 1, "latin_shop": 1},
}  # fmt: skip
_COLOR_MODES = {"white": 0.4, "black": 0.25, "grey": 0.15, "random": 0.2}
_EFFECTS = {"none": 0.55, "outline": 0.25, "shadow": 0.2}
_TEXT_TRIES = 8


def _weighted(rng: random.Random, table: dict[str, float]) -> str:
    keys = list(table)
    return rng.choices(keys, weights=[table[k] for k in keys], k=1)[0]


def _latin_font(rng: random.Random, text: str, split: str) -> str | None:
    """A Latin font of the pool that draws ``text``; "" for Pillow's default; None if none draws it."""
    fonts = font_pool(split, "latin")
    if not fonts:
        warnings.warn(
            f"no installed TrueType font in the {split!r} style pool draws Latin glyphs; using Pillow's default "
            f"font (install fonts-dejavu-core, run scripts/setup_fonts.sh or add a folder to ${FONT_DIRS_ENV})",
            RuntimeWarning,
            stacklevel=4,
        )
        return ""
    usable = [f for f in fonts if _draws(f, text)]
    return str(rng.choice(usable)) if usable else None


def _persian_unusable(split: str) -> str:
    """Why Persian cannot be drawn for this pool ("" when it can)."""
    if not available_fonts("persian"):
        return "no installed font draws Persian glyphs"
    if not _raqm():
        return "Pillow was built without raqm, so Persian would not be shaped"
    if not font_pool(split, "persian"):
        return f"no Persian font is in the {split!r} style pool"
    return ""


def _pick_text(
    rng: random.Random, family: str, split: str = "any", kind: str | None = None
) -> tuple[str, str, str, str]:
    """Return (kind, text, script, font_path) with a font of the pool able to draw the text."""
    for _ in range(_TEXT_TRIES):
        chosen = kind or _weighted(rng, _KIND_WEIGHTS[family])
        text = _make_text(chosen, rng)
        if _is_persian(text):
            reason = _persian_unusable(split)
            if reason:
                warnings.warn(f"{reason}; drawing a Latin watermark instead", RuntimeWarning, stacklevel=3)
                chosen = _LATIN_STAND_IN.get(chosen) or rng.choice(_LATIN_ONLY_KINDS)
                text = _make_text(chosen, rng)
            else:
                usable = [f for f in font_pool(split, "persian") if _draws(f, text)]
                if usable:
                    return chosen, text, "persian", str(rng.choice(usable))
                continue  # e.g. a Latin handle inside and no font of the pool has both
        font = _latin_font(rng, text, split)
        if font is not None:
            return chosen, text, "latin", font
    chosen = rng.choice(_LATIN_ONLY_KINDS)
    text = _make_text(chosen, rng)
    font = _latin_font(rng, text, split)
    return chosen, text, "latin", font or ""


def _font_for(rng: random.Random, text: str, split: str) -> str:
    """A font of the pool that draws ``text`` (Persian fonts for Persian text); "" if none."""
    if _is_persian(text):
        usable = [f for f in font_pool(split, "persian") if _draws(f, text)] if not _persian_unusable(split) else []
        return str(rng.choice(usable)) if usable else ""
    font = _latin_font(rng, text, split)
    return font or ""


def _style_opacity(rng: random.Random, family: str) -> tuple[float, bool]:
    faint = family not in _NO_FAINT and rng.random() < FAINT_PROB
    return (rng.uniform(*FAINT_OPACITY) if faint else rng.uniform(*_OPACITY[family])), faint


def _sample_style(
    rng: random.Random, family: str, width: int, split: str = "any", kind: str | None = None
) -> tuple[_Style, ImageFont.FreeTypeFont]:
    kind, text, script, font_path = _pick_text(rng, family, split, kind)
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
    opacity, faint = _style_opacity(rng, family)
    style = _Style(
        text=text,
        kind=kind,
        script=script,
        font_path=font_path,
        size=size,
        opacity=opacity,
        color_mode=_weighted(rng, _COLOR_MODES),
        effect=effect,
        stroke=stroke,
        shadow_offset=shadow_offset,
        faint=faint,
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


def _plain_mask(text: str, font: ImageFont.FreeTypeFont, align: str = "center") -> Image.Image:
    """Tight 'L' mask of ``text`` (at least 1x1)."""
    left, top, right, bottom = _text_bbox(text, font, 0)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(mask).multiline_text((-left, -top), text, font=font, fill=255, align=align)
    return mask


def _masks_from_fill(fill: Image.Image, style: _Style) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(fill, outer, shadow) of a tight fill mask, padded like :func:`_text_masks`."""
    dx, dy = style.shadow_offset
    blur = max(0.0, style.size / 30)
    pad = style.stroke + max(abs(dx), abs(dy)) + int(3 * blur) + 2
    size = (fill.width + 2 * pad, fill.height + 2 * pad)
    padded = Image.new("L", size)
    padded.paste(fill, (pad, pad))
    outer = padded.filter(ImageFilter.MaxFilter(2 * min(style.stroke, 6) + 1))
    shadow = Image.new("L", size)
    shadow.paste(fill, (pad + dx, pad + dy))
    if blur >= 0.5:
        shadow = shadow.filter(ImageFilter.GaussianBlur(blur))
    return padded, outer, shadow


def _rotate(masks: Sequence[Image.Image], angle: float) -> list[Image.Image]:
    if abs(angle) < 0.01:
        return list(masks)
    return [m.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True) for m in masks]


def _place(masks: Sequence[Image.Image], size: tuple[int, int], xy: tuple[int, int]) -> list[Image.Image]:
    placed = []
    for mask in masks:
        canvas = Image.new(mask.mode, size)
        canvas.paste(mask, xy)
        placed.append(canvas)
    return placed


def _corner_xy(rng: random.Random, size: tuple[int, int], mark: tuple[int, int], margin: float) -> tuple[int, int]:
    width, height = size
    w, h = mark
    gap_x, gap_y = round(margin * width), round(margin * height)
    corner = _weighted(rng, {"br": 0.4, "bl": 0.22, "tr": 0.19, "tl": 0.19})
    x = gap_x if corner[1] == "l" else width - w - gap_x
    y = gap_y if corner[0] == "t" else height - h - gap_y
    return x, y


def _random_xy(rng: random.Random, size: tuple[int, int], mark: tuple[int, int]) -> tuple[int, int]:
    span_x, span_y = size[0] - mark[0], size[1] - mark[1]
    x = rng.randint(min(0, span_x), max(0, span_x))
    y = rng.randint(min(0, span_y), max(0, span_y))
    return x, y


def _band_angle(rng: random.Random, band: str) -> float:
    if band == "flat":
        return 0.0
    if band == "upright":
        return 0.0 if rng.random() < 0.7 else rng.uniform(-6.0, 6.0)
    low, high = _ANGLE_BANDS[band]
    return rng.choice((1.0, -1.0)) * rng.uniform(low, high)


def _position(
    rng: random.Random, placement: str, size: tuple[int, int], masks: Sequence[Image.Image]
) -> tuple[list[Image.Image], float]:
    """Rotate and place ``masks`` (same size) by a named placement; returns full-image masks and the angle."""
    rule, band = _PLACEMENT_RULES[placement]
    width, height = size
    edge = ""
    if rule == "edge_middle":
        edge = _weighted(rng, {"top": 0.4, "left": 0.3, "right": 0.3})
        angle = 0.0 if edge == "top" or rng.random() < 0.35 else (90.0 if edge == "left" else -90.0)
    else:
        angle = _band_angle(rng, band)
    masks = _rotate(masks, angle)
    w, h = masks[0].size
    margin = rng.uniform(0.0, 0.05)
    gap_x, gap_y = round(margin * width), round(margin * height)
    if rule == "corner":
        xy = _corner_xy(rng, size, (w, h), margin)
    elif rule == "bottom_center":
        xy = ((width - w) // 2 + round(rng.uniform(-0.03, 0.03) * width), height - h - gap_y)
    elif rule == "center":
        jitter_x, jitter_y = (round(rng.uniform(-0.06, 0.06) * d) for d in size)
        xy = ((width - w) // 2 + jitter_x, (height - h) // 2 + jitter_y)
    elif rule == "edge_middle":
        if edge == "top":
            xy = ((width - w) // 2, gap_y)
        elif edge == "left":
            xy = (gap_x, (height - h) // 2)
        else:
            xy = (width - w - gap_x, (height - h) // 2)
    elif rule == "random":
        xy = _random_xy(rng, size, (w, h))
    else:  # pragma: no cover - tiling/banner placements are handled by their families
        raise ValueError(f"placement {placement!r} has no single position")
    return _place(masks, size, xy), angle


def _tile(
    tile: Sequence[Image.Image],
    size: tuple[int, int],
    angle: float,
    rows: Sequence[int] | None,
    step_x: int,
    step_y: int,
    stagger: float,
    rng: random.Random,
) -> list[Image.Image]:
    """Repeat ``tile`` masks on a grid (``rows`` None) or along given row offsets, rotate, crop to ``size``."""
    tile_w, tile_h = tile[0].size
    side = int(math.hypot(*size)) + 2 * max(tile_w, tile_h)
    phase_x = rng.randrange(step_x)
    if rows is None:
        phase_y = rng.randrange(step_y)
        ys = list(range(-phase_y, side, step_y))
    else:
        ys = [side // 2 + offset - tile_h // 2 for offset in rows]
    canvases = [Image.new("L", (side, side)) for _ in tile]
    for row, y in enumerate(ys):
        offset = round(stagger * step_x * (row % 2))
        for x in range(-phase_x - offset, side, step_x):
            for canvas, mask in zip(canvases, tile):
                canvas.paste(mask, (x, y))
    if abs(angle) >= 0.01:
        canvases = [c.rotate(angle, resample=Image.Resampling.BICUBIC) for c in canvases]
    left, top = (side - size[0]) // 2, (side - size[1]) // 2
    return [c.crop((left, top, left + size[0], top + size[1])) for c in canvases]


# ---------------------------------------------------------------------- families


def _single_text(family: str) -> Callable[[Image.Image, random.Random, _Ctx], _Mark]:
    def render(image: Image.Image, rng: random.Random, ctx: _Ctx) -> _Mark:
        style, font = _sample_style(rng, family, image.width, ctx.split)
        placement = _weighted(rng, _placement_table(family, ctx.split))
        (fill, outer, shadow), angle = _position(rng, placement, image.size, _text_masks(style.text, font, style))
        return _Mark(style, fill, outer, shadow, angle, placement=placement)

    render.__name__ = f"_family_{family}"
    return render


_family_corner_text = _single_text("corner_text")
_family_center_text = _single_text("center_text")
_family_random_text = _single_text("random_text")


def _family_tiled_text(image: Image.Image, rng: random.Random, ctx: _Ctx) -> _Mark:
    style, font = _sample_style(rng, "tiled_text", image.width, ctx.split)
    if style.effect == "shadow":
        style.effect = "none"
    placement = _weighted(rng, _placement_table("tiled_text", ctx.split))
    angle = _band_angle(rng, _PLACEMENT_RULES[placement][1])
    tile = _text_masks(style.text, font, style)
    tile_w, tile_h = tile[0].size
    step_x = tile_w + max(4, round(rng.uniform(0.3, 1.2) * tile_w))
    step_y = tile_h + max(4, round(rng.uniform(0.8, 3.0) * tile_h))
    stagger = rng.choice((0.0, 0.5))
    fill, outer, shadow = _tile(tile, image.size, angle, None, step_x, step_y, stagger, rng)
    return _Mark(style, fill, outer, shadow, angle, placement=placement)


def _family_diagonal_tiled(image: Image.Image, rng: random.Random, ctx: _Ctx) -> _Mark:
    """One to three sparse rows of the same text repeated across the whole photo."""
    style, font = _sample_style(rng, "diagonal_tiled", image.width, ctx.split)
    placement = _weighted(rng, _placement_table("diagonal_tiled", ctx.split))
    angle = _band_angle(rng, _PLACEMENT_RULES[placement][1])
    tile = _text_masks(style.text, font, style)
    tile_w, tile_h = tile[0].size
    diagonal = math.hypot(*image.size)
    count = _weighted(rng, {"1": 0.35, "2": 0.35, "3": 0.3})
    n_rows = int(count)
    spacing = diagonal / (n_rows + rng.uniform(0.2, 0.8))
    rows = [round((k - (n_rows - 1) / 2) * spacing + rng.uniform(-0.05, 0.05) * diagonal) for k in range(n_rows)]
    step_x = tile_w + max(4, round(rng.uniform(0.5, 2.0) * style.size))
    fill, outer, shadow = _tile(tile, image.size, angle, rows, step_x, 1, rng.choice((0.0, 0.5)), rng)
    return _Mark(style, fill, outer, shadow, angle, placement=placement)


def _family_stamp(image: Image.Image, rng: random.Random, ctx: _Ctx) -> _Mark:
    style, font = _sample_style(rng, "stamp", image.width, ctx.split)
    if style.effect == "outline":
        style.effect = "none"  # a box already separates the text from the photo
    fill, outer, shadow = _text_masks(style.text, font, style)
    pad_x = max(2, round(style.size * rng.uniform(0.3, 0.8)))
    pad_y = max(2, round(style.size * rng.uniform(0.15, 0.45)))
    text_w, text_h = fill.size
    placement = _weighted(rng, _placement_table("stamp", ctx.split))
    if not placement.startswith("banner_"):  # rounded box around the text
        box_size = (text_w + 2 * pad_x, text_h + 2 * pad_y)
        radius = round(rng.uniform(0.0, 0.5) * box_size[1])
        box = Image.new("L", box_size)
        ImageDraw.Draw(box).rounded_rectangle((0, 0, box_size[0] - 1, box_size[1] - 1), radius=radius, fill=255)
        masks = [box] + _place((fill, outer, shadow), box_size, (pad_x, pad_y))
        (box, fill, outer, shadow), angle = _position(rng, placement, image.size, masks)
    else:  # banner strip across the whole width
        angle = 0.0
        band_h = text_h + 2 * pad_y
        if placement == "banner_top":
            top = round(rng.uniform(0.0, 0.1) * image.height) if rng.random() < 0.3 else 0
        elif placement == "banner_bottom":
            top = image.height - band_h - (round(rng.uniform(0.0, 0.1) * image.height) if rng.random() < 0.3 else 0)
        else:  # banner_middle
            top = (image.height - band_h) // 2 + round(rng.uniform(-0.12, 0.12) * image.height)
        box = Image.new("L", image.size)
        ImageDraw.Draw(box).rectangle((0, top, image.width, top + band_h - 1), fill=255)
        align = rng.choice(("center", "center", "left", "right"))
        x = {"center": (image.width - text_w) // 2, "left": pad_x, "right": image.width - text_w - pad_x}[align]
        fill, outer, shadow = _place((fill, outer, shadow), image.size, (x, top + pad_y))
    return _Mark(style, fill, outer, shadow, angle, box=box, box_opacity=rng.uniform(0.25, 0.6), placement=placement)


# ------------------------------------------------------------------------ logos


def _shape_mask(shape: str, size: tuple[int, int]) -> Image.Image:
    w, h = size
    mask = Image.new("L", size)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((0, 0, w - 1, h - 1), fill=255)
    elif shape == "rounded_rect":
        draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=round(0.18 * min(w, h)), fill=255)
    elif shape == "shield":
        points = [(0.0, 0.1 * h), (0.5 * w, 0.0), (w - 1.0, 0.1 * h), (w - 1.0, 0.5 * h)]
        for t in np.linspace(0, 1, 12)[1:]:  # quadratic curves down to the point
            points.append(((1 - t) ** 2 * (w - 1) + 2 * t * (1 - t) * (w - 1) + t * t * 0.5 * w,
                           (1 - t) ** 2 * 0.5 * h + 2 * t * (1 - t) * 0.85 * h + t * t * (h - 1)))  # fmt: skip
        for t in np.linspace(0, 1, 12)[1:]:
            points.append(((1 - t) ** 2 * 0.5 * w + t * t * 0.0, (1 - t) ** 2 * (h - 1) + 2 * t * (1 - t) * 0.85 * h
                           + t * t * 0.5 * h))  # fmt: skip
        draw.polygon(points, fill=255)
    elif shape == "hexagon":
        draw.polygon([(0.25 * w, 0), (0.75 * w, 0), (w - 1, h / 2), (0.75 * w, h - 1), (0.25 * w, h - 1), (0, h / 2)],
                     fill=255)  # fmt: skip
    elif shape == "diamond":
        draw.polygon([(w / 2, 0), (w - 1, h / 2), (w / 2, h - 1), (0, h / 2)], fill=255)
    elif shape == "seal":
        n = 28
        points = []
        for k in range(2 * n):
            r = 1.0 if k % 2 == 0 else 0.88
            a = math.pi * k / n
            points.append((w / 2 + r * (w / 2 - 1) * math.cos(a), h / 2 + r * (h / 2 - 1) * math.sin(a)))
        draw.polygon(points, fill=255)
    else:  # pragma: no cover
        raise ValueError(f"unknown badge shape {shape!r}")
    return mask


def _paint(design: Image.Image, mask: Image.Image, color: tuple[int, int, int], xy: tuple[int, int] = (0, 0)) -> None:
    """Alpha-composite ``color`` through ``mask`` onto RGBA ``design`` at ``xy`` (clipped)."""
    x, y = xy
    left, top = max(0, -x), max(0, -y)
    right, bottom = min(mask.width, design.width - x), min(mask.height, design.height - y)
    if right <= left or bottom <= top:
        return
    part = mask.crop((left, top, right, bottom))
    layer = Image.new("RGBA", part.size, (*color, 0))
    layer.putalpha(part)
    design.alpha_composite(layer, dest=(x + left, y + top))


def _fit(text: str, font_path: str, max_w: float, max_h: float) -> ImageFont.FreeTypeFont:
    """The largest font (>= MIN_FONT_PX) whose rendering of ``text`` fits max_w x max_h."""
    raqm = _raqm()
    size = max(MIN_FONT_PX, int(max_h))
    for _ in range(3):
        font = _load_font(font_path, size, raqm)
        left, top, right, bottom = _text_bbox(text, font, 0)
        w, h = max(1, right - left), max(1, bottom - top)
        if w <= max_w and h <= max_h:
            break
        size = max(MIN_FONT_PX, int(size * min(max_w / w, max_h / h) * 0.98))
    return _load_font(font_path, size, raqm)


def _arc_mask(strip: Image.Image, size: tuple[int, int], r_mid: float, start: float) -> Image.Image:
    """Bend a horizontal text strip around a circle centred in ``size`` (clockwise, centred at ``start`` rad)."""
    from scipy import ndimage

    w, h = size
    strip_arr = np.asarray(strip, dtype=np.float32)
    th, tw = strip_arr.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx + 0.5 - w / 2, yy + 0.5 - h / 2
    rho = np.hypot(dx, dy)
    phi = np.arctan2(dx, -dy) - start
    phi = (phi + np.pi) % (2 * np.pi) - np.pi
    u = tw / 2 + phi * r_mid
    v = (r_mid + th / 2) - rho
    out = ndimage.map_coordinates(strip_arr, [v, u], order=1, cval=0.0, mode="constant")
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "L")


def _badge(rng: random.Random, shape: str, split: str, width_px: int) -> tuple[Image.Image, str, str, str]:
    """Procedural badge logo: (RGBA image, text, script, font path)."""
    s = max(64, 2 * width_px)  # drawn at twice the size, then reduced
    ratio = {"circle": 1.0, "rounded_rect": rng.choice((1.0, 1.5, 2.0)), "shield": 0.85, "hexagon": 1.15,
             "diamond": 1.0, "seal": 1.0}[shape]  # fmt: skip
    size = (s, round(s / ratio)) if ratio >= 1 else (round(s * ratio), s)
    w, h = size
    shape_mask = _shape_mask(shape, size)
    color_a = _base_color(rng, _weighted(rng, {"random": 0.5, "black": 0.25, "white": 0.25}))
    color_b = (250, 250, 250) if _luma(color_a) < 140 else (25, 25, 25)
    layout = _weighted(rng, {"solid": 0.5, "outline": 0.3, "double": 0.2})
    design = Image.new("RGBA", size, (0, 0, 0, 0))
    thick = max(2, round(0.06 * min(w, h)))
    if layout == "outline":
        hole = Image.new("L", size)
        hole.paste(_shape_mask(shape, (max(1, w - 2 * thick), max(1, h - 2 * thick))), (thick, thick))
        _paint(design, ImageChops.subtract(shape_mask, hole), color_a)
        ink = color_a
    else:
        _paint(design, shape_mask, color_a)
        ink = color_b
        if layout == "double":
            inset = max(3, round(0.09 * min(w, h)))
            line = max(1, round(0.018 * min(w, h)))
            outer_in = _shape_mask(shape, (w - 2 * inset, h - 2 * inset))
            inner_in = _shape_mask(shape, (w - 2 * inset - 2 * line, h - 2 * inset - 2 * line))
            ring = Image.new("L", size)
            ring.paste(outer_in, (inset, inset))
            hole = Image.new("L", size)
            hole.paste(inner_in, (inset + line, inset + line))
            _paint(design, ImageChops.subtract(ring, hole), color_b)
    # Content: initials, a short Persian name, or a Latin word; optional sub line or ring text.
    roll = rng.random()
    if roll < 0.45:
        name = rng.choice(_LATIN_NAMES)
        other = rng.choice(_LATIN_NAMES)
        main = rng.choice((name[0].upper(), (name[0] + other[0]).upper(), f"{name[0].upper()}&{other[0].upper()}"))
    elif roll < 0.8:
        main = rng.choice([n for n in _FA_NAMES if len(n) <= 6])
    else:
        main = rng.choice(_LATIN_NAMES).upper()
    texts = [main]
    round_shape = shape in ("circle", "seal")
    ring_text = ""
    if round_shape and rng.random() < 0.45 and s >= 96:
        ring_text = rng.choice(
            (
                f"{rng.choice(_LATIN_NAMES).upper()} {rng.choice(_LATIN_SHOP_WORDS).upper()} \u2022 ONLINE SHOP \u2022",
                f"{rng.choice(_FA_SHOP_WORDS)} {rng.choice(_FA_NAMES)} \u2022 {rng.choice(_FA_TAGLINES)}",
                f"@{_latin_slug(rng).upper()} \u2022 EST. {rng.randint(1390, 1403)}",
            )
        )
    sub = ""
    if not ring_text and rng.random() < 0.4:
        sub = rng.choice(("SHOP", "GALLERY", "STORE", "EST. 1399", "فروشگاه", "گالری", "ONLINE"))
    main_font = _font_for(rng, main, split)
    if _is_persian(main) and not main_font:  # no usable Persian font in this pool
        main = rng.choice(_LATIN_NAMES)[:2].upper()
        main_font = _font_for(rng, main, split)
    scale = 0.55 if ring_text else 0.62
    box_w, box_h = scale * w, (0.3 if sub else 0.4) * h
    if shape == "diamond":
        box_w, box_h = box_w * 0.75, box_h * 0.8
    main_mask = _plain_mask(main, _fit(main, main_font, box_w, box_h))
    centre_y = h * (0.45 if shape == "shield" else 0.5)
    if sub:
        sub_font_path = _font_for(rng, sub, split)
        if sub_font_path or not _is_persian(sub):
            sub_mask = _plain_mask(sub, _fit(sub, sub_font_path, 0.5 * w, 0.12 * h))
            gap = round(0.04 * h)
            total = main_mask.height + gap + sub_mask.height
            top = round(centre_y - total / 2)
            _paint(design, main_mask, ink, ((w - main_mask.width) // 2, top))
            _paint(design, sub_mask, ink, ((w - sub_mask.width) // 2, top + main_mask.height + gap))
            texts.append(sub)
        else:
            sub = ""
    if not sub:
        _paint(design, main_mask, ink, ((w - main_mask.width) // 2, round(centre_y - main_mask.height / 2)))
    if ring_text:
        ring_font_path = _font_for(rng, ring_text, split)
        if ring_font_path or not _is_persian(ring_text):
            r_out = 0.5 * min(w, h) * (0.84 if shape == "seal" else 0.92)
            band = 0.13 * min(w, h)
            r_mid = r_out - band / 2
            font = _fit(ring_text, ring_font_path, 2 * math.pi * r_mid * 0.92, band * 0.8)
            _paint(design, _arc_mask(_plain_mask(ring_text, font), size, r_mid, 0.0), ink)
            texts.append(ring_text)
    target = (max(4, width_px), max(4, round(width_px * h / w)))
    script = "persian" if any(_is_persian(t) for t in texts) else "latin"
    return design.resize(target, Image.Resampling.LANCZOS), "\n".join(texts), script, main_font


def _fit_logo(logo: Image.Image, width: int, max_height: int) -> Image.Image:
    scale = min(width / logo.width, max_height / logo.height)
    size = (max(4, round(logo.width * scale)), max(4, round(logo.height * scale)))
    return logo.resize(size, Image.Resampling.LANCZOS)


def _family_logo(image: Image.Image, rng: random.Random, ctx: _Ctx) -> _Mark:
    placement = _weighted(rng, _placement_table("logo", ctx.split))
    low, high_off, high_centre = _LOGO_WIDTH
    high = high_centre if placement.startswith("center") else high_off
    width_px = max(12, round(math.exp(rng.uniform(math.log(low), math.log(high))) * image.width))
    text, script, font_path = "", "none", ""
    if ctx.logos:
        index = rng.randrange(len(ctx.logos))
        logo, name = ctx.logos[index], f"user:{ctx.logo_names[index]}"
    else:
        pool = logo_pool(ctx.split)
        images = [n for n in pool if n.startswith("image:")]
        badges = [n for n in pool if n.startswith("badge:")]
        if images and rng.random() < 0.3:
            name = rng.choice(images)
            logo = _package_logo(name.split(":", 1)[1])
        else:
            name = rng.choice(badges)
            logo, text, script, font_path = _badge(rng, name.split(":", 1)[1], ctx.split, width_px)
    logo = _fit_logo(logo, width_px, round(0.6 * image.height))
    opacity, faint = _style_opacity(rng, "logo")
    stroke = max(1, round(0.02 * logo.width))
    shift = max(1, round(0.03 * logo.width))
    style = _Style(
        text=text,
        kind="logo",
        script=script,
        font_path=font_path,
        size=logo.width,
        opacity=opacity,
        color_mode=_weighted(rng, _COLOR_MODES),
        effect=_weighted(rng, {"none": 0.7, "shadow": 0.2, "outline": 0.1}),
        stroke=stroke,
        shadow_offset=(shift * rng.choice((1, 1, -1)), shift),
        faint=faint,
    )
    mono = rng.random() < 0.45
    (placed,), angle = _position(rng, placement, image.size, [logo])
    fill = placed.getchannel("A")
    _, outer, shadow = _masks_from_fill(fill, style)
    pad = (outer.width - fill.width) // 2
    outer = outer.crop((pad, pad, pad + fill.width, pad + fill.height))
    shadow = shadow.crop((pad, pad, pad + fill.width, pad + fill.height))
    return _Mark(style, fill, outer, shadow, angle, placement=placement, rgba=placed, mono=mono, logo=name)


# ------------------------------------------------------------------------ icons


def _family_icon_handle(image: Image.Image, rng: random.Random, ctx: _Ctx) -> _Mark:
    source, icon_font, glyphs = _icon_source()
    names = [n for n in glyphs if ctx.split in ("any", _ICON_SPLIT[n])]
    n_rows = 2 if len(names) >= 2 and rng.random() < 0.3 else 1
    icons: list[str | None] = list(rng.sample(names, n_rows)) if names else [None] * n_rows
    kinds = [rng.choice(_ICON_KINDS[i]) if i else _weighted(rng, _KIND_WEIGHTS["icon_handle"]) for i in icons]
    style, font = _sample_style(rng, "icon_handle", image.width, ctx.split, kind=kinds[0])
    raqm = _raqm()
    rows: list[tuple[str | None, str, ImageFont.FreeTypeFont | ImageFont.ImageFont, str]] = [
        (icons[0], style.text, font, style.script)
    ]
    for icon, kind in zip(icons[1:], kinds[1:]):
        _, text, script, path = _pick_text(rng, "icon_handle", ctx.split, kind)
        rows.append((icon, text, _load_font(path, style.size, raqm), script))
    row_masks = []
    for icon, text, row_font, script in rows:
        text_mask = _plain_mask(text, row_font)
        if icon is None or not icon_font:
            row_masks.append((text_mask, script))
            continue
        glyph = _plain_mask(glyphs[icon], _load_font(icon_font, max(MIN_FONT_PX, round(style.size * 1.1)), False))
        gap = max(2, round(style.size * rng.uniform(0.25, 0.5)))
        height = max(glyph.height, text_mask.height)
        row = Image.new("L", (glyph.width + gap + text_mask.width, height))
        glyph_x, text_x = (0, glyph.width + gap) if script == "latin" else (text_mask.width + gap, 0)
        row.paste(glyph, (glyph_x, (height - glyph.height) // 2))
        row.paste(text_mask, (text_x, (height - text_mask.height) // 2))
        row_masks.append((row, script))
    line_gap = max(2, round(style.size * 0.35))
    width = max(m.width for m, _ in row_masks)
    height = sum(m.height for m, _ in row_masks) + line_gap * (len(row_masks) - 1)
    block = Image.new("L", (width, height))
    y = 0
    for mask, script in row_masks:
        block.paste(mask, (0 if script == "latin" else width - mask.width, y))
        y += mask.height + line_gap
    limit = _SIZE["icon_handle"][2] * image.width
    if block.width > limit:
        factor = limit / block.width
        block = block.resize((max(1, round(block.width * factor)), max(1, round(block.height * factor))),
                             Image.Resampling.LANCZOS)  # fmt: skip
        style.size = max(MIN_FONT_PX, round(style.size * factor))
    style.text = "\n".join(text for _, text, _, _ in rows)
    if any(script == "persian" for *_, script in rows):
        style.script = "persian"
    placement = _weighted(rng, _placement_table("icon_handle", ctx.split))
    (fill, outer, shadow), angle = _position(rng, placement, image.size, _masks_from_fill(block, style))
    icon_names = ",".join(i for i in icons if i) or None
    return _Mark(style, fill, outer, shadow, angle, placement=placement, icon=icon_names)


_FAMILY_RENDERERS: dict[str, Callable[[Image.Image, random.Random, _Ctx], _Mark]] = {
    "corner_text": _family_corner_text,
    "center_text": _family_center_text,
    "tiled_text": _family_tiled_text,
    "stamp": _family_stamp,
    "random_text": _family_random_text,
    "diagonal_tiled": _family_diagonal_tiled,
    "logo": _family_logo,
    "icon_handle": _family_icon_handle,
}
STYLE_FAMILIES: tuple[str, ...] = tuple(_FAMILY_RENDERERS)
# Relative frequency of each family when several are allowed (roughly as in real uploads).
FAMILY_WEIGHTS: dict[str, float] = {
    "corner_text": 0.22,
    "center_text": 0.14,
    "tiled_text": 0.1,
    "stamp": 0.1,
    "random_text": 0.12,
    "diagonal_tiled": 0.08,
    "logo": 0.14,
    "icon_handle": 0.1,
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


def _floor(style: _Style) -> tuple[float, float]:
    """(visibility floor, highest opacity the floor may push to)."""
    return (FAINT_MIN_VISIBILITY, 0.35) if style.faint else (MIN_VISIBILITY, 0.9)


def _compose_logo(
    image: Image.Image, mark: _Mark, rng: random.Random
) -> tuple[Image.Image, tuple[int, int, int], float]:
    style = mark.style
    assert mark.rgba is not None
    size = image.size
    opacity = style.opacity
    floor, cap = _floor(style)
    where = mark.fill.point([255 if v > 127 else 0 for v in range(256)])
    gray = image.convert("L")
    logo = mark.rgba
    color: tuple[int, int, int] | None = None
    if where.getbbox() is not None:
        best = max(((255, 255, 255), (0, 0, 0)), key=lambda c: _median_contrast(gray, where, c))
        if mark.mono:
            color = _base_color(rng, style.color_mode)
            if _median_contrast(gray, where, color) < 70 and rng.random() < 0.7:
                color = best
        else:
            diff = ImageChops.difference(gray, logo.convert("RGB").convert("L"))
            if float(ImageStat.Stat(diff, mask=where).median[0]) < 30:
                color, mark.mono = best, True  # its colours do not show here: a one-colour version does
        if color is not None:
            logo = _layer(size, color, logo.getchannel("A"))
        diff = ImageChops.difference(gray, logo.convert("RGB").convert("L"))
        visible = float(ImageStat.Stat(diff, mask=where).median[0])
        if visible < 30 and color is not None:
            color = best
            logo = _layer(size, color, logo.getchannel("A"))
            visible = _median_contrast(gray, where, color)
        if opacity * visible / 255 < floor:
            opacity = min(cap, floor * 255 / max(visible, 1.0) + 0.02)
            if opacity * visible / 255 < floor and color != best:
                color = best
                logo = _layer(size, color, logo.getchannel("A"))
                visible = _median_contrast(gray, where, color)
                opacity = min(0.9, max(opacity, floor * 255 / max(visible, 1.0) + 0.02))
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    mean = ImageStat.Stat(logo.convert("RGB"), mask=where).mean if where.getbbox() else [128, 128, 128]
    tone = color if color is not None else tuple(round(v) for v in mean[:3])
    if style.effect == "shadow":
        shadow_color = (0, 0, 0) if _luma(tone) > 90 else (255, 255, 255)
        layer.alpha_composite(_layer(size, shadow_color, _scaled(mark.shadow, 0.6)))
    elif style.effect == "outline":
        layer.alpha_composite(_layer(size, (20, 20, 20) if _luma(tone) > 127 else (245, 245, 245), mark.outer))
    layer.alpha_composite(logo)
    layer.putalpha(_scaled(layer.getchannel("A"), opacity))
    out = image.convert("RGBA")
    out.alpha_composite(layer)
    return out.convert("RGB"), tone, opacity  # type: ignore[return-value]


def _compose(image: Image.Image, mark: _Mark, rng: random.Random) -> tuple[Image.Image, tuple[int, int, int], float]:
    """Choose colours (keeping the mark visible) and composite; returns (image, colour, opacity)."""
    if mark.rgba is not None:
        return _compose_logo(image, mark, rng)
    style = mark.style
    color = _base_color(rng, style.color_mode)
    effect = style.effect
    opacity = style.opacity
    floor, cap = _floor(style)
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
            if opacity * visible / 255 < floor:
                opacity = min(cap, floor * 255 / max(visible, 1.0) + 0.02)
                if opacity * visible / 255 < floor and color != best:
                    color = best  # too faint even at the cap: the colour that shows most
                    stroke_color = (20, 20, 20) if _luma(color) > 127 else (245, 245, 245)
                    visible = _median_contrast(gray, where, color)
                    opacity = min(0.9, max(opacity, floor * 255 / max(visible, 1.0) + 0.02))

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


# --------------------------------------------------------- scene text (negatives)

HARD_NEGATIVE_KINDS = ("product_label", "printed_text", "price_tag", "box_face")
_SCENE_WEIGHTS = {"product_label": 0.3, "printed_text": 0.3, "price_tag": 0.2, "box_face": 0.2}
# Width of the element, relative to the image width.
_SCENE_WIDTH = {"product_label": (0.25, 0.5), "printed_text": (0.2, 0.5), "price_tag": (0.12, 0.25),
                "box_face": (0.35, 0.65)}  # fmt: skip
_SCENE_MARGIN = 0.04  # never closer than this (of the side) to the image border

_BRAND_SYLLABLES = ("va", "ro", "mi", "sa", "ne", "ka", "lu", "do", "ze", "ta", "pa", "ri", "bo", "fa", "li", "no")
_BRAND_ENDINGS = ("na", "ro", "lix", "ta", "vo", "sa", "nex", "mo", "line", "ra", "lia", "tis", "ko")
_FA_BRANDS = (
    "مهرآوا", "گلسار", "آذرین", "سپیدار", "کیمیا", "تارا", "پرنیان", "نیکان", "آفتاب", "رویا", "البرز", "ماهور",
    "نوشین", "باران", "زرین", "نگین", "آوا",
)  # fmt: skip
_FA_PRODUCTS = (
    "چای سیاه", "روغن زیتون", "عسل طبیعی", "شامپو", "کرم مرطوب کننده", "قهوه", "زعفران", "پنیر", "ماکارونی",
    "برنج ایرانی", "آب معدنی", "مایع ظرفشویی", "دستمال کاغذی", "رب گوجه فرنگی", "شکلات تلخ", "بیسکویت",
    "ادویه کاری", "کنسرو ماهی", "خمیر دندان", "نوشابه",
)  # fmt: skip
_LATIN_PRODUCTS = (
    "Green Tea", "Olive Oil", "Shampoo", "Natural Honey", "Dark Chocolate", "Mineral Water", "Coffee Beans",
    "Hand Cream", "Basmati Rice", "Tomato Paste", "Biscuits", "Saffron", "Toothpaste",
)  # fmt: skip
_UNITS = {  # unit -> (Persian template, Latin template, amounts)
    "g": ("{} گرم", "{} g", (100, 200, 250, 400, 450, 500, 750, 900)),
    "kg": ("{} کیلوگرم", "{} kg", (1, 2, 5)),
    "l": ("{} لیتر", "{} L", (1, 1.5, 2)),
    "ml": ("{} میلی لیتر", "{}ml", (200, 250, 330, 500, 750)),
}
_FA_FINE_PRINT = (
    "ترکیبات: آب، شکر، نمک، اسید سیتریک", "ترکیبات: شیر پاستوریزه، خامه، نمک", "تاریخ تولید: {date}",
    "تاریخ انقضا: {date}", "ساخت ایران", "پروانه ساخت: {num}", "سری ساخت: {num}", "در جای خشک و خنک نگهداری شود",
)  # fmt: skip
_LATIN_FINE_PRINT = (
    "Ingredients: water, sugar, salt, citric acid", "Ingredients: wheat flour, sugar, palm oil", "EXP {edate}",
    "MFD {edate}", "Made in Iran", "Store in a cool, dry place", "Batch {num}", "Best before {edate}",
)  # fmt: skip


@dataclass(frozen=True)
class SceneTextInfo:
    """What :func:`render_scene_text` drew (JSON-serialisable via ``dataclasses.asdict``).

    Attributes:
        kind: one of :data:`HARD_NEGATIVE_KINDS`.
        text: every text line drawn, joined by newlines.
        script: ``latin``, ``persian`` or ``mixed``.
        font: file name of the font of the main line (brand, price).
        fonts: file names of every font used.
        ink: RGB of the main text.
        background: RGB of the label, sticker or box face (None for ``printed_text``).
        warp: ``perspective``, ``cylinder`` or ``wave`` (cylinder/wave also get perspective).
        angle: in-plane rotation in degrees.
        bbox: ``(left, top, right, bottom)`` of the pixels it changed (shadow included).
        rel_size: width of the element divided by the image width.
        opacity: 1.0: scene text is opaque (only its anti-aliased edges blend).
        split: font pool used (``train``, ``heldout`` or ``any``).
    """

    kind: str
    text: str
    script: str
    font: str
    fonts: tuple[str, ...]
    ink: tuple[int, int, int]
    background: tuple[int, int, int] | None
    warp: str
    angle: float
    bbox: tuple[int, int, int, int]
    rel_size: float
    opacity: float = 1.0
    split: str = "any"


@dataclass
class _ScenePart:
    layer: Image.Image  # full-image RGBA, lit, alpha 1 inside
    shadow: float  # strength of the contact shadow (0: none)
    shadow_offset: tuple[int, int]
    shadow_blur: float
    blur: float
    kind: str
    texts: list[str] = field(default_factory=list)
    fonts: list[str] = field(default_factory=list)
    ink: tuple[int, int, int] = (0, 0, 0)
    background: tuple[int, int, int] | None = None
    warp: str = "perspective"
    angle: float = 0.0
    width: float = 0.0


class _Writer:
    """Draws fitted text lines onto a design and remembers texts and fonts."""

    def __init__(self, rng: random.Random, split: str) -> None:
        self.rng, self.split = rng, split
        self.texts: list[str] = []
        self.fonts: list[str] = []

    def line(
        self,
        design: Image.Image,
        text: str,
        box: tuple[float, float, float, float],
        color: tuple[int, int, int],
        align: str = "center",
        latin: str | None = None,
    ) -> float:
        """Fit ``text`` into ``box`` and paint it; ``latin`` replaces Persian text no font of the pool draws.

        Returns the bottom of the drawn text (the box top when nothing was drawn).
        """
        font_path = _font_for(self.rng, text, self.split)
        if not font_path and _is_persian(text):
            if latin is None:
                return box[1]
            text, font_path = latin, _font_for(self.rng, latin, self.split)
        x0, y0, x1, y1 = box
        mask = _plain_mask(text, _fit(text, font_path, x1 - x0, y1 - y0), "right" if _is_persian(text) else "left")
        x = {"center": x0 + (x1 - x0 - mask.width) / 2, "left": x0, "right": x1 - mask.width}[align]
        y = y0 + (y1 - y0 - mask.height) / 2
        _paint(design, mask, color, (round(x), round(y)))
        self.texts.append(text)
        self.fonts.append(Path(font_path).name if font_path else "pillow-default")
        return y + mask.height


def _latin_brand(rng: random.Random) -> str:
    name = "".join(rng.choice(_BRAND_SYLLABLES) for _ in range(rng.choice((1, 2)))) + rng.choice(_BRAND_ENDINGS)
    return name.upper() if rng.random() < 0.5 else name.capitalize()


def _amount(rng: random.Random, persian: bool) -> str:
    fa, latin, amounts = _UNITS[rng.choice(tuple(_UNITS))]
    value = rng.choice(amounts)
    number = f"{value:g}"
    if persian:
        text = fa.format(number.translate(_PERSIAN_DIGITS))
        return f"وزن خالص: {text}" if "گرم" in text and rng.random() < 0.3 else text
    text = latin.format(number)
    return f"NET WT {text}" if text.endswith("g") and rng.random() < 0.3 else text


def _fine_print(rng: random.Random, persian: bool) -> str:
    template = rng.choice(_FA_FINE_PRINT if persian else _LATIN_FINE_PRINT)
    date = f"{rng.randint(1401, 1404)}/{rng.randint(1, 12):02d}/{rng.randint(1, 29):02d}"
    edate = f"{rng.randint(2024, 2027)}/{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}"
    num = f"{rng.randint(10, 99)}/{rng.randint(10000, 99999)}"
    text = template.format(date=date, edate=edate, num=num)
    return text.translate(_PERSIAN_DIGITS) if persian and rng.random() < 0.7 else text


def _light_color(
    rng: random.Random, saturation: tuple[float, float], value: tuple[float, float]
) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return (round(r * 255), round(g * 255), round(b * 255))


def _contrasting(rng: random.Random, background: tuple[int, int, int]) -> tuple[int, int, int]:
    """A dark or light ink that reads on ``background`` (sometimes coloured)."""
    dark = _luma(background) > 140
    for _ in range(6):
        if rng.random() < 0.6:
            v = rng.randint(15, 45) if dark else rng.randint(235, 252)
            color = (v, v, v)
        else:
            color = _light_color(rng, (0.5, 1.0), (0.2, 0.45) if dark else (0.85, 1.0))
        if abs(_luma(color) - _luma(background)) >= 90:
            return color
    return (20, 20, 20) if dark else (250, 250, 250)


def _barcode(rng: random.Random, size: tuple[int, int], split: str, writer: _Writer) -> Image.Image:
    w, h = size
    code = Image.new("RGBA", size, (255, 255, 255, 255))
    draw = ImageDraw.Draw(code)
    left_half = [rng.randrange(2) for _ in range(42)]
    right_half = [rng.randrange(2) for _ in range(42)]
    modules = [1, 0, 1] + left_half + [0, 1, 0, 1, 0] + right_half + [1, 0, 1]
    unit = (w * 0.9) / len(modules)
    x0, bar_bottom = w * 0.05, h * 0.72
    guards = {0, 2, 45, 47, 49, 92, 94}
    for i, bit in enumerate(modules):
        if bit:
            bottom = h * 0.8 if i in guards else bar_bottom
            draw.rectangle((x0 + i * unit, h * 0.05, x0 + (i + 1) * unit - 0.5, bottom), fill=(10, 10, 10, 255))
    digits = "626" + "".join(str(rng.randrange(10)) for _ in range(10))
    writer.line(code, f"{digits[0]} {digits[1:7]} {digits[7:]}", (w * 0.05, h * 0.76, w * 0.95, h * 0.99), (10, 10, 10))
    return code


def _design_label(rng: random.Random, split: str, writer: _Writer) -> tuple[Image.Image, tuple, tuple]:
    w = 420
    h = round(w * rng.uniform(0.55, 0.9))
    paper_kind = _weighted(rng, {"cream": 0.35, "white": 0.25, "pale": 0.2, "strong": 0.2})
    paper = {
        "cream": lambda: (rng.randint(240, 252), rng.randint(232, 245), rng.randint(205, 228)),
        "white": lambda: (rng.randint(243, 252),) * 3,
        "pale": lambda: _light_color(rng, (0.1, 0.3), (0.9, 1.0)),
        "strong": lambda: _light_color(rng, (0.55, 0.95), (0.35, 0.8)),
    }[paper_kind]()
    ink = _contrasting(rng, paper)
    accent = _contrasting(rng, paper)
    design = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    shape = Image.new("L", (w, h))
    radius = rng.choice((0, 0, round(0.04 * w), round(0.08 * w)))
    ImageDraw.Draw(shape).rounded_rectangle((0, 0, w - 1, h - 1), radius=radius, fill=255)
    _paint(design, shape, paper)
    if rng.random() < 0.5:
        inset = round(0.03 * w)
        line = Image.new("L", (w, h))
        ImageDraw.Draw(line).rounded_rectangle(
            (inset, inset, w - 1 - inset, h - 1 - inset),
            radius=max(0, radius - inset),
            outline=255,
            width=max(2, round(0.008 * w)),
        )
        _paint(design, line, accent)
    margin = 0.07 * w
    persian_brand = rng.random() < 0.45
    brand = rng.choice(_FA_BRANDS) if persian_brand else _latin_brand(rng)
    y = writer.line(design, brand, (margin, 0.05 * h, w - margin, 0.27 * h), accent, latin=_latin_brand(rng))
    persian_product = rng.random() < 0.7
    product = rng.choice(_FA_PRODUCTS) if persian_product else rng.choice(_LATIN_PRODUCTS)
    y = writer.line(design, product, (margin, y + 0.03 * h, w - margin, y + 0.18 * h), ink,
                    latin=rng.choice(_LATIN_PRODUCTS))  # fmt: skip
    persian_amount = rng.random() < 0.5
    y = writer.line(design, _amount(rng, persian_amount), (margin, y + 0.02 * h, w - margin, y + 0.12 * h), ink,
                    latin=_amount(rng, False))  # fmt: skip
    top, bottom = y + 0.04 * h, h - 0.06 * h
    fine_left, fine_right = margin, w - margin
    if rng.random() < 0.7 and bottom - top > 0.12 * h:
        code_w = round(0.32 * w)
        code_h = round(min(0.3 * h, bottom - top))
        code = _barcode(rng, (code_w, code_h), split, writer)
        if rng.random() < 0.5:
            design.alpha_composite(code, dest=(round(w - margin - code_w), round(bottom - code_h)))
            fine_right = w - margin - code_w - 0.04 * w
        else:
            design.alpha_composite(code, dest=(round(margin), round(bottom - code_h)))
            fine_left = margin + code_w + 0.04 * w
    n_lines = rng.choice((2, 3))
    step = (bottom - top) / n_lines
    if step >= 5:
        for k in range(n_lines):
            persian = rng.random() < 0.6
            text = _fine_print(rng, persian)
            writer.line(design, text, (fine_left, top + k * step, fine_right, top + (k + 0.8) * step), ink,
                        align="right" if _is_persian(text) else "left", latin=_fine_print(rng, False))  # fmt: skip
    return design, accent, paper


def _design_price_tag(rng: random.Random, split: str, writer: _Writer) -> tuple[Image.Image, tuple, tuple]:
    w = 260
    h = round(w * rng.uniform(0.45, 0.7))
    paper = rng.choice(((250, 215, 30), (210, 35, 45), (248, 248, 246), (245, 140, 30), (40, 150, 70), (240, 90, 150)))
    ink = (20, 20, 20) if _luma(paper) > 140 else (250, 250, 250)
    design = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    shape = Image.new("L", (w, h))
    draw = ImageDraw.Draw(shape)
    tag = rng.random() < 0.4
    left = 0.0
    if tag:  # luggage-tag outline: pointed left end with a punched hole
        point = 0.2 * w
        draw.polygon([(0, h / 2), (point, 0), (w - 1, 0), (w - 1, h - 1), (point, h - 1)], fill=255)
        r = 0.06 * h
        draw.ellipse((point * 0.55 - r, h / 2 - r, point * 0.55 + r, h / 2 + r), fill=0)
        left = point
    else:
        draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=round(rng.uniform(0.03, 0.2) * h), fill=255)
    _paint(design, shape, paper)
    margin = 0.06 * w
    persian = rng.random() < 0.65
    labels = ("قیمت", "فقط", "ویژه", "قیمت مصرف کننده") if persian else ("PRICE", "SALE", "ONLY", "NEW")
    label = rng.choice(labels)
    y = writer.line(design, label, (left + margin, 0.06 * h, w - margin, 0.3 * h), ink, latin="PRICE")
    amount = rng.randint(19, 990) * 1000
    if persian:
        price = f"{amount:,}".replace(",", "٬").translate(_PERSIAN_DIGITS) + " تومان"
    else:
        dollars, euros = rng.randint(2, 99), rng.randint(2, 60)
        price = rng.choice((f"{amount:,} T", f"${dollars}.99", f"{amount // 1000}K", f"€{euros},90"))
    bottom = 0.94 * h
    if rng.random() < 0.3:  # the old price, struck through
        old = f"{amount * 5 // 4:,}"
        old = old.replace(",", "٬").translate(_PERSIAN_DIGITS) if persian else old
        end = writer.line(design, old, (left + margin + 0.2 * w, y + 0.01 * h, w - margin - 0.2 * w, y + 0.2 * h), ink,
                          latin=f"{amount * 5 // 4:,}")  # fmt: skip
        strike = Image.new("L", (w, h))
        ImageDraw.Draw(strike).line((left + margin + 0.25 * w, (y + end) / 2 + 0.02 * h, w - margin - 0.25 * w,
                                     (y + end) / 2 - 0.02 * h), fill=255, width=max(2, round(0.012 * h)))  # fmt: skip
        _paint(design, strike, ink)
        y = end
    writer.line(design, price, (left + margin, y + 0.04 * h, w - margin, bottom), ink, latin=f"{amount:,} T")
    writer.texts.insert(0, writer.texts.pop())  # the price is the main line
    writer.fonts.insert(0, writer.fonts.pop())
    return design, ink, paper


def _design_box_face(rng: random.Random, split: str, writer: _Writer) -> tuple[Image.Image, tuple, tuple]:
    w = 520
    h = round(w * rng.uniform(0.6, 1.0))
    roll = rng.random()
    panel = _light_color(rng, (0.5, 0.95), (0.35, 0.9)) if roll < 0.7 else (
        (rng.randint(15, 40),) * 3 if roll < 0.85 else (rng.randint(238, 250),) * 3)  # fmt: skip
    design = Image.new("RGBA", (w, h), (*panel, 255))
    accent = _light_color(rng, (0.6, 1.0), (0.6, 1.0))
    if rng.random() < 0.6:  # a band or a swoosh in a second colour
        band = Image.new("L", (w, h))
        top = rng.uniform(0.55, 0.75) * h
        if rng.random() < 0.5:
            ImageDraw.Draw(band).rectangle((0, top, w, top + rng.uniform(0.12, 0.25) * h), fill=255)
        else:
            swoosh = [(0, top), (w, top - 0.15 * h), (w, top + 0.05 * h), (0, top + 0.2 * h)]
            ImageDraw.Draw(band).polygon(swoosh, fill=255)
        _paint(design, band, accent)
    edge = Image.new("L", (w, h))
    ImageDraw.Draw(edge).rectangle((0, 0, w - 1, h - 1), outline=255, width=max(2, round(0.012 * w)))
    _paint(design, edge, tuple(round(c * 0.75) for c in panel))  # type: ignore[arg-type]
    ink = _contrasting(rng, panel)
    persian_brand = rng.random() < 0.4
    brand = rng.choice(_FA_BRANDS) if persian_brand else _latin_brand(rng)
    margin = 0.08 * w
    y = writer.line(design, brand, (margin, 0.1 * h, w - margin, 0.4 * h), ink, latin=_latin_brand(rng))
    product = rng.choice(_FA_PRODUCTS) if rng.random() < 0.6 else rng.choice(_LATIN_PRODUCTS)
    writer.line(
        design, product, (margin, y + 0.04 * h, w - margin, y + 0.16 * h), ink, latin=rng.choice(_LATIN_PRODUCTS)
    )
    amount = _amount(rng, rng.random() < 0.5)
    writer.line(design, amount, (w * 0.55, 0.86 * h, w - margin, 0.95 * h), _contrasting(rng, panel), align="right",
                latin=_amount(rng, False))  # fmt: skip
    return design, ink, panel


def _design_printed(rng: random.Random, split: str, writer: _Writer, surface: float) -> tuple[Image.Image, tuple, None]:
    """Text printed straight on the object: no background, ink chosen against the surface luminance."""
    dark = surface > 120
    if rng.random() < 0.7:
        v = rng.randint(10, 45) if dark else rng.randint(225, 250)
        ink = (v, v, v)
    else:
        ink = _light_color(rng, (0.5, 1.0), (0.25, 0.45) if dark else (0.85, 1.0))
    if rng.random() < 0.15 and not dark:
        ink = (212, 175, 55)  # gold foil on a dark object
    w = 480
    h = round(w * rng.uniform(0.35, 0.6))
    design = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    brand = rng.choice(_FA_BRANDS) if rng.random() < 0.45 else _latin_brand(rng)
    lines = [(brand, 0.5)]
    if rng.random() < 0.75:
        lines.append((rng.choice(_FA_PRODUCTS) if rng.random() < 0.6 else rng.choice(_LATIN_PRODUCTS), 0.25))
    if rng.random() < 0.5:
        lines.append((_amount(rng, rng.random() < 0.5), 0.18))
    total = sum(share for _, share in lines)
    y = 0.03 * h
    for text, share in lines:
        height = share / total * 0.94 * h
        latin = _latin_brand(rng) if text == brand else rng.choice(_LATIN_PRODUCTS)
        y = max(y, writer.line(design, text, (0.04 * w, y, 0.96 * w, y + height), ink, latin=latin))
    bbox = design.getchannel("A").getbbox()
    if bbox is not None:
        design = design.crop((max(0, bbox[0] - 4), max(0, bbox[1] - 4), min(w, bbox[2] + 4), min(h, bbox[3] + 4)))
    return design, ink, None


def _remap(design: Image.Image, src_x: np.ndarray, src_y: np.ndarray) -> Image.Image:
    """Sample RGBA ``design`` at (src_x, src_y) per output pixel (bilinear, premultiplied)."""
    from scipy import ndimage

    arr = np.asarray(design, dtype=np.float32)
    alpha = arr[..., 3:4] / 255.0
    pre = np.concatenate([arr[..., :3] * alpha, arr[..., 3:4]], axis=-1)
    out = np.stack(
        [ndimage.map_coordinates(pre[..., c], [src_y, src_x], order=1, cval=0.0, mode="constant") for c in range(4)],
        axis=-1,
    )
    a = out[..., 3:4]
    rgb = np.where(a > 0.5, out[..., :3] * 255.0 / np.maximum(a, 1e-3), 0.0)
    return Image.fromarray(np.clip(np.concatenate([rgb, a], axis=-1) + 0.5, 0, 255).astype(np.uint8), "RGBA")


def _shade(image: Image.Image, factor: np.ndarray) -> Image.Image:
    arr = np.asarray(image, dtype=np.float32).copy()
    arr[..., :3] *= factor[..., None] if factor.ndim == 2 else factor
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGBA")


def _warp_cylinder(design: Image.Image, rng: random.Random) -> Image.Image:
    """Wrap round a vertical cylinder seen from slightly above or below: squeezed, bent and shaded at the sides."""
    w, h = design.size
    half = rng.uniform(0.6, 1.1)  # half of the visible arc, radians
    bend = max(1, round(rng.uniform(0.02, 0.07) * w))
    down = rng.random() < 0.5
    yy, xx = np.mgrid[0 : h + bend, 0:w].astype(np.float32)
    t = (xx + 0.5) / w * 2 - 1
    theta = np.arcsin(np.clip(t * math.sin(half), -1, 1))
    src_x = (theta / half + 1) / 2 * w - 0.5
    curve = (1 - np.cos(theta)) / (1 - math.cos(half))
    src_y = yy - (bend * curve if down else bend * (1 - curve))
    warped = _remap(design, src_x, src_y)
    light = rng.uniform(-0.5, 0.5) * half
    shade = 0.72 + 0.28 * np.cos(theta - light) + 0.1 * np.exp(-(((theta - light) / 0.18) ** 2))
    return _shade(warped, shade.astype(np.float32))


def _warp_wave(design: Image.Image, rng: random.Random) -> Image.Image:
    """A soft wave (pouch, bag, cloth): rows shifted by a sine across the width, lit by the slope."""
    w, h = design.size
    amp = max(1.0, rng.uniform(0.03, 0.08) * h)
    period = rng.uniform(0.8, 1.6) * w
    phase = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0 : h + round(2 * amp) + 1, 0:w].astype(np.float32)
    angle = 2 * math.pi * xx / period + phase
    warped = _remap(design, xx, yy - amp - amp * np.sin(angle))
    return _shade(warped, (1.0 + 0.08 * np.cos(angle)).astype(np.float32))


def _perspective_coeffs(dst: Sequence[tuple[float, float]], src: Sequence[tuple[float, float]]) -> list[float]:
    """PIL PERSPECTIVE data mapping output points ``dst`` to input points ``src``."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return [float(c) for c in np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64))]


def _quad(w: float, h: float, angle: float, kx: float, ky: float) -> list[tuple[float, float]]:
    """Corners (tl, tr, br, bl) around the origin of a w x h plane turned by yaw kx, pitch ky and ``angle``."""
    rad = math.radians(angle)
    ca, sa = math.cos(rad), math.sin(rad)
    out = []
    for x, y in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        y2 = y * (1 + kx * 2 * x / w)  # the nearer side is taller
        x2 = x * (1 + ky * 2 * y / h)
        out.append((x2 * ca + y2 * sa, -x2 * sa + y2 * ca))
    return out


def _object_box(image: Image.Image) -> tuple[float, float, float, float]:
    """Where the product probably is: what differs from a flat border colour, else the central 70 %."""
    width, height = image.size
    n = 48
    thumb = np.asarray(image.convert("RGB").resize((n, n), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(1.2)),
                       dtype=np.int16)  # fmt: skip
    border = np.concatenate([thumb[:2].reshape(-1, 3), thumb[-2:].reshape(-1, 3), thumb[:, :2].reshape(-1, 3),
                             thumb[:, -2:].reshape(-1, 3)])  # fmt: skip
    background = np.median(border, axis=0)
    spread = float(np.median(np.abs(border - background).max(axis=-1)))
    box = (0.15, 0.15, 0.85, 0.85)
    if spread < 14:  # a flat backdrop: find the object on it
        differs = np.abs(thumb - background).max(axis=-1) > max(30.0, 3 * spread)
        share = float(differs.mean())
        if 0.04 <= share <= 0.9:
            ys, xs = np.nonzero(differs)
            box = (np.percentile(xs, 2) / n, np.percentile(ys, 2) / n, (np.percentile(xs, 98) + 1) / n,
                   (np.percentile(ys, 98) + 1) / n)  # fmt: skip
    m = _SCENE_MARGIN + 0.02
    left, top = max(box[0], m) * width, max(box[1], m) * height
    right, bottom = min(box[2], 1 - m) * width, min(box[3], 1 - m) * height
    if right - left < 0.2 * width:
        mid = (left + right) / 2
        left, right = max(m * width, mid - 0.1 * width), min((1 - m) * width, mid + 0.1 * width)
    if bottom - top < 0.2 * height:
        mid = (top + bottom) / 2
        top, bottom = max(m * height, mid - 0.1 * height), min((1 - m) * height, mid + 0.1 * height)
    return left, top, right, bottom


def _place_scene(
    image: Image.Image, design: Image.Image, rng: random.Random, box: tuple[float, float, float, float],
    rel_width: float, max_angle: float, persp: float,
) -> tuple[Image.Image, float, list[tuple[float, float]]]:  # fmt: skip
    """Warp ``design`` into the image over the object box; returns (full-image RGBA layer, angle, corners)."""
    width, height = image.size
    left, top, right, bottom = box
    mx, my = _SCENE_MARGIN * width, _SCENE_MARGIN * height
    target = max(0.1 * width, min(rel_width * width, 0.95 * (right - left)))
    scale = min(target / design.width, 0.85 * (height - 2 * my) / design.height)
    angle = rng.uniform(-max_angle, max_angle)
    kx, ky = rng.uniform(-persp, persp), rng.uniform(-0.6 * persp, 0.6 * persp)
    for _ in range(8):
        w, h = design.width * scale, design.height * scale
        quad = _quad(w, h, angle, kx, ky)
        qx0, qx1 = min(p[0] for p in quad), max(p[0] for p in quad)
        qy0, qy1 = min(p[1] for p in quad), max(p[1] for p in quad)
        lo_x, hi_x = mx - qx0, width - mx - qx1
        lo_y, hi_y = my - qy0, height - my - qy1
        if lo_x <= hi_x and lo_y <= hi_y:
            break
        scale *= 0.85
    in_lo_x, in_hi_x = max(lo_x, left - qx0), min(hi_x, right - qx1)
    in_lo_y, in_hi_y = max(lo_y, top - qy0), min(hi_y, bottom - qy1)
    cx_mid, cy_mid = (left + right) / 2, (top + bottom) / 2
    cx = rng.uniform(in_lo_x, in_hi_x) if in_lo_x <= in_hi_x else min(max(cx_mid, lo_x), hi_x)
    cy = rng.uniform(in_lo_y, in_hi_y) if in_lo_y <= in_hi_y else min(max(cy_mid, lo_y), hi_y)
    size = (max(1, round(design.width * scale)), max(1, round(design.height * scale)))
    small = design.resize(size, Image.Resampling.LANCZOS)
    corners = [(0.0, 0.0), (float(size[0]), 0.0), (float(size[0]), float(size[1])), (0.0, float(size[1]))]
    dst = [(cx + x, cy + y) for x, y in _quad(size[0], size[1], angle, kx, ky)]
    layer = small.transform(image.size, Image.Transform.PERSPECTIVE, _perspective_coeffs(dst, corners),
                            Image.Resampling.BICUBIC)  # fmt: skip
    return layer, angle, dst


def _extrude(
    image: Image.Image, layer: Image.Image, quad: Sequence[tuple[float, float]], panel: Sequence[int],
    rng: random.Random,
) -> Image.Image:  # fmt: skip
    """Add the darker side and lighter top of a box behind a box face (tl, tr, br, bl corners)."""
    width, height = image.size
    tl, tr, br, bl = quad
    face_w = math.dist(tl, tr)
    right = rng.random() < 0.5
    depth = rng.uniform(0.12, 0.25) * face_w
    vx, vy = (depth if right else -depth), -0.45 * depth
    mx, my = _SCENE_MARGIN * width, _SCENE_MARGIN * height
    for _ in range(6):  # keep the receding edges inside the margins
        moved = [(x + vx, y + vy) for x, y in quad]
        if all(mx <= x <= width - mx and my <= y <= height - my for x, y in moved):
            break
        vx, vy = vx * 0.7, vy * 0.7
    else:
        return layer
    side_edge = (tr, br) if right else (tl, bl)
    side = [side_edge[0], (side_edge[0][0] + vx, side_edge[0][1] + vy), (side_edge[1][0] + vx, side_edge[1][1] + vy),
            side_edge[1]]  # fmt: skip
    top = [tl, (tl[0] + vx, tl[1] + vy), (tr[0] + vx, tr[1] + vy), tr]
    back = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(back)
    shade = rng.uniform(0.55, 0.7)
    draw.polygon(side, fill=(*(round(c * shade) for c in panel), 255))
    draw.polygon(top, fill=(*(min(255, round(c * 1.12 + 10)) for c in panel), 255))
    back.alpha_composite(layer)
    return back


def _light(layer: Image.Image, image: Image.Image, rng: random.Random, gamma: float, gradient: float) -> Image.Image:
    """Match the element to the photo's light: local low-frequency luminance, overall level, a soft gradient, grain."""
    bbox = layer.getchannel("A").getbbox()
    if bbox is None:
        return layer
    width, height = image.size
    small = image.convert("L").resize((max(1, width // 8), max(1, height // 8)), Image.Resampling.BOX)
    lum_full = small.filter(ImageFilter.GaussianBlur(2)).resize(image.size, Image.Resampling.BILINEAR)
    crop = layer.crop(bbox)
    arr = np.asarray(crop, dtype=np.float32).copy()
    alpha = arr[..., 3] / 255.0
    lum = np.asarray(lum_full.crop(bbox), dtype=np.float32) + 1.0
    mean = float((lum * alpha).sum() / max(alpha.sum(), 1e-6))
    ratio = np.clip(lum / mean, 0.6, 1.4) ** gamma
    level = float(np.clip((mean / 170.0) ** 0.3, 0.65, 1.05))
    yy, xx = np.mgrid[0 : arr.shape[0], 0 : arr.shape[1]].astype(np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    extent = max(arr.shape[0], arr.shape[1])
    along = (xx - arr.shape[1] / 2) * math.cos(direction) + (yy - arr.shape[0] / 2) * math.sin(direction)
    ramp = 1 + gradient * along / extent
    grain = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 1.6, arr.shape[:2] + (1,)).astype(np.float32)
    arr[..., :3] = arr[..., :3] * (ratio * level * ramp)[..., None] + grain
    out = layer.copy()
    out.paste(Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGBA"), bbox[:2])
    return out


def _scene_text_parts(image: Image.Image, rng: random.Random, kind: str, split: str) -> _ScenePart:
    """Design, warp, place and light one scene-text element (not yet composited)."""
    writer = _Writer(rng, split)
    box = _object_box(image)
    if kind == "product_label":
        design, ink, background = _design_label(rng, split, writer)
        warp = "cylinder" if rng.random() < 0.35 else "perspective"
        max_angle, persp, gamma, gradient = 8.0, 0.12, 0.5, rng.uniform(0.0, 0.12)
        shadow, blur = rng.uniform(0.25, 0.45), rng.uniform(0.35, 0.7)
    elif kind == "printed_text":
        gray = image.convert("L").crop(tuple(round(v) for v in box))  # type: ignore[arg-type]
        design, ink, background = _design_printed(rng, split, writer, ImageStat.Stat(gray).mean[0])
        warp = _weighted(rng, {"cylinder": 0.45, "wave": 0.2, "perspective": 0.35})
        max_angle, persp, gamma, gradient = 10.0, 0.15, 0.85, rng.uniform(0.0, 0.1)
        shadow, blur = 0.0, rng.uniform(0.3, 0.6)
    elif kind == "price_tag":
        design, ink, background = _design_price_tag(rng, split, writer)
        warp = "perspective"
        max_angle, persp, gamma, gradient = 15.0, 0.1, 0.5, rng.uniform(0.0, 0.1)
        shadow, blur = rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.6)
    else:  # box_face
        design, ink, background = _design_box_face(rng, split, writer)
        warp = "perspective"
        max_angle, persp, gamma, gradient = 6.0, 0.22, 0.5, rng.uniform(0.08, 0.2)
        shadow, blur = rng.uniform(0.2, 0.35), rng.uniform(0.35, 0.7)
    if warp == "cylinder":
        design = _warp_cylinder(design, rng)
    elif warp == "wave":
        design = _warp_wave(design, rng)
    rel_width = rng.uniform(*_SCENE_WIDTH[kind])
    layer, angle, quad = _place_scene(image, design, rng, box, rel_width, max_angle, persp)
    if kind == "box_face" and background is not None and rng.random() < 0.7:
        layer = _extrude(image, layer, quad, background, rng)
    layer = _light(layer, image, rng, gamma, gradient)
    offset = (rng.choice((-1, 1)) * rng.randint(1, 3), rng.randint(1, 3))
    alpha_box = layer.getchannel("A").getbbox() or (0, 0, 0, 0)
    return _ScenePart(
        layer=layer, shadow=shadow, shadow_offset=offset, shadow_blur=rng.uniform(1.2, 2.5), blur=blur, kind=kind,
        texts=writer.texts, fonts=writer.fonts, ink=tuple(ink),
        background=None if background is None else tuple(background),
        warp=warp, angle=angle, width=(alpha_box[2] - alpha_box[0]) / image.width,
    )  # fmt: skip


def _composite_scene(image: Image.Image, part: _ScenePart) -> tuple[Image.Image, tuple[int, int, int, int]]:
    alpha = part.layer.getchannel("A")
    out = image.convert("RGB")
    if part.shadow > 0:
        shadow = Image.new("L", image.size)
        shadow.paste(alpha, part.shadow_offset)
        shadow = shadow.filter(ImageFilter.GaussianBlur(part.shadow_blur))
        out = Image.composite(Image.new("RGB", image.size, (0, 0, 0)), out, _scaled(shadow, part.shadow))
    rgba = out.convert("RGBA")
    rgba.alpha_composite(part.layer)
    out = rgba.convert("RGB")
    if part.blur > 0:
        region = alpha.filter(ImageFilter.MaxFilter(5))
        out = Image.composite(out.filter(ImageFilter.GaussianBlur(part.blur)), out, region)
    diff = np.asarray(ImageChops.difference(out, image.convert("RGB"))).max(axis=-1)
    changed_any = Image.fromarray(((diff > 0) * 255).astype(np.uint8), "L")
    return out, changed_any.getbbox() or (0, 0, 0, 0)


def render_scene_text(
    image: Image.Image, rng: random.Random, *, split: str = "any", kind: str | None = None
) -> tuple[Image.Image, SceneTextInfo]:
    """Draw one piece of opaque *scene* text (a hard negative: NOT a watermark) onto a copy of ``image``.

    The element sits on the object area (what differs from a flat backdrop, else the
    central 70 %), never within 4 % of the border; it is perspective-warped (labels and
    print may also be bent round a cylinder or waved), lit by the photo's low-frequency
    luminance, given grain, a slight blur and (labels, tags, boxes) a contact shadow.
    Its pixels are opaque: only anti-aliased edges blend with the photo.

    Args:
        image: the photo (any mode; not modified).
        rng: source of all randomness; the same state gives the same output bytes.
        split: font pool (``train``, ``heldout`` or ``any``), as for :func:`render_watermark`.
        kind: one of :data:`HARD_NEGATIVE_KINDS`, or None for a weighted choice.

    Returns:
        ``(RGB image of the same size, SceneTextInfo)``.

    Raises:
        ValueError: unknown ``split`` or ``kind``.
    """
    _check_split(split)
    if kind is None:
        kind = _weighted(rng, _SCENE_WEIGHTS)
    elif kind not in HARD_NEGATIVE_KINDS:
        raise ValueError(f"unknown scene-text kind {kind!r}: allowed are {', '.join(HARD_NEGATIVE_KINDS)}")
    base = image.convert("RGB")
    part = _scene_text_parts(base, rng, kind, split)
    out, bbox = _composite_scene(base, part)
    persian = [_is_persian(t) for t in part.texts]
    script = "mixed" if any(persian) and not all(persian) else ("persian" if persian and all(persian) else "latin")
    info = SceneTextInfo(
        kind=kind,
        text="\n".join(part.texts),
        script=script,
        font=part.fonts[0] if part.fonts else "none",
        fonts=tuple(sorted(set(part.fonts))),
        ink=part.ink,
        background=part.background,
        warp=part.warp,
        angle=round(float(part.angle), 2),
        bbox=tuple(int(v) for v in bbox),  # type: ignore[arg-type]
        rel_size=round(part.width, 4),
        opacity=1.0,
        split=split,
    )
    return out, info


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


def _user_logos(logos: Sequence[Image.Image | str | os.PathLike] | Image.Image | str | os.PathLike | None) -> _Ctx:
    if logos is None:
        return _Ctx(split="any")
    items = [logos] if isinstance(logos, (Image.Image, str, os.PathLike)) else list(logos)
    prepared, names = [], []
    for index, item in enumerate(items):
        prepared.append(prepare_logo(item))
        names.append(Path(item).stem if isinstance(item, (str, os.PathLike)) else str(index))
    return _Ctx(split="any", logos=tuple(prepared), logo_names=tuple(names))


def render_watermark(
    image: Image.Image,
    rng: random.Random,
    *,
    families: Sequence[str] | None = None,
    jpeg_prob: float = DEFAULT_JPEG_PROB,
    split: str = "any",
    logos: Sequence[Image.Image | str | os.PathLike] | Image.Image | str | os.PathLike | None = None,
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
        split: style pool: ``train`` (what training data must use), ``heldout`` (fonts,
            logos, icons and placements never in ``train``) or ``any`` (both; default).
        logos: images (PIL images or files, any mode) for the ``logo`` family instead
            of the built-in pool; opaque ones get their flat backdrop keyed out
            (:func:`prepare_logo`). They are used whatever the split.

    Returns:
        ``(watermarked RGB image of the same size, WatermarkInfo)``.

    Raises:
        ValueError: an unknown or empty family list, an unknown split, ``jpeg_prob``
            outside 0..1, or a fully transparent logo.
    """
    allowed = _check_families(families)
    _check_split(split)
    if not 0.0 <= jpeg_prob <= 1.0:
        raise ValueError(f"jpeg_prob={jpeg_prob!r}: allowed is a number in 0..1")
    ctx = _user_logos(logos)
    ctx.split = split
    base = image.convert("RGB")
    if base is image:  # pragma: no cover - convert() always copies, but be explicit
        base = image.copy()
    family = rng.choices(allowed, weights=[FAMILY_WEIGHTS.get(f, 1.0) for f in allowed], k=1)[0]
    mark = _FAMILY_RENDERERS[family](base, rng, ctx)
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
    if style.font_path:
        font = Path(style.font_path).name
    else:
        font = "pillow-default" if style.text else "none"
    info = WatermarkInfo(
        family=family,
        text=style.text,
        opacity=round(opacity, 4),
        rel_size=round(style.size / base.width, 4),
        kind=style.kind,
        script=style.script,
        font=font,
        color=tuple(int(v) for v in color),  # type: ignore[arg-type]
        effect=style.effect,
        angle=round(float(mark.angle), 2),
        bbox=tuple(int(v) for v in bbox),  # type: ignore[arg-type]
        box_opacity=None if mark.box_opacity is None else round(mark.box_opacity, 4),
        jpeg_quality=quality,
        placement=mark.placement,
        split=split,
        logo=mark.logo,
        icon=mark.icon,
        faint=style.faint,
        rel_width=round((bbox[2] - bbox[0]) / base.width, 4),
    )
    return out, info
