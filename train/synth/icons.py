"""Social-network icons of ``icon_handle`` marks: Font Awesome glyphs or symbol stand-ins; :func:`icon_pool`."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

from PIL import ImageFont

from train.synth.fonts import available_fonts, discovery_pinned, font_candidates, glyph_signature, has_glyph
from train.synth.splits import ICON_SPLIT, check_split

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
# Which text follows which icon.
ICON_KINDS = {
    "instagram": ("handle", "handle", "mixed_handle"), "telegram": ("handle", "url"),
    "phone": ("phone_latin", "phone_fa"), "globe": ("url",), "whatsapp": ("phone_latin", "phone_fa"),
    "envelope": ("email",), "shopping-cart": ("url", "latin_shop", "persian_shop"),
    "telephone": ("phone_latin", "phone_fa"), "envelope-symbol": ("email",),
    "star": ("latin_shop", "persian_shop", "handle"), "telephone-sign": ("phone_latin", "phone_fa"),
    "heart": ("handle",), "check": ("url", "latin_shop"),
}  # fmt: skip


def _find_icon_font() -> Path | None:
    """Font Awesome's TrueType file, when installed and usable (system paths skipped while fonts are pinned)."""
    candidates = [p for p in FONT_AWESOME_FILES if p.is_file() and not discovery_pinned()]
    candidates += [p for p in font_candidates() if "fontawesome" in p.name.lower().replace("-", "").replace("_", "")]
    for path in candidates:
        try:
            font = ImageFont.truetype(str(path), 24)
            sig = glyph_signature(font, _FA_GLYPHS["instagram"])
            if sig is not None and sig != glyph_signature(font, "\U0010fffd"):
                return path
        except Exception:
            continue
    return None


@functools.lru_cache(maxsize=1)
def icon_source() -> tuple[str, str, dict[str, str]]:
    """(source, font path, icon name -> character); warns once when Font Awesome is missing."""
    path = _find_icon_font()
    if path is not None:
        return "fontawesome", str(path), dict(_FA_GLYPHS)
    for font in available_fonts("latin"):
        if all(has_glyph(str(font), ch) for ch in _SYMBOL_GLYPHS.values()):
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
    check_split(split)
    return [name for name in icon_source()[2] if split in ("any", ICON_SPLIT[name])]
