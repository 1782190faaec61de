"""Tests for the synthetic watermark renderer (train/synth/)."""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, features

from train import synth
from train.synth import fonts, icons, scene_text, splits
from train.synth.logos import package_logo

PERSIAN_A = "فروشگاه نگین"
PERSIAN_B = "گالری پرستو"
TEXT_FAMILIES = ("corner_text", "center_text", "random_text", "tiled_text", "stamp", "diagonal_tiled")
SPLITS = ("train", "heldout")


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


def _visible(info: synth.WatermarkInfo) -> int:
    """Smallest peak change a mark must make: faint marks (opacity 0.08..0.2) are allowed to be subtle."""
    return 10 if info.faint else 25


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
        assert diff[top:bottom, left:right].max() >= _visible(info), info  # visibly changed where the mark is
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
        assert _diff(out, photo).max() >= _visible(info)
        assert 0.0 < info.opacity <= 1.0 and 0.0 < info.rel_size < (0.65 if family == "logo" else 0.5)
        assert info.text.strip() or (info.logo or "").startswith(("image:", "user:"))
        assert info.placement in synth.placement_pool("any", family)
        json.dumps(asdict(info), ensure_ascii=False)  # JSON-serialisable


def test_families_accepts_a_single_name_and_grey_input(photo: Image.Image) -> None:
    out, info = synth.render_watermark(photo.convert("L"), random.Random(1), families="stamp")
    assert info.family == "stamp" and out.mode == "RGB"


def test_required_families_exist() -> None:
    assert {"corner_text", "center_text", "tiled_text", "stamp", "random_text"} <= set(synth.STYLE_FAMILIES)
    assert {"logo", "icon_handle", "diagonal_tiled"} <= set(synth.STYLE_FAMILIES)
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
            assert _diff(out, photo).max() >= _visible(info)
    assert seen >= 5


