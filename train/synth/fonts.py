"""Fonts: discovery, glyph checks, the catalog, the train/heldout font partition and font choice.

Fonts are discovered lazily on first use (``fc-list``, the usual font folders,
``$WATERMARK_FONT_DIRS`` and matplotlib's bundled DejaVu fonts) and checked glyph by
glyph, so a font that would draw empty boxes ("tofu") is never used for a text it cannot
draw, and a font is Persian-capable only when raqm actually joins its letters.
``scripts/setup_fonts.sh`` installs Noto, farsiweb, DejaVu and Font Awesome on Debian.
Nothing is scanned at import time. How font groups are split between the pools is
:mod:`train.synth.splits`; :func:`train.synth.testing.pinned_fonts` restricts discovery to
given folders for tests.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import random
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, features

from train.synth.splits import check_split, hash_split, partition_groups
from train.synth.text import SCRIPTS, is_persian

FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
FONT_DIRS_ENV = "WATERMARK_FONT_DIRS"
MIN_FONT_PX = 7

_LATIN_PROBE = "AaBbEeGgKkMmRrSsWwZz0123456789@._:/-©"
# Letters and digits only: many good Arabic-script fonts (Noto Naskh Arabic, Titr) have
# no Latin letters; texts that mix scripts are matched to fonts character by character.
_PERSIAN_PROBE = "ابپتجچخدرزژسشصطعفقکگلمنوهی۰۱۲۳۴۵۶۷۸۹"
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
# The fonts the demo dataset is built from: the Debian packages scripts/setup_fonts.sh
# installs (keep the two lists equal) and the fonts the pinned matplotlib wheel bundles.
DECLARED_FONT_PACKAGES = ("fonts-noto-core", "fonts-farsiweb", "fonts-dejavu-core", "fonts-font-awesome")
# Set only through pin_discovery / pin_font_files: discovery then sees these files alone.
_pinned_files: tuple[Path, ...] | None = None


def raqm_available() -> bool:
    """True when Pillow has raqm, which shapes (joins) Persian text."""
    return bool(features.check("raqm"))


def bundled_font_dir() -> Path | None:
    """matplotlib's bundled TrueType folder (DejaVu Sans: Latin + Arabic script), located without importing it."""
    try:
        spec = importlib.util.find_spec("matplotlib")
    except (ImportError, ValueError):  # pragma: no cover - matplotlib is a requirement
        return None
    if spec is None or not spec.origin:
        return None
    return (Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf").resolve()


def pin_discovery(folders: tuple[Path, ...] | None) -> None:
    """Look for fonts in ``folders`` only (None: everywhere again) and forget what was discovered.

    Meant for tests, through :func:`train.synth.testing.pinned_fonts`; while pinned,
    ``fc-list``, the system folders, ``$WATERMARK_FONT_DIRS`` and Font Awesome's system
    paths are ignored.
    """
    pin_font_files(None if folders is None else _pinned_candidates(tuple(Path(f).resolve() for f in folders)))


def pin_font_files(files: list[Path] | None) -> None:
    """Use exactly these font files (None: discover everywhere again); forget what was discovered.

    The order of ``files`` is kept: it decides every seeded font draw.
    """
    global _pinned_files
    _pinned_files = None if files is None else tuple(Path(f) for f in files)
    _font_catalog.cache_clear()
    font_partition.cache_clear()
    _font_split_by_name.cache_clear()


def discovery_pinned() -> bool:
    """True while :func:`pin_discovery` or :func:`pin_font_files` restricts discovery."""
    return _pinned_files is not None


def declared_font_files() -> tuple[list[Path], list[str]]:
    """The declared fonts on this machine, in discovery order, and the declared packages missing.

    The files of :data:`DECLARED_FONT_PACKAGES` as ``dpkg-query -L`` lists them, plus
    matplotlib's bundled fonts; fonts of any other package, folder or
    ``$WATERMARK_FONT_DIRS`` are not among them.
    """
    files: dict[str, Path] = {}
    missing = []
    for package in DECLARED_FONT_PACKAGES:
        try:
            listed = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            listed = None
        paths = [Path(line) for line in listed.stdout.splitlines()] if listed is not None and listed.returncode == 0 else []
        fonts = [p for p in paths if p.suffix.lower() in FONT_SUFFIXES and p.is_file()]
        if not fonts:
            missing.append(package)
        for path in fonts:
            files.setdefault(str(path.resolve()), path.resolve())
    bundled = bundled_font_dir()
    if bundled is not None and bundled.is_dir():
        for path in bundled.rglob("*"):
            if path.suffix.lower() in FONT_SUFFIXES and path.is_file():
                files.setdefault(str(path.resolve()), path.resolve())
    return _discovery_order(list(files.values()), bundled), missing


def _pinned_candidates(folders: tuple[Path, ...]) -> list[Path]:
    """Font files under ``folders``, by folder and then relative path (independent of where they live)."""
    unique: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*"), key=lambda p: str(p.relative_to(folder))):
            if path.suffix.lower() in FONT_SUFFIXES and path.is_file():
                unique.setdefault(str(path.resolve()), path.resolve())
    return list(unique.values())


def font_candidates() -> list[Path]:
    """Every font file that might be usable, in a deterministic order."""
    if _pinned_files is not None:
        return list(_pinned_files)
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
    bundled = bundled_font_dir()  # matplotlib bundles DejaVu Sans (Latin + Arabic script)
    if bundled is not None:
        dirs.append(bundled)
    for folder in dirs:
        if folder.is_dir():
            found.extend(p for p in folder.rglob("*") if p.is_file())
    unique: dict[str, Path] = {}
    for path in found:
        if path.suffix.lower() in FONT_SUFFIXES and path.is_file():
            unique.setdefault(str(path.resolve()), path.resolve())
    return _discovery_order(list(unique.values()), bundled)


def _discovery_order(paths: list[Path], bundled: Path | None) -> list[Path]:
    """Sorted by path, matplotlib's copies last by file name: the order (and so every
    seeded draw) must not depend on where the virtualenv lives."""

    def order(path: Path) -> tuple[bool, str]:
        if bundled is not None and path.is_relative_to(bundled):
            return True, path.name
        return False, str(path)

    return sorted(paths, key=order)


def glyph_signature(font: ImageFont.FreeTypeFont, text: str) -> bytes | None:
    """Size and pixels of ``text`` drawn in ``font``; None when it draws nothing."""
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
    notdef = glyph_signature(font, "\U0010fffd")
    seen = set()
    for ch in probe:
        sig = glyph_signature(font, ch)
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
class FontEntry:
    """A usable font file, its design group and the scripts it draws."""

    path: Path
    group: str  # design family, e.g. "noto sans"
    scripts: tuple[str, ...]


def _family_group(name: str) -> str:
    """Design group of a family name: noise words (weights, widths) dropped."""
    words = [w for w in name.lower().split() if w not in _FAMILY_NOISE]
    return " ".join(words) or name.lower()


@functools.lru_cache(maxsize=1)
def _font_catalog() -> tuple[FontEntry, ...]:
    """Every usable font, deduplicated by family and style and checked glyph by glyph (cached)."""
    entries: list[FontEntry] = []
    seen_names: set[tuple[str, str]] = set()
    raqm = raqm_available()
    for path in font_candidates():
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
            entries.append(FontEntry(path=path, group=_family_group(key[0]), scripts=tuple(scripts)))
    return tuple(entries)


def _font_index() -> dict[str, tuple[Path, ...]]:
    """Font paths per script."""
    catalog = _font_catalog()
    return {script: tuple(e.path for e in catalog if script in e.scripts) for script in SCRIPTS}


def available_fonts(script: str = "latin") -> list[Path]:
    """TrueType/OpenType fonts that draw every probe glyph of ``script``.

    Discovery runs once, on first call (``fc-list``, ``/usr/share/fonts``,
    ``/usr/local/share/fonts``, ``~/.fonts``, ``$WATERMARK_FONT_DIRS`` and matplotlib's
    bundled fonts; only the given folders while :func:`pin_discovery` pins them); fonts
    are deduplicated by family and style and checked by rendering, so one without
    Persian glyphs is never listed for ``persian``. A ``persian`` font draws the Persian
    letters and digits and is joined by raqm; it may lack Latin letters (texts are
    matched to fonts per character when drawn).

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


@functools.lru_cache(maxsize=1)
def font_partition() -> tuple[dict[str, str], str]:
    """(font file name -> "train"/"heldout", mode) where mode is family, file or incomplete."""
    entries = _font_catalog()
    for mode in ("family", "file"):
        groups: dict[str, set[str]] = {}
        for entry in entries:
            groups.setdefault(entry.group if mode == "family" else entry.path.name, set()).update(entry.scripts)
        pool = partition_groups(groups)
        if pool is not None:
            return {e.path.name: pool[e.group if mode == "family" else e.path.name] for e in entries}, mode
    by_file = {e.path.name: hash_split(e.path.name) for e in entries}
    return by_file, "incomplete"


def _font_split(path: str | Path) -> str:
    """Pool of a font file (by its file name)."""
    return _font_split_by_name(os.path.basename(path))


@functools.lru_cache(maxsize=4096)
def _font_split_by_name(name: str) -> str:
    """Pool of a font file name: from the partition, or by hash for a file not in the catalog."""
    table, _ = font_partition()
    return table.get(name) or hash_split(name)


def font_pool(split: str = "any", script: str = "latin") -> list[Path]:
    """Fonts of one style pool (rules: :mod:`train.synth.splits`): train and heldout share none.

    Args:
        split: ``train``, ``heldout`` or ``any`` (all of :func:`available_fonts`).
        script: ``latin`` or ``persian``.

    Raises:
        ValueError: unknown split or script.
    """
    check_split(split)
    fonts = available_fonts(script)
    return fonts if split == "any" else [p for p in fonts if _font_split(p) == split]


@functools.lru_cache(maxsize=512)
def load_font(path: str, size: int, raqm: bool) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Font ``path`` at ``size`` px, with raqm layout or basic (cached); "" gives Pillow's default font."""
    if not path:
        return ImageFont.load_default(size)
    layout = ImageFont.Layout.RAQM if raqm else ImageFont.Layout.BASIC
    return ImageFont.truetype(path, size, layout_engine=layout)


@functools.lru_cache(maxsize=256)
def _notdef(path: str) -> bytes | None:
    """Signature of the font's .notdef (missing glyph) box."""
    return glyph_signature(load_font(path, 24, False), "\U0010fffd")


@functools.lru_cache(maxsize=65536)
def has_glyph(path: str, ch: str) -> bool:
    """True when the font draws ``ch`` with a glyph of its own (not .notdef)."""
    try:
        sig = glyph_signature(load_font(path, 24, False), ch)
    except Exception:
        return False
    return sig is not None and sig != _notdef(path)


def draws(path: str | Path, text: str) -> bool:
    """True when the font has a real glyph for every visible character of ``text``."""
    if not str(path):
        return True
    return all(has_glyph(str(path), ch) for ch in set(text) if ch not in _INVISIBLE)


def latin_font(rng: random.Random, text: str, split: str) -> str | None:
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
    usable = [f for f in fonts if draws(f, text)]
    return str(rng.choice(usable)) if usable else None


def persian_unusable(split: str) -> str:
    """Why Persian cannot be drawn for this pool ("" when it can)."""
    if not available_fonts("persian"):
        return "no installed font draws Persian glyphs"
    if not raqm_available():
        return "Pillow was built without raqm, so Persian would not be shaped"
    if not font_pool(split, "persian"):
        return f"no Persian font is in the {split!r} style pool"
    return ""


def font_for(rng: random.Random, text: str, split: str) -> str:
    """A font of the pool that draws ``text`` (Persian fonts for Persian text); "" if none."""
    if is_persian(text):
        usable = [f for f in font_pool(split, "persian") if draws(f, text)] if not persian_unusable(split) else []
        return str(rng.choice(usable)) if usable else ""
    font = latin_font(rng, text, split)
    return font or ""
