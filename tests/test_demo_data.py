"""Tests for the demo dataset builder (train/synth/demo.py and the modules it uses)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from train import synth
from train.synth import demo, demo_crops, photos

TINY = {"crops_per_photo": 1, "holdout_crops_per_photo": 1, "image_size": 96, "progress": False, "eval_crops_per_photo": 1}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.jpg")}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "data"
    manifest = demo.build_demo_dataset(out, seed=3, **TINY)
    return out, manifest


def test_base_photos_are_found() -> None:
    found = photos.find_base_photos()
    paths = photos.base_photo_paths()
    assert len(paths) == len(found) >= photos.MIN_BASE_PHOTOS
    assert all(p.is_file() for p in paths)
    names = [p.name for p in found]
    assert len(set(names)) == len(names)
    assert "coffee" in names and "china" in names and "grace_hopper" in names
    assert not {"chessboard_rgb", "color", "logo", "text", "page", "horse"} & set(names)


def test_layout_and_counts_match_manifest(built: tuple[Path, dict]) -> None:
    out, manifest = built
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8")) == manifest
    assert sorted(p.name for p in out.iterdir()) == ["eval", "manifest.json", "test", "test_labels.csv", "train", "val"]
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


def test_pairs_are_declared_in_pairs_csv(built: tuple[Path, dict]) -> None:
    from train.data import scan_folder
    from train.duplicates import read_pairs_file

    out, _ = built
    for split in ("train", "val"):
        stems = sorted(_stems(out / split / "positive"))
        rows = [(row.positive, row.negative) for row in read_pairs_file(out / split)]
        assert rows == [(f"positive/{stem}.jpg", f"negative/{stem}.jpg") for stem in stems]
        scan = scan_folder(out / split)
        assert not scan.excluded and all(s.pair is not None for s in scan.samples)
        for stem in stems:
            versions = [s for s in scan.samples if s.path.stem == stem]
            assert len(versions) == 2 and len({(s.pair, s.group) for s in versions}) == 1, stem


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
        split = "test" if rel.startswith("eval/") else rel.split("/")[0]  # eval sets: test photos only
        assert entry["base_photo"] in splits[split], rel
    groups: dict[str, set[str]] = {}
    for name, meta in manifest["base_photo_sources"].items():
        split = next(s for s, names in splits.items() if name in names)
        groups.setdefault(meta["group"], set()).add(split)
    assert all(len(found) == 1 for found in groups.values())  # same-shoot photos stay together


def test_test_labels_cover_every_test_file(built: tuple[Path, dict]) -> None:
    out, manifest = built
    with (out / "test_labels.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "label", "family", "base_photo", "font", "placement", "scene_text"]
    assert sorted(r["file"] for r in rows) == sorted(p.name for p in (out / "test").iterdir())
    for row in rows:
        assert row["label"] in {"0", "1"}
        assert bool(row["family"]) == (row["label"] == "1") == bool(row["font"]) == bool(row["placement"])
        entry = manifest["files"][f"test/{row['file']}"]
        assert row["scene_text"] == entry.get("scene_text", {}).get("kind", "")
        if row["label"] == "1":
            assert row["placement"] in synth.placement_pool("train")  # the test split is in-distribution
        assert row["base_photo"] in manifest["base_photos"]["test"]
        assert manifest["files"][f"test/{row['file']}"]["label"] == ("positive" if row["label"] == "1" else "negative")
    assert sum(r["label"] == "1" for r in rows) == manifest["counts"]["test"]["positive"]


def test_existing_output_is_not_touched_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"data.*--overwrite"):
        demo.build_demo_dataset(out, **TINY)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert demo.main([str(out), "--crops-per-photo", "1", "--image-size", "96", "--no-progress"]) == 1


def test_cli_passes_every_option_to_the_builder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m train demo-data`` hands -h and options before the output folder to the builder's parser."""
    from train.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo-data", "-h"])
    assert exit_info.value.code == 0
    assert "usage: python -m train demo-data" in capsys.readouterr().out
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # options first, then the folder: parsed (no argparse error, exit 2), refused as non-empty (1)
    assert cli_main(["demo-data", "--crops-per-photo", "1", "--no-progress", str(out), "--image-size", "96"]) == 1
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo-data", "--no-such-option", str(out)])
    assert exit_info.value.code == 2


