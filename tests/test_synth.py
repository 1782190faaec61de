"""Tests for the synthetic watermark renderer (train/synth.py)."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, features

from train import synth

PERSIAN_A = "فروشگاه نگین"
PERSIAN_B = "گالری پرستو"


@pytest.fixture()
def photo() -> Image.Image:
    """A small photo-like RGB image: colour gradients plus noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:128]
    array = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.float64)
    array += rng.normal(0, 8, array.shape)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")


def _diff(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max(axis=-1)


def test_same_seed_gives_same_bytes(photo: Image.Image) -> None:
    for seed in range(6):
        first, info_1 = synth.render_watermark(photo, random.Random(seed))
        second, info_2 = synth.render_watermark(photo, random.Random(seed))
        assert first.tobytes() == second.tobytes()
        assert info_1 == info_2


def test_different_seeds_differ(photo: Image.Image) -> None:
    outputs = {synth.render_watermark(photo, random.Random(seed))[0].tobytes() for seed in range(6)}
    assert len(outputs) == 6


def test_mark_changes_only_its_region_and_input_is_untouched(photo: Image.Image) -> None:
    before = photo.tobytes()
    for seed in range(8):
        out, info = synth.render_watermark(photo, random.Random(seed), jpeg_prob=0.0)
        assert photo.tobytes() == before
        assert out is not photo and out.mode == "RGB" and out.size == photo.size
        left, top, right, bottom = info.bbox
        assert right > left and bottom > top, info
        diff = _diff(out, photo)
        assert diff[top:bottom, left:right].max() >= 25, info  # visibly changed where the mark is
        outside = diff.copy()
        outside[top:bottom, left:right] = 0
        assert outside.max() == 0, info  # and nowhere else
        assert info.jpeg_quality is None


@pytest.mark.parametrize("family", synth.STYLE_FAMILIES)
def test_every_family_renders(photo: Image.Image, family: str) -> None:
    for seed in range(3):
        out, info = synth.render_watermark(photo, random.Random(seed), families=[family], jpeg_prob=0.0)
        assert info.family == family
        assert out.size == photo.size and out.mode == "RGB"
        assert _diff(out, photo).max() >= 25
        assert 0.0 < info.opacity <= 1.0 and 0.0 < info.rel_size < 0.5
        assert info.text.strip()
        json.dumps(asdict(info), ensure_ascii=False)  # JSON-serialisable


def test_families_accepts_a_single_name_and_grey_input(photo: Image.Image) -> None:
    out, info = synth.render_watermark(photo.convert("L"), random.Random(1), families="stamp")
    assert info.family == "stamp" and out.mode == "RGB"


def test_required_families_exist() -> None:
    assert {"corner_text", "center_text", "tiled_text", "stamp", "random_text"} <= set(synth.STYLE_FAMILIES)
    assert set(synth.FAMILY_WEIGHTS) == set(synth.STYLE_FAMILIES)


def test_unknown_family_is_rejected(photo: Image.Image) -> None:
    with pytest.raises(ValueError, match="nope.*corner_text"):
        synth.render_watermark(photo, random.Random(0), families=["corner_text", "nope"])
    with pytest.raises(ValueError, match="empty"):
        synth.render_watermark(photo, random.Random(0), families=[])


def test_jpeg_roundtrip(photo: Image.Image) -> None:
    out = synth.jpeg_roundtrip(photo, 75)
    assert out.size == photo.size and out.mode == "RGB"
    assert out.tobytes() != photo.tobytes()
    with pytest.raises(ValueError, match="quality"):
        synth.jpeg_roundtrip(photo, 0)


def test_render_can_reencode_as_jpeg(photo: Image.Image) -> None:
    _, info = synth.render_watermark(photo, random.Random(0), jpeg_prob=1.0)
    assert info.jpeg_quality is not None and 70 <= info.jpeg_quality <= 95


def _mask(text: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    canvas = Image.new("L", (400, 80))
    ImageDraw.Draw(canvas).text((10, 10), text, font=font, fill=255)
    return canvas


def test_persian_fonts_draw_real_glyphs() -> None:
    fonts = synth.available_fonts("persian")
    assert fonts, "matplotlib's DejaVu Sans covers Arabic script, so at least one font must be found"
    layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    for path in fonts:
        font = ImageFont.truetype(str(path), 32, layout_engine=layout)
        a, b = _mask(PERSIAN_A, font), _mask(PERSIAN_B, font)
        tofu = _mask("\U0010fffd" * len(PERSIAN_A), font)
        assert a.getbbox() is not None and b.getbbox() is not None
        assert a.tobytes() != b.tobytes()
        assert a.tobytes() != tofu.tobytes()


@pytest.mark.skipif(not features.check("raqm"), reason="Pillow built without raqm")
def test_persian_text_is_shaped() -> None:
    path = str(synth.available_fonts("persian")[0])
    shaped = _mask(PERSIAN_A, ImageFont.truetype(path, 32, layout_engine=ImageFont.Layout.RAQM))
    unshaped = _mask(PERSIAN_A, ImageFont.truetype(path, 32, layout_engine=ImageFont.Layout.BASIC))
    assert shaped.tobytes() != unshaped.tobytes()  # joined letters, right to left


def test_fonts_without_persian_glyphs_are_not_listed_for_persian() -> None:
    import matplotlib

    ttf = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
    persian = {p.name for p in synth.available_fonts("persian")}
    latin = {p.name for p in synth.available_fonts("latin")}
    assert "DejaVuSerif.ttf" not in persian  # DejaVu Serif has no Arabic script
    assert "DejaVuSans.ttf" in persian and "DejaVuSans.ttf" in latin
    assert not {"LastResortHE-Regular.ttf", "cmex10.ttf", "cmsy10.ttf"} & (persian | latin)
    assert (ttf / "DejaVuSerif.ttf").is_file()
    with pytest.raises(ValueError, match="script"):
        synth.available_fonts("klingon")


def test_persian_watermarks_use_persian_fonts(photo: Image.Image) -> None:
    persian_fonts = {p.name for p in synth.available_fonts("persian")}
    seen = 0
    for seed in range(40):
        out, info = synth.render_watermark(photo, random.Random(seed), jpeg_prob=0.0)
        if info.script == "persian":
            seen += 1
            assert info.font in persian_fonts
            assert _diff(out, photo).max() >= 25
    assert seen >= 5


def test_missing_persian_fonts_fall_back_with_warning(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synth.available_fonts
    monkeypatch.setattr(synth, "available_fonts", lambda script="latin": [] if script == "persian" else real(script))
    with pytest.warns(RuntimeWarning, match="Persian"):
        infos = [synth.render_watermark(photo, random.Random(seed))[1] for seed in range(30)]
    assert all(info.script == "latin" for info in infos)


def test_no_fonts_at_all_still_renders(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth, "available_fonts", lambda script="latin": [])
    with pytest.warns(RuntimeWarning):
        out, info = synth.render_watermark(photo, random.Random(2), jpeg_prob=0.0)
    assert info.font == "pillow-default"
    assert _diff(out, photo).max() >= 25


def test_text_kinds() -> None:
    rng = random.Random(0)
    for _ in range(20):
        assert synth.sample_text(rng, "handle")[1].startswith("@")
        assert any("۰" <= ch <= "۹" for ch in synth.sample_text(rng, "phone_fa")[1])
        assert any(ch.isdigit() and ch.isascii() for ch in synth.sample_text(rng, "phone_latin")[1])
        assert "." in synth.sample_text(rng, "url")[1]
        assert any("\u0600" <= ch <= "\u06ff" for ch in synth.sample_text(rng, "persian_shop")[1])
        assert "\n" in synth.sample_text(rng, "two_line")[1]
    with pytest.raises(ValueError, match="kind"):
        synth.sample_text(rng, "poem")
