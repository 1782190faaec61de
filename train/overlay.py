"""Synthetic positives from a user's clean photos, paired with their originals.

``--overlay-negatives K`` draws synthetic watermarks (:func:`train.synth.render_watermark`,
the *training* style pool only: the held-out fonts, logos and placements stay unseen, so
evaluation on them stays honest) onto the clean training photos before training starts.
``K`` is the number of marked copies per clean photo; a fraction marks a seeded share of
the photos (``0.5``: every other photo on average, one copy each).

Every marked copy is paired with its original, which stays in training as the clean
member of the pair, and has the original's JPEG history: a JPEG original's marked copy is
saved with the original's own quantisation tables and chroma subsampling, so re-encoding
changes the unmarked blocks by rounding only; any other original's marked copy is saved
losslessly (PNG). The two members of a pair therefore differ by the mark, not by a JPEG
generation (a shortcut a model would otherwise learn). An earlier design replaced the
original by a re-encoded *clean twin*; with every clean photo marked, that left the
original JPEG history only on the dataset's own positives, so clean uploads, which keep
it, looked more like watermarked ones. A declared pair (``pairs.csv``) keeps its key, so
the dataset's watermarked version, the original and its marked copies share one batch
and one side of every split. Files are ordinary images under ``OUTPUT/overlay/``, written
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
from dataclasses import replace
from pathlib import Path

from PIL import Image, JpegImagePlugin

from handler.preprocess import ImageDecodeError, load_image_file
from train.data import Sample
from train.io import write_bytes_atomic

log = logging.getLogger(__name__)

STYLE_SPLIT = "train"  # never the held-out pool: those styles measure generalisation
LAYOUT = "h2"  # folder-name suffix of this file layout: marks in the original's JPEG history


def copies_for(rng: random.Random, copies: float) -> int:
    """Whole copies plus one more with probability equal to the fractional part."""
    whole = math.floor(copies)
    return whole + (1 if rng.random() < copies - whole else 0)


def _jpeg_history(source: Path) -> dict | None:
    """The source's JPEG encoder settings (quantisation tables, subsampling); None if it is no JPEG."""
    with Image.open(source) as original:
        if original.format != "JPEG" or not getattr(original, "quantization", None):
            return None
        sampling = JpegImagePlugin.get_sampling(original)
        return {"qtables": original.quantization, "subsampling": sampling if sampling >= 0 else "4:2:0"}


def _render_marks(source: Path, folder: Path, count: int, seed_text: str) -> list[Path] | None:
    """Write (once) ``count`` marked copies of ``source`` in its history; None if it is unreadable.

    A JPEG source's copies are JPEGs with its quantisation tables and subsampling; any
    other source's copies are lossless PNGs.
    """
    from train.synth import render_watermark

    try:
        history = _jpeg_history(source)
        marked = [folder / f"mark-{k}{'.jpg' if history else '.png'}" for k in range(count)]
        if all(path.exists() for path in marked):
            return marked
        image = load_image_file(source)
    except (ImageDecodeError, OSError) as exc:  # PIL's UnidentifiedImageError is an OSError
        log.warning("overlay: skipping %s (%s)", source, exc)
        return None
    for k, path in enumerate(marked):
        mark, _ = render_watermark(image, random.Random(f"{seed_text}:{k}"), split=STYLE_SPLIT, jpeg_prob=0.0)
        buffer = io.BytesIO()
        if history:
            mark.save(buffer, format="JPEG", **history)
        else:
            mark.save(buffer, format="PNG")
        write_bytes_atomic(path, buffer.getvalue())
    return marked


def add_overlay_pairs(samples: Sequence[Sample], out_dir: Path, *, copies: float, seed: int) -> list[Sample]:
    """The training samples followed by marked copies of chosen clean photos, paired with them.

    Args:
        samples: training samples; only negatives are marked, positives pass through.
        out_dir: folder of the rendered files (reused across runs).
        copies: marked copies per clean photo (a fraction marks a seeded share).
        seed: run seed; the same seed and source bytes give the same files.

    Returns:
        ``samples`` (a chosen clean photo gets a pair key when it had none), followed by
        the marked copies (label 1), which share the original's ``group`` and pair key.
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
            folder = out_dir / f"{digest}-{seed}-{font_set}-{LAYOUT}"
            marked = _render_marks(sample.path, folder, count, f"{digest}:{seed}") if count else None
            if not marked:
                kept.append(sample)
                continue
            pair = sample.pair or f"overlay:{digest}-{seed}"
            kept.append(replace(sample, pair=pair))
            made.extend(Sample(path, 1, group=sample.group, pair=pair) for path in marked)
    log.info(
        "overlay: %d synthetic positives paired with %d clean photos (%d declared font files, set %s)",
        len(made), len({s.pair for s in made}), fonts["font_files"], font_set,
    )
    return kept + made
