"""Folder scanning, the pair-aware stratified split and the pair batch sampler."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_dataset
from train.data import PairBatchSampler, Sample, load_splits, resolve_train_root, scan_folder, stratified_split


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
