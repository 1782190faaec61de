"""Synthetic positives from a user's clean photos, to enlarge or balance a dataset.

``--overlay-negatives K`` renders K watermarked copies of every clean training photo
(:func:`train.synth.render_watermark`, seeded) before training starts. Each copy keeps
its source's file stem, so it is batched together with the clean original and the
model learns the overlay, not the photo. Copies are ordinary files under
``OUTPUT/overlay/``, so the feature cache treats them like any other image.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Sequence
from pathlib import Path

from handler.preprocess import ImageDecodeError, load_image_file
from train.data import Sample

log = logging.getLogger(__name__)


def overlay_negatives(
    samples: Sequence[Sample], out_dir: Path, *, copies: int, seed: int
) -> list[Sample]:
    """Watermarked copies (label 1) of the negatives in ``samples``.

    Files are written once per (source bytes, copy index, seed) and reused by later
    runs; a file that fails to decode is skipped with a warning.
    """
    if copies < 0:
        raise ValueError(f"--overlay-negatives {copies}: must be >= 0")
    if copies == 0:
        return []
    from train.synth import render_watermark

    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[Sample] = []
    for sample in samples:
        if sample.label != 0:
            continue
        digest = hashlib.sha256(sample.path.read_bytes()).hexdigest()[:16]
        for k in range(copies):
            # Same stem as the source (pairing), unique folder per source and copy.
            target = out_dir / f"{digest}-{seed}-{k}" / f"{sample.path.stem}.jpg"
            if not target.exists():
                try:
                    image = load_image_file(sample.path)
                except ImageDecodeError as exc:
                    log.warning("overlay: skipping %s (%s)", sample.path, exc)
                    break
                rng = random.Random(f"{digest}:{seed}:{k}")
                marked, _ = render_watermark(image, rng)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.stem + ".tmp.jpg")
                marked.save(tmp, "JPEG", quality=95)
                tmp.replace(target)
            made.append(Sample(target, 1))
    log.info("overlay: %d synthetic positives from %d clean photos", len(made), sum(1 for s in samples if s.label == 0))
    return made
