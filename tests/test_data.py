"""Folder scanning, duplicates and pairs, the group-aware stratified split and the pair batch sampler."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import add_mark, make_photo, write_dataset
from train import duplicates as dup
from train.data import Sample, resolve_train_root, scan_folder, write_data_report
from train.relabel import apply_relabels, read_relabel_file, write_relabel_report
from train.splits import PairBatchSampler, load_splits, stratified_split


def save(image: Image.Image, path: Path, quality: int = 92) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        image.save(path, quality=quality)
    else:
        image.save(path)
    return path


def corner_mark(image: Image.Image) -> Image.Image:
    """A small logo-like mark in the bottom-right corner: a box with text."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    draw.rectangle([w - 58, h - 22, w - 4, h - 4], fill=(250, 250, 250))
    draw.text((w - 55, h - 20), "@shop", fill=(200, 0, 0))
    return out


def by_name(samples: list[Sample]) -> dict[str, Sample]:
    return {f"{s.path.parent.name}/{s.path.name}": s for s in samples}


def test_split_is_seeded_stratified_and_keeps_pairs(tiny_dataset: Path) -> None:
    splits = load_splits(tiny_dataset, val_fraction=0.3, seed=1)
    assert splits.val_source == "split"
    val_groups = {s.group for s in splits.val}
    assert not val_groups & {s.group for s in splits.train}
    assert sum(s.label for s in splits.val) == 3 and sum(1 - s.label for s in splits.val) == 3
    again = load_splits(tiny_dataset, val_fraction=0.3, seed=1)
    assert [s.path for s in again.val] == [s.path for s in splits.val]
    other = load_splits(tiny_dataset, val_fraction=0.3, seed=2)
    assert [s.path for s in other.val] != [s.path for s in splits.val]


