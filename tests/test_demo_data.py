"""Tests for the demo dataset builder (train/demo_data.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from train import demo_data

TINY = {"crops_per_photo": 1, "image_size": 96, "progress": False}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.jpg")}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "data"
    manifest = demo_data.build_demo_dataset(out, seed=3, **TINY)
    return out, manifest


def test_base_photos_are_found() -> None:
    photos = demo_data.find_base_photos()
    paths = demo_data.base_photo_paths()
    assert len(paths) == len(photos) >= demo_data.MIN_BASE_PHOTOS
    assert all(p.is_file() for p in paths)
    names = [p.name for p in photos]
    assert len(set(names)) == len(names)
    assert "coffee" in names and "china" in names and "grace_hopper" in names
    assert not {"chessboard_rgb", "color", "logo", "text", "page", "horse"} & set(names)


def test_layout_and_counts_match_manifest(built: tuple[Path, dict]) -> None:
    out, manifest = built
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8")) == manifest
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test", "test_labels.csv", "train", "val"]
    counts = manifest["counts"]
    for split in ("train", "val"):
        for label in ("positive", "negative"):
            assert len(list((out / split / label).glob("*.jpg"))) == counts[split][label] > 0
    test_files = sorted(p.name for p in (out / "test").iterdir())
    assert len(test_files) == counts["test"]["total"] == counts["test"]["positive"] + counts["test"]["negative"] > 0
    assert all(name.startswith("img_") and name.endswith(".jpg") for name in test_files)
    listed = {path for path in _files(out) if path.endswith(".jpg")}
    assert listed == set(manifest["files"])
    assert manifest["seed"] == 3 and manifest["parameters"]["image_size"] == 96
    with Image.open(out / "test" / test_files[0]) as image:
        assert image.size == (96, 96) and image.mode == "RGB"


def test_every_positive_has_a_negative_with_the_same_stem(built: tuple[Path, dict]) -> None:
    out, manifest = built
    for split in ("train", "val"):
        positives, negatives = _stems(out / split / "positive"), _stems(out / split / "negative")
        assert positives == negatives and positives
    for rel, entry in manifest["files"].items():
        if entry["label"] == "positive":
            assert entry["watermark"]["family"] in manifest["parameters"]["style_families"], rel
        else:
            assert "watermark" not in entry, rel


def test_pairs_differ_only_by_the_mark(built: tuple[Path, dict]) -> None:
    out, _ = built
    stem = sorted(_stems(out / "train" / "positive"))[0]
    with Image.open(out / "train" / "positive" / f"{stem}.jpg") as pos, Image.open(
        out / "train" / "negative" / f"{stem}.jpg"
    ) as neg:
        assert pos.size == neg.size and pos.tobytes() != neg.tobytes()


def test_no_base_photo_in_two_splits(built: tuple[Path, dict]) -> None:
    _, manifest = built
    splits = {split: set(names) for split, names in manifest["base_photos"].items()}
    assert all(splits.values())
    assert not splits["train"] & splits["val"]
    assert not splits["train"] & splits["test"]
    assert not splits["val"] & splits["test"]
    for rel, entry in manifest["files"].items():
        assert entry["base_photo"] in splits[rel.split("/")[0]], rel
    groups: dict[str, set[str]] = {}
    for name, meta in manifest["base_photo_sources"].items():
        split = next(s for s, names in splits.items() if name in names)
        groups.setdefault(meta["group"], set()).add(split)
    assert all(len(found) == 1 for found in groups.values())  # same-shoot photos stay together


def test_test_labels_cover_every_test_file(built: tuple[Path, dict]) -> None:
    out, manifest = built
    with (out / "test_labels.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "label", "family", "base_photo"]
    assert sorted(r["file"] for r in rows) == sorted(p.name for p in (out / "test").iterdir())
    for row in rows:
        assert row["label"] in {"0", "1"}
        assert bool(row["family"]) == (row["label"] == "1")
        assert row["base_photo"] in manifest["base_photos"]["test"]
        assert manifest["files"][f"test/{row['file']}"]["label"] == ("positive" if row["label"] == "1" else "negative")
    assert sum(r["label"] == "1" for r in rows) == manifest["counts"]["test"]["positive"]


def test_existing_output_is_not_touched_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"data.*--overwrite"):
        demo_data.build_demo_dataset(out, **TINY)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert demo_data.main([str(out), "--crops-per-photo", "1", "--image-size", "96", "--no-progress"]) == 1


def test_build_is_reproducible_and_overwrite_replaces(tmp_path: Path, built: tuple[Path, dict]) -> None:
    first, _ = built
    again = tmp_path / "again"
    demo_data.build_demo_dataset(again, seed=3, **TINY)
    assert _files(again) == _files(first)
    demo_data.build_demo_dataset(again, seed=4, overwrite=True, **TINY)
    assert _files(again) != _files(first)
    assert json.loads((again / "manifest.json").read_text(encoding="utf-8"))["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no tmp/old folders left


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = demo_data.synth.render_watermark

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(demo_data.synth, "render_watermark", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        demo_data.build_demo_dataset(tmp_path / "data", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_too_few_base_photos_names_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    three = demo_data.find_base_photos()[:3]
    monkeypatch.setattr(demo_data, "find_base_photos", lambda: three)
    with pytest.raises(RuntimeError, match="scikit-image"):
        demo_data.build_demo_dataset(tmp_path / "data", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="crops_per_photo"):
        demo_data.build_demo_dataset(tmp_path / "x", crops_per_photo=0)
    with pytest.raises(ValueError, match="image_size"):
        demo_data.build_demo_dataset(tmp_path / "x", image_size=8)