def test_build_is_reproducible_and_overwrite_replaces(tmp_path: Path, built: tuple[Path, dict]) -> None:
    first, _ = built
    again = tmp_path / "again"
    demo.build_demo_dataset(again, seed=3, **TINY)
    assert _files(again) == _files(first)
    demo.build_demo_dataset(again, seed=4, overwrite=True, **TINY)
    assert _files(again) != _files(first)
    assert json.loads((again / "manifest.json").read_text(encoding="utf-8"))["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no tmp/old folders left


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = demo_crops.render_watermark

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(demo_crops, "render_watermark", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        demo.build_demo_dataset(tmp_path / "data", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_too_few_base_photos_names_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    three = photos.find_base_photos()[:3]
    monkeypatch.setattr(demo, "find_base_photos", lambda: three)
    with pytest.raises(RuntimeError, match="scikit-image"):
        demo.build_demo_dataset(tmp_path / "data", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="crops_per_photo"):
        demo.build_demo_dataset(tmp_path / "x", crops_per_photo=0)
    with pytest.raises(ValueError, match="holdout_crops_per_photo"):
        demo.build_demo_dataset(tmp_path / "x", holdout_crops_per_photo=0)
    with pytest.raises(ValueError, match="image_size"):
        demo.build_demo_dataset(tmp_path / "x", image_size=8)
    with pytest.raises(ValueError, match="hard_negative_fraction"):
        demo.build_demo_dataset(tmp_path / "x", hard_negative_fraction=1.5)
    with pytest.raises(ValueError, match="eval_crops_per_photo"):
        demo.build_demo_dataset(tmp_path / "x", eval_crops_per_photo=-1)
    assert not (tmp_path / "x").exists()


def _styles(folder: Path) -> list[dict[str, str]]:
    with (folder / "styles.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_training_positives_use_the_train_style_pool(built: tuple[Path, dict]) -> None:
    _, manifest = built
    train_fonts = {p.name for s in synth.SCRIPTS for p in synth.font_pool("train", s)}
    for rel, entry in manifest["files"].items():
        mark = entry.get("watermark")
        if mark is None or rel.startswith("eval/"):
            continue
        assert mark["split"] == "train", rel
        assert mark["placement"] in synth.placement_pool("train"), rel
        assert mark["font"] in train_fonts | {"none"}, rel
        assert mark["logo"] is None or mark["logo"] in synth.logo_pool("train"), rel
    assert manifest["style_pools"]["train"]["placements"] == synth.placement_pool("train")
    assert not set(manifest["style_pools"]["train"]["logos"]) & set(manifest["style_pools"]["heldout"]["logos"])


def test_hard_negative_pairs_share_scene_text(built: tuple[Path, dict]) -> None:
    out, manifest = built
    files = manifest["files"]
    with_scene = 0
    for rel, entry in files.items():
        if not rel.startswith(("train/positive/", "val/positive/")):
            continue
        twin = files[rel.replace("/positive/", "/negative/")]
        assert entry.get("scene_text") == twin.get("scene_text"), rel  # same scene text in both versions
        if "scene_text" in entry:
            with_scene += 1
            assert entry["scene_text"]["kind"] in synth.HARD_NEGATIVE_KINDS
            assert entry["scene_text"]["split"] == "train"
    pairs = manifest["counts"]["train"]["positive"] + manifest["counts"]["val"]["positive"]
    assert 0.1 * pairs <= with_scene <= 0.6 * pairs  # about hard_negative_fraction = 0.3
    assert manifest["parameters"]["hard_negative_fraction"] == demo.HARD_NEGATIVE_FRACTION
    assert sum(manifest["scene_text_counts"].values()) >= with_scene


def test_eval_sets(built: tuple[Path, dict]) -> None:
    out, manifest = built
    test_photos = set(manifest["base_photos"]["test"])
    evals = manifest["eval"]
    assert set(evals) == {"heldout_styles", "hard_negatives"}
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["hard_negatives", "heldout_styles"]

    held = out / "eval" / "heldout_styles"
    assert sorted(p.name for p in held.iterdir()) == ["negative", "positive", "styles.csv"]
    positives, negatives = _stems(held / "positive"), _stems(held / "negative")
    assert positives == negatives and len(positives) == evals["heldout_styles"]["counts"]["positive"] > 0
    rows = _styles(held)
    assert list(rows[0]) == ["file", "label", "family", "font", "placement", "split", "scene_text"]
    listed = sorted(str(p.relative_to(held)) for p in held.rglob("*.jpg"))
    assert sorted(r["file"] for r in rows) == listed  # styles.csv covers every file, once
    train_fonts = {p.name for s in synth.SCRIPTS for p in synth.font_pool("train", s)}
    for row in rows:
        entry = manifest["files"][f"eval/heldout_styles/{row['file']}"]
        assert entry["base_photo"] in test_photos
        assert row["label"] == ("1" if row["file"].startswith("positive/") else "0")
        if row["label"] == "1":
            assert row["split"] == "heldout" == entry["watermark"]["split"]
            assert row["placement"] in synth.placement_pool("heldout")
            assert row["font"] not in train_fonts
            assert row["family"] == entry["watermark"]["family"]
        else:
            assert row["family"] == row["font"] == row["placement"] == row["split"] == ""

    hard = out / "eval" / "hard_negatives"
    assert sorted(p.name for p in hard.iterdir()) == ["negative", "styles.csv"]  # no positive/ folder
    rows = _styles(hard)
    listed = sorted(str(p.relative_to(hard)) for p in hard.rglob("*.jpg"))
    assert sorted(r["file"] for r in rows) == listed and len(rows) == evals["hard_negatives"]["counts"]["negative"]
    assert {r["scene_text"] for r in rows} == set(synth.HARD_NEGATIVE_KINDS)  # every kind
    for row in rows:
        entry = manifest["files"][f"eval/hard_negatives/{row['file']}"]
        assert row["label"] == "0" and entry["label"] == "negative" and "watermark" not in entry
        assert entry["base_photo"] in test_photos
        assert entry["scene_text"]["kind"] == row["scene_text"]
        assert entry["scene_text"]["split"] == "heldout"
    assert set(evals["hard_negatives"]["base_photos"]) <= test_photos
    assert set(evals["heldout_styles"]["base_photos"]) <= test_photos


def test_extra_fonts_on_the_discovery_path_do_not_change_the_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built: tuple[Path, dict]
) -> None:
    """The demo is built from the declared fonts alone: an extra font folder that every
    other use of the renderer would pick up changes no byte of it."""
    from train.synth import fonts

    extra = tmp_path / "extra-fonts"
    extra.mkdir()
    bundled = fonts.bundled_font_dir()
    assert bundled is not None
    for name in ("DejaVuSans.ttf", "DejaVuSerif.ttf"):
        (extra / f"Extra{name}").write_bytes((bundled / name).read_bytes())
    monkeypatch.setenv(fonts.FONT_DIRS_ENV, str(extra))
    assert {p.name for p in fonts.font_candidates()} >= {"ExtraDejaVuSans.ttf", "ExtraDejaVuSerif.ttf"}  # discovery sees them
    again = tmp_path / "data"
    manifest = demo.build_demo_dataset(again, seed=3, **TINY)
    assert _files(again) == _files(built[0])
    assert manifest["inputs"]["font_files"] > 0 and manifest["inputs"]["fonts_sha256"] == built[1]["inputs"]["fonts_sha256"]


def test_missing_declared_inputs_are_announced_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from train.synth import fonts

    files, _ = fonts.declared_font_files()
    monkeypatch.setattr(demo, "declared_font_files", lambda: (files, ["fonts-farsiweb"]))
    found = photos.find_base_photos()
    monkeypatch.setattr(demo, "find_base_photos", lambda: [p for p in found if not p.source.startswith("sklearn/")])
    with caplog.at_level("WARNING"):
        manifest = demo.build_demo_dataset(tmp_path / "data", seed=3, **TINY)
    assert manifest["inputs"]["missing_font_packages"] == ["fonts-farsiweb"]
    assert manifest["inputs"]["missing_photo_sources"] == ["sklearn/datasets/images"]
    assert "declared font packages missing: fonts-farsiweb" in caplog.text
    assert "declared photo sources missing: sklearn/datasets/images" in caplog.text
