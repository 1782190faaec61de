"""The on-disk feature cache: round trips, damaged entries, other weights, full disks, bounded RAM."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train import cache as cache_lib
from train.data import scan_folder
from train.io import DiskFullError
from train.model import BLOCKS, WatermarkNet, block_index

SPEC_SIZE = 75
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def items(tiny_dataset: Path) -> list:
    samples = scan_folder(tiny_dataset / "train").samples[:6]
    return [(s, "orig") for s in samples]


@pytest.fixture
def model() -> WatermarkNet:
    torch.manual_seed(0)
    return WatermarkNet().eval()


def _spec():
    from handler.preprocess import PreprocessSpec

    return PreprocessSpec(image_size=SPEC_SIZE)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_entry_reads_back_what_was_written(tmp_path: Path, dtype: str) -> None:
    feature = torch.randn(8, 5, 5) * 30
    path = tmp_path / "ab" / "x.npy"
    cache_lib.write_entry(path, feature, dtype)
    back = cache_lib.read_entry(path, dtype)
    assert back is not None and back.dtype == np.dtype(dtype)
    assert np.array_equal(back, feature.numpy().astype(dtype))
    assert cache_lib.read_entry(path, "float32" if dtype == "float16" else "float16") is None  # other type: not trusted
    assert not list(tmp_path.rglob(".*tmp*"))


def test_overflowing_float16_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="overflow float16; use --cache-dtype float32"):
        cache_lib.write_entry(tmp_path / "x.npy", torch.full((1, 2, 2), 1e6), "float16")
    assert not list(tmp_path.iterdir())


def test_cached_features_match_the_model_and_are_reused(model: WatermarkNet, items: list, tmp_path: Path) -> None:
    stop = block_index("Mixed_7a")
    spec = _spec()
    first = cache_lib.cached_features(model, items, spec, stop=stop, cache_dir=tmp_path, progress=False, dtype="float32")
    pixels = torch.stack([cache_lib.pixel_tensor(s, v, spec) for s, v in items])
    with torch.inference_mode():
        expected = model.features(pixels.contiguous(memory_format=torch.channels_last), stop=stop)
    got = torch.stack([first[i][0] for i in range(len(items))])
    assert torch.allclose(got, expected, atol=1e-5)
    before = {p: p.stat().st_mtime_ns for p in first.paths}
    again = cache_lib.cached_features(model, items, spec, stop=stop, cache_dir=tmp_path, progress=False, dtype="float32")
    assert again.paths == first.paths and {p: p.stat().st_mtime_ns for p in again.paths} == before


def test_base_cut_is_written_in_the_same_pass_and_derives_deeper_cuts(
    model: WatermarkNet, items: list, tmp_path: Path
) -> None:
    spec = _spec()
    base, stop = block_index("Mixed_6a"), block_index("Mixed_7a")
    derived = cache_lib.cached_features(
        model, items, spec, stop=stop, base_stop=base, cache_dir=tmp_path, progress=False, dtype="float32"
    )
    base_paths = cache_lib.entry_paths(model, items, spec, stop=base, cache_dir=tmp_path, dtype="float32", amp="none")
    assert all(cache_lib.read_entry(p, "float32") is not None for p in base_paths)
    for p in derived.paths:  # recompute the deep cut from the cached base only
        p.unlink()
    again = cache_lib.cached_features(
        model, items, spec, stop=stop, base_stop=base, cache_dir=tmp_path, progress=False, dtype="float32"
    )
    direct = cache_lib.cached_features(model, items, spec, stop=stop, cache_dir=tmp_path / "direct", progress=False, dtype="float32")
    for i in range(len(items)):
        assert torch.allclose(again[i][0], direct[i][0], atol=1e-4)


def test_damaged_entry_is_recomputed_not_trusted(model: WatermarkNet, items: list, tmp_path: Path, caplog) -> None:
    stop = block_index("Mixed_7a")
    spec = _spec()
    data = cache_lib.cached_features(model, items, spec, stop=stop, cache_dir=tmp_path, progress=False)
    good = data[0][0].clone()
    data.paths[0].write_bytes(data.paths[0].read_bytes()[:100])  # truncated, as by a crash of another tool
    again = cache_lib.cached_features(model, items, spec, stop=stop, cache_dir=tmp_path, progress=False)
    assert "unreadable; recomputing" in caplog.text
    assert torch.equal(again[0][0], good)


def test_other_weights_never_read_this_cache(model: WatermarkNet, items: list, tmp_path: Path) -> None:
    stop = block_index("Mixed_7a")
    spec = _spec()
    first = cache_lib.cached_features(model, items, spec, stop=stop, cache_dir=tmp_path, progress=False)
    with torch.no_grad():
        model.block(BLOCKS[0]).conv.weight.add_(0.01)
    other = cache_lib.entry_paths(model, items, spec, stop=stop, cache_dir=tmp_path, dtype="float16", amp="none")
    assert not set(other) & set(first.paths)
    bf16 = cache_lib.entry_paths(model, items, spec, stop=stop, cache_dir=tmp_path, dtype="float16", amp="bf16")
    assert not set(bf16) & set(other)  # features computed in another precision are other entries


def test_full_disk_is_refused_before_writing(model: WatermarkNet, items: list, tmp_path: Path, monkeypatch) -> None:
    tmp_path = tmp_path / "cache"
    monkeypatch.setattr(cache_lib.shutil, "disk_usage", lambda _: type("U", (), {"free": 1000})())
    with pytest.raises(DiskFullError, match=r"need .* GB, .* GB free; free space, point --cache-dir elsewhere"):
        cache_lib.cached_features(model, items, _spec(), stop=block_index("Mixed_7a"), cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.rglob("*.npy")) and not list(tmp_path.rglob(".*"))


def test_disk_filling_up_mid_run_leaves_only_whole_entries(model: WatermarkNet, items: list, tmp_path: Path, monkeypatch) -> None:
    tmp_path = tmp_path / "cache"
    real_save = np.save
    calls = {"n": 0}

    def save(handle, array, allow_pickle=False):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(handle, array, allow_pickle=allow_pickle)

    monkeypatch.setattr(cache_lib.np, "save", save)
    stop = block_index("Mixed_7a")
    with pytest.raises(DiskFullError, match="no space left writing"):
        cache_lib.cached_features(model, items, _spec(), stop=stop, cache_dir=tmp_path, progress=False)
    written = list(tmp_path.rglob("*.npy"))
    assert len(written) == 3 and not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".npy"]
    assert all(cache_lib.read_entry(p, "float16") is not None for p in written)
    monkeypatch.setattr(cache_lib.np, "save", real_save)
    done = cache_lib.cached_features(model, items, _spec(), stop=stop, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.rglob("*.npy"))) == len(items) == len(done)


RAM_PROBE = r"""
import json, resource, sys
from pathlib import Path
import torch
from torch.utils.data import DataLoader
from train.cache import FeatureDataset, entry_path, write_entry

