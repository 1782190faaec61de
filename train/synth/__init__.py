"""Synthetic watermarks and scene-text hard negatives for marketplace product photos, and the demo dataset.

Seller photos are rejected when they carry a visible watermark: a shop name, an
Instagram/Telegram handle, a phone number or a URL, very often in Persian, often faint,
small, rotated or tiled, sometimes a semi-transparent logo or a social-network glyph
followed by a handle. This package draws such marks onto clean photos so a detector can
be trained on (clean, watermarked) pairs (:func:`render_watermark`), draws *scene text*
(product labels, print on the object, price tags, box faces) that must NOT be flagged
(:func:`render_scene_text`), and builds the built-in demo dataset from photos that
installed packages ship (:func:`build_demo_dataset`, ``python -m train demo-data``).

Everything is a pure image function driven by a caller-supplied ``random.Random``: the
same seed, image and fonts give the same bytes. Nothing is scanned at import time (font
and icon discovery run on first use and are cached).

Ranges
    opacity 0.08..0.8 (a fifth of the non-stamp marks are *faint*: 0.08..0.2, with a
    lower visibility floor, :data:`train.synth.compose.FAINT_MIN_VISIBILITY`; the others
    keep the floor :data:`train.synth.compose.MIN_VISIBILITY`); size from ~2 % (small
    corner text) to ~60 % of the width (centred logos); colour, outline, shadow;
    placement corner, edge, centre, tiling, random, rotated; then an optional JPEG
    re-encode.

Modules
    ``render``        :func:`render_watermark`, :func:`jpeg_roundtrip`, :func:`style_pools`
    ``splits``        the style pools: every train/heldout rule (fonts, logos, icons, placements)
    ``text``          text kinds and :func:`sample_text`
    ``fonts``         font discovery, glyph checks, catalog, font partition, :func:`font_pool`
    ``icons``         icon glyphs (Font Awesome or symbols), :func:`icon_pool`
    ``logos``         package logos, :func:`prepare_logo`, :func:`logo_pool`
    ``placements``    named placements, :func:`placement_pool`, positioning
    ``info``          :class:`WatermarkInfo`, :class:`SceneTextInfo`, internal style/mark types
    ``style``         style sampling (text, font, size, opacity, colour mode, effect)
    ``geometry``      text masks, fitting, rotate/place/tile, painting
    ``families``      the style families and their weights (:data:`STYLE_FAMILIES`)
    ``badges``        the ``logo`` family (procedural badges, package and user logos)
    ``compose``       colour choice, visibility floors, compositing
    ``scene_design``  scene-text designs (label, price tag, box face, print)
    ``scene_text``    :func:`render_scene_text`: warp, placement, lighting, compositing
    ``photos``        base photos of the demo dataset
    ``demo_crops``    demo crops: clean, scene text, watermark, shared JPEG history
    ``demo_files``    demo dataset files: train/val pairs, test split, eval sets
    ``demo``          :func:`build_demo_dataset` and its command line
    ``testing``       test-only hook: :func:`train.synth.testing.pinned_fonts`
"""

from train.synth.demo import build_demo_dataset
from train.synth.families import FAMILY_WEIGHTS, STYLE_FAMILIES
from train.synth.fonts import available_fonts, font_pool
from train.synth.icons import icon_pool
from train.synth.info import SceneTextInfo, WatermarkInfo
from train.synth.logos import logo_pool, prepare_logo
from train.synth.photos import BasePhoto, base_photo_paths, find_base_photos
from train.synth.placements import placement_pool
from train.synth.render import DEFAULT_JPEG_PROB, JPEG_QUALITY_RANGE, jpeg_roundtrip, render_watermark, style_pools
from train.synth.scene_text import HARD_NEGATIVE_KINDS, render_scene_text
from train.synth.splits import STYLE_SPLITS
from train.synth.text import SCRIPTS, TEXT_KINDS, sample_text

__all__ = [
    "DEFAULT_JPEG_PROB",
    "FAMILY_WEIGHTS",
    "HARD_NEGATIVE_KINDS",
    "JPEG_QUALITY_RANGE",
    "SCRIPTS",
    "STYLE_FAMILIES",
    "STYLE_SPLITS",
    "TEXT_KINDS",
    "BasePhoto",
    "SceneTextInfo",
    "WatermarkInfo",
    "available_fonts",
    "base_photo_paths",
    "build_demo_dataset",
    "find_base_photos",
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
