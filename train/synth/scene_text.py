"""Scene text, the hard negatives: opaque text that belongs to the scene and must NOT be flagged.

:func:`render_scene_text` draws one element of :data:`HARD_NEGATIVE_KINDS`:
``product_label`` (paper or coloured label with brand, Persian product name,
weight/volume, ingredient lines and a fake barcode), ``printed_text`` (ink printed on the
object itself, bent round a cylinder, waved or in perspective), ``price_tag`` (sticker
with a price) and ``box_face`` (a box side with a big brand name). The flat designs are
:mod:`train.synth.scene_design`; this module places them on the object area found in
the photo (never at the border), perspective-warps them, lights them by the photo's own
low-frequency luminance, blurs and shadows them slightly, and composites them opaque
(alpha 1). Fonts come from the same style pools as watermarks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageStat

from train.synth.compose import scaled_mask
from train.synth.info import SceneTextInfo
from train.synth.scene_design import Writer, design_box_face, design_label, design_price_tag, design_printed
from train.synth.splits import check_split
from train.synth.style import weighted
from train.synth.text import is_persian

HARD_NEGATIVE_KINDS = ("product_label", "printed_text", "price_tag", "box_face")
_SCENE_WEIGHTS = {"product_label": 0.3, "printed_text": 0.3, "price_tag": 0.2, "box_face": 0.2}
# Width of the element, relative to the image width.
_SCENE_WIDTH = {"product_label": (0.25, 0.5), "printed_text": (0.2, 0.5), "price_tag": (0.12, 0.25),
                "box_face": (0.35, 0.65)}  # fmt: skip
_SCENE_MARGIN = 0.04  # never closer than this (of the side) to the image border


@dataclass
class _ScenePart:
    """One designed, warped, placed and lit scene-text element, before compositing."""

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
    """RGBA image with its colour multiplied by ``factor`` (per pixel or overall)."""
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
    writer = Writer(rng, split)
    box = _object_box(image)
    if kind == "product_label":
        design, ink, background = design_label(rng, split, writer)
        warp = "cylinder" if rng.random() < 0.35 else "perspective"
        max_angle, persp, gamma, gradient = 8.0, 0.12, 0.5, rng.uniform(0.0, 0.12)
        shadow, blur = rng.uniform(0.25, 0.45), rng.uniform(0.35, 0.7)
    elif kind == "printed_text":
        gray = image.convert("L").crop(tuple(round(v) for v in box))  # type: ignore[arg-type]
        design, ink, background = design_printed(rng, split, writer, ImageStat.Stat(gray).mean[0])
        warp = weighted(rng, {"cylinder": 0.45, "wave": 0.2, "perspective": 0.35})
        max_angle, persp, gamma, gradient = 10.0, 0.15, 0.85, rng.uniform(0.0, 0.1)
        shadow, blur = 0.0, rng.uniform(0.3, 0.6)
    elif kind == "price_tag":
        design, ink, background = design_price_tag(rng, split, writer)
        warp = "perspective"
        max_angle, persp, gamma, gradient = 15.0, 0.1, 0.5, rng.uniform(0.0, 0.1)
        shadow, blur = rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.6)
    else:  # box_face
        design, ink, background = design_box_face(rng, split, writer)
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
    """Contact shadow, element, slight blur; returns (image, bbox of every changed pixel)."""
    alpha = part.layer.getchannel("A")
    out = image.convert("RGB")
    if part.shadow > 0:
        shadow = Image.new("L", image.size)
        shadow.paste(alpha, part.shadow_offset)
        shadow = shadow.filter(ImageFilter.GaussianBlur(part.shadow_blur))
        out = Image.composite(Image.new("RGB", image.size, (0, 0, 0)), out, scaled_mask(shadow, part.shadow))
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
    check_split(split)
    if kind is None:
        kind = weighted(rng, _SCENE_WEIGHTS)
    elif kind not in HARD_NEGATIVE_KINDS:
        raise ValueError(f"unknown scene-text kind {kind!r}: allowed are {', '.join(HARD_NEGATIVE_KINDS)}")
    base = image.convert("RGB")
    part = _scene_text_parts(base, rng, kind, split)
    out, bbox = _composite_scene(base, part)
    persian = [is_persian(t) for t in part.texts]
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