def test_missing_persian_fonts_fall_back_with_warning(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fonts.available_fonts
    monkeypatch.setattr(fonts, "available_fonts", lambda script="latin": [] if script == "persian" else real(script))
    with pytest.warns(RuntimeWarning, match="Persian"):
        infos = [synth.render_watermark(photo, random.Random(seed))[1] for seed in range(30)]
    assert all(info.script != "persian" for info in infos)


def test_no_fonts_at_all_still_renders(photo: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fonts, "available_fonts", lambda script="latin": [])
    with pytest.warns(RuntimeWarning):
        out, info = synth.render_watermark(photo, random.Random(2), jpeg_prob=0.0, families=TEXT_FAMILIES)
    assert info.font == "pillow-default"
    assert _diff(out, photo).max() >= _visible(info)


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


def test_text_kinds_email() -> None:
    rng = random.Random(1)
    for _ in range(10):
        kind, text = synth.sample_text(rng, "email")
        assert kind == "email" and "@" in text and "." in text.split("@")[1]


# ----------------------------------------------------------------- style splits


def _other(split: str) -> str:
    return "heldout" if split == "train" else "train"


def test_style_pools_are_disjoint_and_complete() -> None:
    for script in synth.SCRIPTS:
        train = set(synth.font_pool("train", script))
        heldout = set(synth.font_pool("heldout", script))
        assert train and heldout, script  # each pool can draw Latin and Persian
        assert not train & heldout
        assert train | heldout == set(synth.available_fonts(script)) == set(synth.font_pool("any", script))
    train_files = {p.name for s in synth.SCRIPTS for p in synth.font_pool("train", s)}
    heldout_files = {p.name for s in synth.SCRIPTS for p in synth.font_pool("heldout", s)}
    assert not train_files & heldout_files
    for pool in (synth.logo_pool, synth.icon_pool, synth.placement_pool):
        train, heldout = set(pool("train")), set(pool("heldout"))
        assert train and heldout and not train & heldout, pool.__name__
        assert train | heldout == set(pool("any")), pool.__name__
    assert {"badge:circle", "badge:rounded_rect", "badge:shield"} <= set(synth.logo_pool("train"))
    for family in synth.STYLE_FAMILIES:
        train, heldout = set(synth.placement_pool("train", family)), set(synth.placement_pool("heldout", family))
        assert train and heldout and not train & heldout, family
    pools = synth.style_pools("heldout")
    json.dumps(pools)
    assert pools["placements"] == synth.placement_pool("heldout")


@pytest.mark.parametrize("split", SPLITS)
def test_sampled_styles_stay_in_their_pool(photo: Image.Image, split: str) -> None:
    """200 marks of one pool: no font, logo, icon or placement of the other pool ever appears."""
    own_fonts = {p.name for s in synth.SCRIPTS for p in synth.font_pool(split, s)}
    other_fonts = {p.name for s in synth.SCRIPTS for p in synth.font_pool(_other(split), s)}
    seen: dict[str, set[str]] = {"font": set(), "logo": set(), "icon": set(), "placement": set(), "family": set()}
    opacities, widths = [], []
    for seed in range(200):
        _, info = synth.render_watermark(photo, random.Random(seed), split=split, jpeg_prob=0.0)
        assert info.split == split
        if info.font not in ("none", "pillow-default"):
            seen["font"].add(info.font)
        seen["placement"].add(info.placement)
        seen["family"].add(info.family)
        if info.logo:
            seen["logo"].add(info.logo)
        if info.icon:
            seen["icon"].update(info.icon.split(","))
        opacities.append(info.opacity)
        widths.append(info.rel_width)
    assert seen["font"] <= own_fonts and not seen["font"] & other_fonts
    assert seen["logo"] <= set(synth.logo_pool(split)) and not seen["logo"] & set(synth.logo_pool(_other(split)))
    assert seen["icon"] <= set(synth.icon_pool(split)) and not seen["icon"] & set(synth.icon_pool(_other(split)))
    assert seen["placement"] <= set(synth.placement_pool(split))
    assert not seen["placement"] & set(synth.placement_pool(_other(split)))
    assert seen["family"] == set(synth.STYLE_FAMILIES)
    assert len(seen["font"]) >= 3 and len(seen["logo"]) >= 2 and len(seen["placement"]) >= 6
    assert 0.08 <= min(opacities) <= 0.2 and max(opacities) <= 1.0  # genuinely faint marks occur
    assert min(widths) <= 0.15 and max(widths) >= 0.5  # small marks and photo-wide ones


def test_split_is_deterministic_and_changes_the_style(photo: Image.Image) -> None:
    for seed in range(4):
        a, info_a = synth.render_watermark(photo, random.Random(seed), split="heldout")
        b, info_b = synth.render_watermark(photo, random.Random(seed), split="heldout")
        assert a.tobytes() == b.tobytes() and info_a == info_b
    placements = {
        split: [synth.render_watermark(photo, random.Random(s), split=split)[1].placement for s in range(6)]
        for split in SPLITS
    }
    assert placements["train"] != placements["heldout"]


def test_unknown_split_is_rejected(photo: Image.Image) -> None:
    with pytest.raises(ValueError, match="'test'.*train, heldout, any"):
        synth.render_watermark(photo, random.Random(0), split="test")
    with pytest.raises(ValueError, match="'val'.*train, heldout, any"):
        synth.render_scene_text(photo, random.Random(0), split="val")
    for pool in (synth.logo_pool, synth.icon_pool, synth.placement_pool, synth.style_pools):
        with pytest.raises(ValueError, match="split"):
            pool("nope")
    with pytest.raises(ValueError, match="split"):
        synth.font_pool("nope", "latin")


def test_font_partition_balances_scripts_and_falls_back_to_files(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = fonts.FontEntry
    dejavu_only = (
        entry(Path("DejaVuSans.ttf"), "dejavu sans", ("latin", "persian")),
        entry(Path("DejaVuSans-Bold.ttf"), "dejavu sans", ("latin", "persian")),
        entry(Path("DejaVuSansMono.ttf"), "dejavu sans mono", ("latin",)),
        entry(Path("DejaVuSerif.ttf"), "dejavu serif", ("latin",)),
    )
    monkeypatch.setattr(fonts, "_font_catalog", lambda: dejavu_only)
    fonts.font_partition.cache_clear()
    fonts._font_split_by_name.cache_clear()
    try:
        table, mode = fonts.font_partition()
        assert mode == "file"  # one Persian-capable family only: split by variant
        for pool in ("train", "heldout"):
            files = {name for name, where in table.items() if where == pool}
            assert any("persian" in e.scripts for e in dejavu_only if e.path.name in files), pool
            assert any("latin" in e.scripts for e in dejavu_only if e.path.name in files), pool
        assert fonts.font_partition() == (table, mode)  # deterministic
    finally:
        monkeypatch.undo()
        fonts.font_partition.cache_clear()
        fonts._font_split_by_name.cache_clear()
    assert splits.partition_groups({"a": {"latin"}}) is None  # a single group cannot feed both pools


# ------------------------------------------------------------------ new families


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("family", ["logo", "icon_handle", "diagonal_tiled"])
def test_new_families_render_in_both_pools(photo: Image.Image, family: str, split: str) -> None:
    outputs = set()
    for seed in range(4):
        out, info = synth.render_watermark(photo, random.Random(seed), families=[family], split=split, jpeg_prob=0.0)
        assert info.family == family and info.split == split
        assert info.placement in synth.placement_pool(split, family)
        assert _diff(out, photo).max() >= _visible(info)
        left, top, right, bottom = info.bbox
        outside = _diff(out, photo)
        outside[top:bottom, left:right] = 0
        assert outside.max() == 0, info
        if family == "logo":
            assert info.logo in synth.logo_pool(split) and info.kind == "logo"
        if family == "icon_handle" and synth.icon_pool(split):
            assert info.icon and set(info.icon.split(",")) <= set(synth.icon_pool(split))
        outputs.add(out.tobytes())
        json.dumps(asdict(info), ensure_ascii=False)
    assert len(outputs) == 4


def test_logos_argument_accepts_any_image(photo: Image.Image, tmp_path: Path) -> None:
    opaque = Image.new("RGB", (60, 40), (255, 255, 255))
    ImageDraw.Draw(opaque).ellipse((10, 5, 50, 35), fill=(200, 20, 20))
    prepared = synth.prepare_logo(opaque)
    assert prepared.mode == "RGBA" and prepared.getpixel((0, 0))[3] < 40  # white backdrop keyed out
    assert prepared.getpixel((prepared.width // 2, prepared.height // 2))[3] == 255
    path = tmp_path / "shop_logo.png"
    opaque.save(path)
    for logos, name in ((opaque, "user:0"), ([path], "user:shop_logo")):
        out, info = synth.render_watermark(photo, random.Random(3), families="logo", logos=logos, jpeg_prob=0.0)
        assert info.logo == name and info.font == "none" and info.text == ""
        assert _diff(out, photo).max() >= _visible(info)
    with pytest.raises(ValueError, match="transparent"):
        synth.render_watermark(photo, random.Random(3), families="logo", logos=[Image.new("RGBA", (8, 8))])


def test_package_logos_are_found_and_keyed() -> None:
    names = synth.logo_pool("any")
    assert "image:mpl-logo2" in names and "image:skimage-logo" in names
    logo = package_logo("skimage-logo")  # an opaque PNG on white: corners keyed out
    assert logo.mode == "RGBA" and logo.getpixel((0, 0))[3] == 0


@pytest.fixture()
def fresh_icon_source():
    icons.icon_source.cache_clear()
    yield
    icons.icon_source.cache_clear()


def test_font_awesome_icons_when_installed(fresh_icon_source: None) -> None:
    if icons._find_icon_font() is None:
        pytest.skip("Font Awesome not installed (scripts/setup_fonts.sh)")
    assert icons.icon_source()[0] == "fontawesome"
    assert synth.icon_pool("train") == ["instagram", "telegram", "phone", "globe"]
    assert synth.icon_pool("heldout") == ["whatsapp", "envelope", "shopping-cart"]


def test_icon_fallback_warns_once_without_font_awesome(
    photo: Image.Image, monkeypatch: pytest.MonkeyPatch, fresh_icon_source: None
) -> None:
    monkeypatch.setattr(icons, "_find_icon_font", lambda: None)
    with pytest.warns(RuntimeWarning, match="Font Awesome"):
        out, info = synth.render_watermark(photo, random.Random(0), families="icon_handle", jpeg_prob=0.0)
    symbols = set(icons._SYMBOL_GLYPHS)
    assert info.icon and set(info.icon.split(",")) <= symbols
    assert _diff(out, photo).max() >= _visible(info)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one-time: no second warning
        _, again = synth.render_watermark(photo, random.Random(1), families="icon_handle", split="heldout")
    assert again.icon and set(again.icon.split(",")) <= set(synth.icon_pool("heldout")) <= symbols


# ---------------------------------------------------------------- hard negatives


@pytest.fixture()
def product() -> Image.Image:
    """A product shot: a coloured bottle-like shape on a flat light backdrop."""
    image = Image.new("RGB", (192, 160), (236, 236, 232))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((60, 20, 132, 150), radius=18, fill=(40, 90, 150))
    draw.ellipse((80, 8, 112, 30), fill=(30, 60, 110))
    return image


@pytest.fixture()
def noise() -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("kind", synth.HARD_NEGATIVE_KINDS)
def test_every_scene_text_kind_renders(product: Image.Image, kind: str) -> None:
    for seed in range(2):
        before = product.tobytes()
        out, info = synth.render_scene_text(product, random.Random(seed), kind=kind)
        assert product.tobytes() == before and out.size == product.size and out.mode == "RGB"
        assert info.kind == kind and info.opacity == 1.0 and info.text.strip() and info.fonts
        assert info.script in ("latin", "persian", "mixed") and info.split == "any"
        left, top, right, bottom = info.bbox
        diff = _diff(out, product)
        assert diff[top:bottom, left:right].max() >= 60
        outside = diff.copy()
        outside[top:bottom, left:right] = 0
        assert outside.max() == 0
        width, height = product.size
        assert left >= 0.02 * width and top >= 0.02 * height  # on the object, not at the border
        assert right <= 0.98 * width and bottom <= 0.98 * height
        json.dumps(asdict(info), ensure_ascii=False)


@pytest.mark.parametrize("kind", synth.HARD_NEGATIVE_KINDS)
def test_scene_text_is_opaque(noise: Image.Image, kind: str) -> None:
    """Inside the element the photo does not show through: no alpha << 1 blend."""
    for seed in range(2):
        part = scene_text._scene_text_parts(noise, random.Random(seed), kind, "any")
        out, _ = synth.render_scene_text(noise, random.Random(seed), kind=kind)
        alpha = np.asarray(part.layer.getchannel("A"))
        inside = alpha == 255
        assert inside.sum() >= 15, (kind, seed)
        # Solid elements are opaque almost everywhere; thin printed strokes have anti-aliased edges.
        assert inside.sum() >= (0.05 if kind == "printed_text" else 0.6) * (alpha > 0).sum(), (kind, seed)
        got = np.asarray(out, dtype=np.float64)[inside].ravel()
        under = np.asarray(noise, dtype=np.float64)[inside].ravel()
        assert abs(np.corrcoef(got, under)[0, 1]) < 0.2, (kind, seed)  # a 30 % blend would give ~0.9
        expected = np.asarray(part.layer.convert("RGB"), dtype=np.float64)[inside].ravel()
        assert np.abs(got - expected).mean() < 12  # what shows is the element itself


def test_scene_text_is_deterministic_and_checks_kind(product: Image.Image) -> None:
    for seed in range(3):
        a, info_a = synth.render_scene_text(product, random.Random(seed), split="train")
        b, info_b = synth.render_scene_text(product, random.Random(seed), split="train")
        assert a.tobytes() == b.tobytes() and info_a == info_b
        assert info_a.kind in synth.HARD_NEGATIVE_KINDS
    with pytest.raises(ValueError, match="'poster'.*product_label"):
        synth.render_scene_text(product, random.Random(0), kind="poster")


@pytest.mark.parametrize("split", SPLITS)
def test_scene_text_uses_its_font_pool(product: Image.Image, split: str) -> None:
    own = {p.name for s in synth.SCRIPTS for p in synth.font_pool(split, s)}
    for seed in range(6):
        _, info = synth.render_scene_text(product, random.Random(seed), split=split)
        assert set(info.fonts) <= own, info
        assert info.split == split


def test_font_order_does_not_depend_on_the_virtualenv_location() -> None:
    import importlib.util

    bundled = (Path(importlib.util.find_spec("matplotlib").origin).parent / "mpl-data" / "fonts" / "ttf").resolve()
    found = fonts.font_candidates()
    mine = [p for p in found if p.is_relative_to(bundled)]
    assert mine, "matplotlib's bundled fonts should be found"
    # system fonts first, then matplotlib's by file name, wherever the venv is
    assert found[-len(mine):] == sorted(mine, key=lambda p: p.name)
