"""Shared fixtures: tiny labelled image folders made on the fly (no shipped images)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from train.duplicates import write_pairs_file


def make_photo(seed: int, size: int = 96) -> Image.Image:
    """A smooth random 'photo': gradients plus a few shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(x * rng.uniform(1, 6) + rng.uniform(0, 3)) for _ in range(3)], axis=-1)
    base = (base * 0.5 + 0.5) * 200 + rng.normal(0, 8, (size, size, 3))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.integers(0, size - 20, 2)
        draw.ellipse([x0, y0, x0 + rng.integers(8, 30), y0 + rng.integers(8, 30)], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def add_mark(image: Image.Image, seed: int) -> Image.Image:
    """A crude but strong watermark: white text-like bars over the centre."""
    rng = random.Random(seed)
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for row in range(3):
        y = h // 3 + row * h // 10
        draw.text((w // 8 + rng.randint(0, 4), y), "@shop_" + str(seed), fill=(255, 255, 255))
    return out


def write_dataset(root: Path, pairs: int, *, size: int = 96, seed: int = 0) -> Path:
    """``root/train/{positive,negative}`` with ``pairs`` paired crops, declared in ``train/pairs.csv``."""
    for cls in ("positive", "negative"):
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(pairs):
        photo = make_photo(seed * 1000 + i, size)
        photo.save(root / "train" / "negative" / f"img_{i:03d}.jpg", quality=92)
        add_mark(photo, i).save(root / "train" / "positive" / f"img_{i:03d}.jpg", quality=92)
        names.append((f"positive/img_{i:03d}.jpg", f"negative/img_{i:03d}.jpg"))
    write_pairs_file(root / "train", names)
    return root


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", pairs=10)
