"""Golden output of the renderer: fixed seeds on a fixed image, fonts pinned to matplotlib's bundled ones.

The digests were recorded with the single-module ``train/synth.py`` before it became the
``train.synth`` package, so this test also proves that the split kept every byte. Font
discovery is pinned (:func:`train.synth.testing.pinned_fonts`) to the fonts the pinned
matplotlib wheel ships, so the result does not depend on the machine's installed fonts;
it does depend on the pinned Pillow (FreeType, raqm), numpy and scipy. A change of those
pins, or a deliberate change of the renderer, needs the digests re-recorded:
``.venv/bin/python -m tests.test_synth_golden`` prints the current ones.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image, ImageDraw, features

from train import synth
from train.synth import fonts, icons
from train.synth.testing import pinned_fonts

# What discovery finds in matplotlib's bundled folder (a sanity check of the pinning).
PINNED_FONTS = {
    "latin": [
        "DejaVuSans-Bold.ttf", "DejaVuSans-BoldOblique.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans.ttf",
        "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSansMono-Oblique.ttf",
        "DejaVuSansMono.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSerif-Italic.ttf",
        "DejaVuSerif.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralBolIta.ttf", "STIXGeneralItalic.ttf",
        "cmb10.ttf", "cmr10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
    ],
    "persian": ["DejaVuSans-Bold.ttf", "DejaVuSans.ttf"],
}
GOLDEN = {
    "watermark/train/corner_text/0": "4a51953db02b1c15",
    "watermark/train/corner_text/1": "de88f0c6c840683b",
    "watermark/train/center_text/0": "a7bd68d31b0f74e1",
    "watermark/train/center_text/1": "b19fae3e0e1c8689",
    "watermark/train/tiled_text/0": "36b49dcbddfd6175",
    "watermark/train/tiled_text/1": "a06bc2c4f7077740",
    "watermark/train/stamp/0": "85131bca561ff150",
    "watermark/train/stamp/1": "5b0e3b3f1186a7c8",
    "watermark/train/random_text/0": "82122ee081bb534e",
    "watermark/train/random_text/1": "9a7cc2596a20193c",
    "watermark/train/diagonal_tiled/0": "131148852c849926",
    "watermark/train/diagonal_tiled/1": "1a0da5e83e46150d",
    "watermark/train/logo/0": "cd3cc00cd852e098",
    "watermark/train/logo/1": "e1cc1625ee2834a1",
    "watermark/train/icon_handle/0": "25ceb149d99ef938",
    "watermark/train/icon_handle/1": "a9f6c8eb3f5b889b",
    "scene_text/train/product_label": "150dc1005b271c93",
    "scene_text/train/printed_text": "3465fd622bcc65af",
    "scene_text/train/price_tag": "a48d06008842cc04",
    "scene_text/train/box_face": "1487af0760597f8b",
    "watermark/heldout/corner_text/0": "96e144d446a0cc8f",
    "watermark/heldout/corner_text/1": "529185edd1734860",
    "watermark/heldout/center_text/0": "530d737450ed7bda",
    "watermark/heldout/center_text/1": "85a517f107351d0b",
    "watermark/heldout/tiled_text/0": "cf835d34947a548e",
    "watermark/heldout/tiled_text/1": "584acde63ac7fec5",
    "watermark/heldout/stamp/0": "2e5e6697ca105d6f",
    "watermark/heldout/stamp/1": "140e34e6e08f1062",
    "watermark/heldout/random_text/0": "3418754107299d3c",
    "watermark/heldout/random_text/1": "7c08baa2ddc049e8",
    "watermark/heldout/diagonal_tiled/0": "9d72aaa680b7776f",
    "watermark/heldout/diagonal_tiled/1": "98b50e9ea0a38d0a",
    "watermark/heldout/logo/0": "5ef187c1845733e0",
    "watermark/heldout/logo/1": "ab6c14097fcd40ca",
    "watermark/heldout/icon_handle/0": "fdca0cc858e761bb",
    "watermark/heldout/icon_handle/1": "a96614b395325b9f",
    "scene_text/heldout/product_label": "d706e20f20e29bd3",
    "scene_text/heldout/printed_text": "33321ca2e0831f1b",
    "scene_text/heldout/price_tag": "097a1e68d42e761a",
    "scene_text/heldout/box_face": "335116351f866c29",
    "watermark/any/jpeg/5": "98f2606b353fb59f",
}


def _image() -> Image.Image:
    """A fixed 192x144 RGB image: arithmetic colour patterns, a grey frame and a blue "product"."""
    y, x = np.mgrid[0:144, 0:192]
    rgb = np.stack([(x * 5 + y * 3) % 256, (x * 2 + y * 7) % 256, (x * y // 16) % 256], axis=-1).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 191, 143), outline=(120, 120, 120), width=6)
    draw.rounded_rectangle((60, 24, 136, 130), radius=14, fill=(40, 90, 150))
    return image


def _digest(image: Image.Image, info: synth.WatermarkInfo | synth.SceneTextInfo) -> str:
    """Pixels plus the returned info, hashed (16 hex digits are plenty to catch a change)."""
    payload = json.dumps(asdict(info), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(image.tobytes() + b"\0" + payload).hexdigest()[:16]


def _digests() -> dict[str, str]:
    """Every family in both pools (two seeds), every scene-text kind in both pools, one JPEG re-encode."""
    image = _image()
    out = {}
    for split in ("train", "heldout"):
        for family in synth.STYLE_FAMILIES:
            for seed in (0, 1):
                marked, info = synth.render_watermark(
                    image, random.Random(seed), families=[family], split=split, jpeg_prob=0.0
                )
                out[f"watermark/{split}/{family}/{seed}"] = _digest(marked, info)
        for kind in synth.HARD_NEGATIVE_KINDS:
            drawn, info = synth.render_scene_text(image, random.Random(7), split=split, kind=kind)
            out[f"scene_text/{split}/{kind}"] = _digest(drawn, info)
    marked, info = synth.render_watermark(image, random.Random(5), jpeg_prob=1.0)
    out["watermark/any/jpeg/5"] = _digest(marked, info)
    return out


@pytest.mark.skipif(not features.check("raqm"), reason="Pillow without raqm shapes no Persian: other bytes")
def test_renderer_output_is_unchanged() -> None:
    with pinned_fonts(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no Font Awesome here: symbol icons, by design
        found = {script: [p.name for p in synth.available_fonts(script)] for script in synth.SCRIPTS}
        assert found == PINNED_FONTS
        assert fonts.font_partition()[1] == "file" and icons.icon_source()[0] == "symbols"
        got = _digests()
    changed = sorted(key for key in GOLDEN if got.get(key) != GOLDEN[key])
    assert got.keys() == GOLDEN.keys()
    assert not changed, f"renderer output changed for {len(changed)} of {len(GOLDEN)} cases: {changed}"


def test_pinning_is_undone_afterwards() -> None:
    before = synth.available_fonts("latin")
    with pinned_fonts():
        assert fonts.discovery_pinned()
        assert {p.name for p in synth.available_fonts("latin")} <= {
            p.name for p in fonts.bundled_font_dir().iterdir()  # type: ignore[union-attr]
        }
    assert not fonts.discovery_pinned()
    assert synth.available_fonts("latin") == before


if __name__ == "__main__":  # print the digests of this machine, to re-record GOLDEN
    with pinned_fonts(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        print(json.dumps(_digests(), indent=1))
