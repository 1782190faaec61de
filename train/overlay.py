"""Synthetic positives from a user's clean photos, paired with their originals.

``--overlay-negatives K`` draws synthetic watermarks (:func:`train.synth.render_watermark`,
the *training* style pool only: the held-out fonts, logos and placements stay unseen, so
evaluation on them stays honest) onto the clean training photos before training starts.
``K`` is the number of marked copies per clean photo; a fraction marks a seeded share of
the photos (``0.5``: every other photo on average, one copy each).

Every marked photo is paired with a *clean twin*: the same decoded original, saved as a
JPEG of the same quality. The twin replaces the original in training, so the two members
of a pair differ only by the mark and never by their JPEG history (a shortcut a model
would otherwise learn: "re-encoded means watermarked"). A pair shares one batch and one
side of every split. Files are ordinary images under ``OUTPUT/overlay/``, written
atomically once per (source bytes, seed, font set) and reused by later runs, so the
feature cache treats them like any other image.

The marks are drawn with the declared fonts only (those ``scripts/setup_fonts.sh``
installs; :func:`train.synth.demo.declared_fonts_only`), as the demo dataset is: a font
that something else installed (Chromium's packages bring Liberation, for one) changes
neither the marks nor the model trained on them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from handler.preprocess import ImageDecodeError, load_image_file
from train.data import Sample
from train.io import write_bytes_atomic

log = logging.getLogger(__name__)

STYLE_SPLIT = "train"  # never the held-out pool: those styles measure generalisation
JPEG_QUALITY = (80, 95)  # one quality per pair, shared by the twin and its marked copies


def copies_for(rng: random.Random, copies: float) -> int:
    """Whole copies plus one more with probability equal to the fractional part."""
    whole = math.floor(copies)
    return whole + (1 if rng.random() < copies - whole else 0)


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _render_pair(source: Path, folder: Path, count: int, seed_text: str) -> tuple[Path, list[Path]] | None:
    """Write (once) the clean twin and ``count`` marked copies of ``source``; None if unreadable."""
    from train.synth import render_watermark

    twin = folder / "clean.jpg"
    marked = [folder / f"mark-{k}.jpg" for k in range(count)]
    if twin.exists() and all(p.exists() for p in marked):
        return twin, marked
    try:
        image = load_image_file(source)
    except ImageDecodeError as exc:
        log.warning("overlay: skipping %s (%s)", source, exc)
        return None
    quality = random.Random(f"{seed_text}:quality").randint(*JPEG_QUALITY)
    for k, path in enumerate(marked):
        rng = random.Random(f"{seed_text}:{k}")
        mark, _ = render_watermark(image, rng, split=STYLE_SPLIT, jpeg_prob=0.0)
        write_bytes_atomic(path, _jpeg_bytes(mark, quality))
    write_bytes_atomic(twin, _jpeg_bytes(image, quality))  # last: its presence marks the folder complete
    return twin, marked


def add_overlay_pairs(samples: Sequence[Sample], out_dir: Path, *, copies: float, seed: int) -> list[Sample]:
    """The training samples with synthetic pairs: chosen clean photos become (twin, marked copies).

    Args:
        samples: training samples; only negatives are marked, positives pass through.
        out_dir: folder of the rendered files (reused across runs).
        copies: marked copies per clean photo (a fraction marks a seeded share).
        seed: run seed; the same seed and source bytes give the same files.

    Returns:
        ``samples`` with every chosen clean photo replaced by its clean twin, followed by
        the marked copies (label 1); twin and copies share the original's ``group`` and a
        ``pair`` key.
    """
    if not (copies >= 0 and math.isfinite(copies)):
        raise ValueError(f"--overlay-negatives {copies}: must be a number >= 0")
    if copies == 0:
        return list(samples)
    from train.synth.demo import declared_fonts_only

    kept: list[Sample] = []
    made: list[Sample] = []
    with declared_fonts_only() as fonts:
        font_set = fonts["fonts_sha256"][:8]
        for sample in samples:
            digest = hashlib.sha256(sample.path.read_bytes()).hexdigest()[:16] if sample.label == 0 else ""
            count = copies_for(random.Random(f"{digest}:{seed}:count"), copies) if digest else 0
            folder = out_dir / f"{digest}-{seed}-{font_set}"
            rendered = _render_pair(sample.path, folder, count, f"{digest}:{seed}") if count else None
            if rendered is None:
                kept.append(sample)
                continue
            twin, marked = rendered
            pair = f"overlay:{digest}-{seed}"
            kept.append(Sample(twin, 0, group=sample.group, pair=pair))
            made.extend(Sample(path, 1, group=sample.group, pair=pair) for path in marked)
    log.info(
        "overlay: %d synthetic positives paired with %d clean photos (%d declared font files, set %s)",
        len(made), sum(1 for s in kept if s.pair and s.pair.startswith("overlay:")), fonts["font_files"], font_set,
    )
    return kept + made
