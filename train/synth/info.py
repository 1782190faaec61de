"""Records of what was drawn (:class:`WatermarkInfo`, :class:`SceneTextInfo`) and the internal style/mark types."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


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
class Style:
    """Sampled look of one text mark (text, font, size, opacity, colour mode, effect)."""

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
class Mark:
    """Geometry of one mark: full-image 'L' masks; colours are chosen afterwards."""

    style: Style
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
class RenderContext:
    """What a family renderer gets besides image and rng: the style pool and user logos."""

    split: str
    logos: tuple[Image.Image, ...] = ()
    logo_names: tuple[str, ...] = ()
