"""Style pools: every train/heldout rule of the renderer, in one place.

``render_watermark(..., split=...)`` and ``render_scene_text(..., split=...)`` draw from
one pool of :data:`STYLE_SPLITS`: ``train`` and ``heldout`` are disjoint, ``any`` (the
default) is their union. Training data must use ``train``; ``heldout`` measures
generalisation to marks whose fonts, logos, icons and placements were never seen. Held
out are:

* fonts (:func:`train.synth.fonts.font_pool`): font files are grouped by design family
  (``Noto Sans`` and ``Noto Sans Display`` are one group; weights and styles stay
  together) and a group is held out when ``sha256("font-group:" + name) % 3 == 0``
  (:func:`hash_split`). Groups are then moved (lowest hash first) until each pool has at
  least one Latin-capable and one Persian-capable font (:func:`partition_groups`). When
  that is impossible by family (e.g. only DejaVu is installed) the same rule runs per
  font file (DejaVuSans.ttf vs -Bold.ttf ...). Scene text (hard negatives) uses the same
  font pools.
* logos (:data:`BADGE_SHAPES`, :data:`PACKAGE_LOGO_SPLIT`): badge shapes ``circle``,
  ``rounded_rect``, ``shield`` and matplotlib's ``logo2.png`` / ``matplotlib_large.png``
  are train; badge shapes ``hexagon``, ``diamond``, ``seal`` and scikit-image's
  ``logo.png`` are held out. Images passed as ``logos=`` are the caller's business (used
  for any split).
* icons (:data:`ICON_SPLIT`): Font Awesome instagram, telegram, phone, globe (or the
  symbols ☎ ✉ ★) are train; whatsapp, envelope, shopping-cart (✆ ♥ ✓) held out.
* placements (:data:`FAMILY_PLACEMENTS`): a placement is a position rule plus an angle
  band (:data:`train.synth.placements.PLACEMENT_RULES`). Train: ``corner``,
  ``bottom_center``, ``center_upright``, ``center_diag``, ``random_upright``,
  ``random_diag``, ``tiled_horizontal``, ``tiled_diag``, ``rows_diag``, ``banner_top``,
  ``banner_bottom``; angles |a| <= 6 deg (upright) or 25..40 deg (diag). Held out:
  ``edge_middle`` (middle of the top, left or right edge; side ones often turned 90 deg),
  ``center_shallow``, ``center_steep``, ``random_shallow``, ``random_steep``,
  ``tiled_shallow``, ``tiled_steep``, ``rows_shallow``, ``rows_steep``,
  ``banner_middle``; angles 10..22 deg (shallow), 45..70 deg (steep) or 90 deg. No train
  angle band meets a held-out one.

Text content, colours, effects, opacity and size ranges are shared by both pools.
:class:`train.synth.info.WatermarkInfo` records ``font``, ``placement``, ``logo``,
``icon`` and ``split`` for every mark.
"""

from __future__ import annotations

import hashlib

from train.synth.text import SCRIPTS

STYLE_SPLITS = ("train", "heldout", "any")
HELDOUT_FONT_SHARE = 3  # one font group in three is held out (before balancing)


def check_split(split: str) -> str:
    """``split`` itself, or ValueError naming the allowed ones."""
    if split not in STYLE_SPLITS:
        raise ValueError(f"unknown style split {split!r}: allowed are {', '.join(STYLE_SPLITS)}")
    return split


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same on every machine and Python run (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def hash_split(name: str) -> str:
    """The pool of a font group (or font file) by hash alone: one in :data:`HELDOUT_FONT_SHARE` is held out."""
    return "heldout" if stable_hash(f"font-group:{name}") % HELDOUT_FONT_SHARE == 0 else "train"


def partition_groups(groups: dict[str, set[str]]) -> dict[str, str] | None:
    """Assign each group to train/heldout by hash, then balance scripts; None if impossible."""
    hashes = {g: stable_hash(f"font-group:{g}") for g in groups}
    order = sorted(groups, key=lambda g: (hashes[g], g))
    pool = {g: hash_split(g) for g in groups}
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


# Pool of each icon: Font Awesome names, then the symbol stand-ins (train.synth.icons).
ICON_SPLIT = {
    "instagram": "train", "telegram": "train", "phone": "train", "globe": "train",
    "whatsapp": "heldout", "envelope": "heldout", "shopping-cart": "heldout",
    "telephone": "train", "envelope-symbol": "train", "star": "train",
    "telephone-sign": "heldout", "heart": "heldout", "check": "heldout",
}  # fmt: skip
# Pool of each procedural badge shape (train.synth.badges).
BADGE_SHAPES = {
    "circle": "train", "rounded_rect": "train", "shield": "train",
    "hexagon": "heldout", "diamond": "heldout", "seal": "heldout",
}  # fmt: skip
# Pool of each RGBA image that an installed package ships (train.synth.logos.PACKAGE_LOGOS).
PACKAGE_LOGO_SPLIT = {"mpl-logo2": "train", "mpl-icon": "train", "skimage-logo": "heldout"}
# Placement weights of each family, per pool (placement names: train.synth.placements).
FAMILY_PLACEMENTS: dict[str, dict[str, dict[str, float]]] = {
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
HELDOUT_WEIGHT_IN_ANY = 0.5  # split="any": held-out placements are half as frequent