def test_val_folder_is_used_when_present(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", pairs=4)
    write_dataset(tmp_path / "v", pairs=2, seed=7)
    (tmp_path / "v" / "train").rename(root / "val")
    splits = load_splits(root)
    assert splits.val_source == "folder" and len(splits.val) == 4 and len(splits.train) == 8
    assert all(s.pair for s in splits.val) and splits.report.counts()["declared_pairs"] == 6


def test_flat_layout_is_accepted(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", pairs=3) / "train"
    assert resolve_train_root(root) == (root, None)


def test_missing_or_empty_class_is_a_clear_error(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", pairs=3)
    for f in (root / "train" / "positive").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="positive.*empty"):
        scan_folder(root / "train")
    (root / "train" / "positive").rmdir()
    with pytest.raises(FileNotFoundError, match="class folder missing"):
        scan_folder(root / "train")
    with pytest.raises(FileNotFoundError, match="expected folders positive"):
        resolve_train_root(tmp_path)


def test_split_too_small_is_a_clear_error() -> None:
    samples = [Sample(Path(f"/x/train/positive/a{i}.jpg"), 1) for i in range(1)] + [
        Sample(Path(f"/x/train/negative/b{i}.jpg"), 0) for i in range(5)
    ]
    with pytest.raises(ValueError, match="cannot split class 'positive'"):
        stratified_split(samples, val_fraction=0.2, seed=0)


def test_pair_sampler_keeps_groups_together_and_covers_all() -> None:
    keys = ["a", "a", "b", "b", "c", "d", "d", "e", "e"]
    sampler = PairBatchSampler(keys, batch_size=4, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(keys)))
    for batch in batches:
        for i in batch:
            assert all(j in batch for j, k in enumerate(keys) if k == keys[i])
    sampler.set_epoch(1)
    assert list(sampler) != batches or len(batches) == 1


def test_sample_defaults_to_its_own_group_and_batch() -> None:
    clean = Sample(Path("/d/negative/a.jpg"), 0)
    assert clean.group == str(clean.path) and clean.pair is None and clean.batch_key == str(clean.path)
    marked = Sample(Path("/out/overlay/a.jpg"), 1, group=clean.group, pair="overlay:a")
    assert (marked.group, marked.batch_key) == (clean.group, "overlay:a")


def test_reencoded_and_resized_copies_group_but_different_photos_do_not(tmp_path: Path) -> None:
    photo = make_photo(1, 192)
    save(photo, tmp_path / "negative" / "a.jpg")
    save(photo, tmp_path / "negative" / "a_q70.jpg", quality=70)
    save(photo.resize((96, 96), Image.Resampling.BILINEAR), tmp_path / "negative" / "a_half.jpg")
    back = photo.resize((96, 96), Image.Resampling.BILINEAR).resize((192, 192), Image.Resampling.BILINEAR)
    save(back, tmp_path / "negative" / "a_back.png")
    save(make_photo(2, 192), tmp_path / "negative" / "b.jpg")
    save(make_photo(3, 192), tmp_path / "positive" / "c.jpg")
    scan = scan_folder(tmp_path)
    named = by_name(scan.samples)
    copies = {named[f"negative/{n}"].group for n in ("a.jpg", "a_q70.jpg", "a_half.jpg", "a_back.png")}
    assert len(copies) == 1 and copies != {named["negative/b.jpg"].group}
    assert len({s.group for s in scan.samples}) == 3 and not scan.excluded
    assert all(s.pair is None for s in scan.samples)  # same-label duplicates: kept, not paired
    counts = scan.report.counts()
    assert counts["duplicate_groups"] == 1 and counts["near_duplicate_files"] == 4 and counts["conflict_files"] == 0


def test_exact_duplicates_group_and_stay_on_one_side(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", pairs=8) / "train"
    save(make_photo(50), root / "negative" / "lone.jpg")
    for original, copy in (("img_003.jpg", "copy_of_3.jpg"), ("lone.jpg", "copy_of_lone.jpg")):
        (root / "negative" / copy).write_bytes((root / "negative" / original).read_bytes())
    scan = scan_folder(root)
    named = by_name(scan.samples)
    assert named["negative/copy_of_3.jpg"].group == named["negative/img_003.jpg"].group
    assert named["negative/copy_of_lone.jpg"].group == named["negative/lone.jpg"].group
    kinds = {e.path.name: e.kind for e in scan.report.entries}
    assert kinds["copy_of_lone.jpg"] == kinds["lone.jpg"] == "exact"
    assert kinds["copy_of_3.jpg"] == kinds["img_003.jpg"] == "pair"  # the clean copy checks as a pair too
    counts = scan.report.counts()
    assert counts["exact_duplicate_files"] == 2 and counts["same_label_duplicates"] == 2 and not scan.excluded
    for seed in range(5):
        train, val = stratified_split(scan.samples, val_fraction=0.3, seed=seed)
        assert not {s.group for s in train} & {s.group for s in val}


def test_declared_pair_is_batched_together_and_on_one_side(tiny_dataset: Path) -> None:
    scan = scan_folder(tiny_dataset / "train")
    named = by_name(scan.samples)
    for i in range(10):
        pos, neg = named[f"positive/img_{i:03d}.jpg"], named[f"negative/img_{i:03d}.jpg"]
        assert pos.pair is not None and pos.pair == neg.pair and pos.group == neg.group
    keys = [s.batch_key for s in scan.samples]
    for batch in PairBatchSampler(keys, batch_size=4, seed=0):
        stems = [scan.samples[i].path.stem for i in batch]
        assert all(stems.count(stem) == 2 for stem in stems)
    splits = load_splits(tiny_dataset, val_fraction=0.3, seed=0)
    assert {s.pair for s in splits.train}.isdisjoint({s.pair for s in splits.val})


def test_same_stem_is_not_a_pair_without_evidence(tmp_path: Path) -> None:
    """The real-data case: positive/Sample_N.jpg and negative/Sample_N.jpg are unrelated photos."""
    for i in range(3):
        save(add_mark(make_photo(10 + i, 160), i), tmp_path / "positive" / f"Sample_{i}.jpg")
        save(make_photo(20 + i, 160), tmp_path / "negative" / f"Sample_{i}.jpg")
    scan = scan_folder(tmp_path)
    assert len({s.group for s in scan.samples}) == 6 and all(s.pair is None for s in scan.samples)
    assert len({s.batch_key for s in scan.samples}) == 6 and not scan.report.entries


def test_undeclared_marked_copy_is_checked_as_a_pair(tmp_path: Path) -> None:
    photo = make_photo(4, 192)
    save(photo, tmp_path / "negative" / "clean.jpg")
    save(corner_mark(photo), tmp_path / "positive" / "shop.jpg")
    save(make_photo(5, 192), tmp_path / "positive" / "other.jpg")
    scan = scan_folder(tmp_path)
    named = by_name(scan.samples)
    clean, marked = named["negative/clean.jpg"], named["positive/shop.jpg"]
    assert clean.pair is not None and clean.pair == marked.pair and clean.group == marked.group
    assert named["positive/other.jpg"].pair is None
    assert {e.kind for e in scan.report.entries} == {"pair"}
    assert scan.report.counts()["checked_pairs"] == 1 and not scan.excluded


def test_same_photo_under_both_labels_is_a_conflict(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", pairs=4) / "train"
    photo = make_photo(99, 160)
    save(photo, root / "negative" / "dup.jpg")
    (root / "positive" / "dup_bytes.jpg").write_bytes((root / "negative" / "dup.jpg").read_bytes())
    save(photo, root / "positive" / "dup_q70.jpg", quality=70)
    scan = scan_folder(root)
    left_out = {s.path.name for s in scan.excluded}
    assert left_out == {"dup.jpg", "dup_bytes.jpg", "dup_q70.jpg"}
    assert not left_out & {s.path.name for s in scan.samples}
    counts = scan.report.counts()
    assert counts["conflict_groups"] == 1 and counts["conflict_files"] == 3 and counts["declared_pairs"] == 4

    report = write_data_report(scan.report, tmp_path / "reports" / "duplicates.csv")
    with report.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["group", "file", "label", "kind", "pair", "detail"]
    conflicts = {Path(r["file"]).name: r for r in rows if r["kind"] == "conflict"}
    assert set(conflicts) == left_out and conflicts["dup_q70.jpg"]["label"] == "positive"
    assert "same photo as negative/dup.jpg" in conflicts["dup_q70.jpg"]["detail"]
    assert not list(report.parent.glob("*.tmp*"))

    splits = load_splits(root.parent, val_fraction=0.25, seed=0)
    assert not left_out & {s.path.name for s in splits.train + splits.val}
    assert {s.path.name for s in splits.excluded} == left_out


def test_class_of_only_conflicts_is_a_clear_error(tmp_path: Path) -> None:
    for i in range(2):
        save(make_photo(30 + i, 128), tmp_path / "negative" / f"n{i}.jpg")
        (tmp_path / "positive").mkdir(exist_ok=True)
        (tmp_path / "positive" / f"p{i}.jpg").write_bytes((tmp_path / "negative" / f"n{i}.jpg").read_bytes())
    with pytest.raises(ValueError, match=r"no usable images \(class 'negative' is empty once 2 label conflicts"):
        scan_folder(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("positive,negative,note\n", r"pairs.csv: line 1: unknown column 'note'"),
        ("positive\npositive/img_000.jpg\n", r"pairs.csv: line 1: column 'negative' missing"),
        ("positive,negative\npositive/img_000.jpg,negative/img_000.jpg\npositive/nope.jpg,negative/img_001.jpg\n",
         r"pairs.csv: line 3: positive 'positive/nope.jpg': no such file"),
        ("positive,negative\nnegative/img_000.jpg,negative/img_001.jpg\n",
         r"pairs.csv: line 2: positive 'negative/img_000.jpg' is not a file under positive/"),
        ("positive,negative\npositive/img_000.jpg,../train/negative/img_000.jpg\n",
         r"line 2: negative '../train/negative/img_000.jpg' is not a file under negative/"),
        ("positive,negative\npositive/img_000.jpg,\n", r"line 2: negative is empty"),
        ("positive,negative\npositive/img_000.jpg,negative/img_000.jpg,x\n", r"line 2: more values than the columns"),
    ],
)  # fmt: skip
def test_bad_pairs_file_rows_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    root = write_dataset(tmp_path / "d", pairs=2) / "train"
    (root / dup.PAIRS_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        scan_folder(root)


def test_pairs_file_accepts_any_column_order_bom_and_blank_lines(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", pairs=3) / "train"
    (root / "positive" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rows = "negative,positive\nnegative/img_000.jpg,positive/img_000.jpg\n\nnegative/img_001.jpg,positive/broken.jpg\n"
    (root / dup.PAIRS_FILE).write_text("\ufeff" + rows, encoding="utf-8")
    scan = scan_folder(root)
    named = by_name(scan.samples)
    assert named["positive/img_000.jpg"].pair == named["negative/img_000.jpg"].pair is not None
    assert named["negative/img_001.jpg"].pair is None  # its declared partner does not decode
    assert [p.name for p, _ in scan.skipped] == ["broken.jpg"]


def test_near_duplicate_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    for i in range(0, 300, 7):  # plant near copies: flip 0..12 bits
        j = (i * 13 + 5) % 300
        hashes[j] = hashes[i]
        bits = np.unpackbits(hashes[j])
        bits[rng.choice(256, rng.integers(0, 13), replace=False)] ^= 1
        hashes[j] = np.packbits(bits)
    found = dup.near_duplicate_pairs(hashes, 10, max_cells=1000)  # many small chunks
    expected = [
        (i, j, dup.hamming(hashes[i], hashes[j]))
        for i in range(300) for j in range(i + 1, 300) if dup.hamming(hashes[i], hashes[j]) <= 10
    ]  # fmt: skip
    assert [tuple(row) for row in found.tolist()] == expected and expected


def test_compare_marked_tells_marks_from_copies() -> None:
    photo = make_photo(7, 256)
    as_array = dup.compare_image
    jpeg = io.BytesIO()
    photo.save(jpeg, "JPEG", quality=70)
    copy = Image.open(jpeg).convert("RGB")
    assert dup.compare_marked(as_array(photo), as_array(corner_mark(photo))).verdict == "pair"
    assert dup.compare_marked(as_array(photo), as_array(copy)).verdict == "same"
    assert dup.compare_marked(as_array(photo), as_array(make_photo(8, 256))).verdict == "different"


def write_relabels(path: Path, *rows: str) -> Path:
    path.write_text("file,label,reason\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\n", r"columns reason missing; need file,label,reason"),
        ("file,label,reason\nnegative/a.jpg,watermarked,url\n", r"line 2: label 'watermarked': allowed are negative, positive, exclude"),
        ("file,label,reason\nnegative/a.jpg,positive,\n", r"line 2: negative/a.jpg: reason is empty"),
        ("file,label,reason\n../x/a.jpg,positive,url\n", r"line 2: file '../x/a.jpg': give a path relative to the train folder"),
        ("file,label,reason\nnegative/a.jpg,positive,url\nnegative/a.jpg,exclude,x\n", r"line 3: negative/a.jpg is already relabelled on line 2"),
    ],
)
def test_bad_relabel_file_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "relabel.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_relabel_file(path)
    with pytest.raises(FileNotFoundError, match="--relabel .*absent.csv: file not found"):
        read_relabel_file(tmp_path / "absent.csv")


def test_relabel_changes_only_the_listed_files_and_lists_them(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", pairs=6) / "train"
    scan = scan_folder(root)
    relabels = read_relabel_file(write_relabels(
        tmp_path / "r.csv", "negative/img_001.jpg,positive,URL in a corner", "positive/img_002.jpg,exclude,unsure",
    ))  # fmt: skip
    fixed, rows = apply_relabels(scan, root, relabels)

    by_name = {s.path.relative_to(root).as_posix(): s for s in fixed.samples}
    assert by_name["negative/img_001.jpg"].label == 1 and by_name["negative/img_001.jpg"].pair is None
    assert "positive/img_002.jpg" not in by_name and any(s.path.name == "img_002.jpg" for s in fixed.excluded)
    untouched = {k: v for k, v in by_name.items() if k != "negative/img_001.jpg"}
    before = {s.path.relative_to(root).as_posix(): s for s in scan.samples}
    assert all(before[k] == v for k, v in untouched.items())
    assert [(r.file, r.folder_label, r.label, r.note) for r in rows] == [
        ("negative/img_001.jpg", "negative", "positive", "relabelled"),
        ("positive/img_002.jpg", "positive", "exclude", "left out"),
    ]
    report = write_relabel_report(rows, tmp_path / "reports" / "relabelled.csv")
    with report.open(newline="", encoding="utf-8") as handle:
        listed = list(csv.DictReader(handle))
    assert listed[0] == {
        "file": "negative/img_001.jpg", "folder_label": "negative", "label": "positive", "reason": "URL in a corner",
        "note": "relabelled",
    }  # fmt: skip

    with pytest.raises(ValueError, match=r"relabel: .*negative/nope.jpg is not an image there; files are named relative to"):
        apply_relabels(scan, root, read_relabel_file(write_relabels(tmp_path / "bad.csv", "negative/nope.jpg,positive,x")))


def test_relabel_resolves_a_label_conflict_and_reaches_the_held_out_list(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", pairs=8) / "train"
    photo = make_photo(99, 160)
    save(photo, root / "negative" / "dup.jpg")
    save(photo, root / "positive" / "dup_q70.jpg", quality=70)
    relabel = write_relabels(tmp_path / "r.csv", "negative/dup.jpg,positive,the mark is on the original too")

    splits = load_splits(root.parent, val_fraction=0.25, seed=0, holdout_fraction=0.25, relabel=relabel)
    everything = splits.train + splits.val + splits.holdout
    dups = [s for s in everything if s.path.name.startswith("dup")]
    assert sorted(s.path.name for s in dups) == ["dup.jpg", "dup_q70.jpg"] and {s.label for s in dups} == {1}
    assert len({s.group for s in dups}) == 1 and not splits.excluded
    assert [(r.file, r.note) for r in splits.relabelled] == [("negative/dup.jpg", "label conflict resolved: back in the data")]
    assert not load_splits(root.parent, val_fraction=0.25, seed=0).relabelled