root, count = Path(sys.argv[1]), int(sys.argv[2])
feature = torch.randn(256, 32, 32)  # 0.5 MB per entry in float16
paths = [entry_path(root, f"{i:064x}") for i in range(count)]
for p in paths:
    write_entry(p, feature, "float16")
del feature
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
total = 0.0
for batch, _ in DataLoader(FeatureDataset(paths, [0.0] * count, "float16"), batch_size=8):
    total += float(batch.sum())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": after - before, "entries": count}))
"""


def test_reading_a_cache_larger_than_a_ram_limit_keeps_memory_flat(tmp_path: Path) -> None:
    """400 entries (200 MB on disk, 400 MB as float32) are read with < 40 MB of growth."""
    proc = subprocess.run(
        [sys.executable, "-c", RAM_PROBE, str(tmp_path / "cache"), "400"], cwd=ROOT, capture_output=True, text=True,
        timeout=240, check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["grew_kib"] < 40 * 1024, result


def test_entry_check_reads_only_the_header_and_catches_short_files(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    cache_lib.write_entry(path, torch.randn(4, 3, 3), "float16")
    assert cache_lib.entry_ok(path, "float16") and not cache_lib.entry_ok(path, "float32")
    path.write_bytes(path.read_bytes()[:-2])
    assert not cache_lib.entry_ok(path, "float16")
    assert not cache_lib.entry_ok(tmp_path / "absent.npy", "float16")
    path.write_bytes(b"not an npy file at all")
    assert not cache_lib.entry_ok(path, "float16")
