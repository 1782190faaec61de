"""train.io: one way to write a file or swap a folder, and what happens when it fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train import io as io_lib


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_json_and_csv_writes_leave_no_temporary_files(tmp_path):
    io_lib.write_json_atomic(tmp_path / "a.json", {"b": 1, "a": float("nan")})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": NaN,\n  "b": 1\n}\n'
    with pytest.raises(ValueError):
        io_lib.write_json_atomic(tmp_path / "a.json", {"a": float("nan")}, allow_nan=False)
    assert json.loads((tmp_path / "a.json").read_text().replace("NaN", "null")) == {"a": None, "b": 1}  # untouched
    io_lib.write_csv_atomic(tmp_path / "t.csv", ["x", "y"], [[1, "a,b"]])
    assert (tmp_path / "t.csv").read_bytes() == b'x,y\r\n1,"a,b"\r\n'
    assert leftovers(tmp_path) == []


def test_a_failing_writer_leaves_the_old_file(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        io_lib.write_with(target, broken)
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_staged_folder_swaps_in_whole_or_not_at_all(tmp_path):
    target = tmp_path / "export"
    with io_lib.staged_folder(target) as staging:
        (staging / "model.pt").write_bytes(b"v1")
    assert (target / "model.pt").read_bytes() == b"v1"
    with pytest.raises(RuntimeError):
        with io_lib.staged_folder(target) as staging:
            (staging / "model.pt").write_bytes(b"v2-half")
            raise RuntimeError("trace failed")
    assert (target / "model.pt").read_bytes() == b"v1" and leftovers(tmp_path) == []
    with io_lib.staged_folder(target) as staging:
        (staging / "model.pt").write_bytes(b"v2")
    assert [p.name for p in target.iterdir()] == ["model.pt"] and (target / "model.pt").read_bytes() == b"v2"
    assert leftovers(tmp_path) == []


def test_swap_puts_the_old_folder_back_when_the_rename_fails(tmp_path, monkeypatch):
    target, staging = tmp_path / "export", tmp_path / "new"
    target.mkdir()
    (target / "model.pt").write_bytes(b"old")
    staging.mkdir()
    real_rename = Path.rename

    def rename(self, other):
        if self == staging:
            raise OSError(18, "Invalid cross-device link")
        return real_rename(self, other)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="cross-device"):
        io_lib.swap_folder(staging, target)
    assert (target / "model.pt").read_bytes() == b"old" and leftovers(tmp_path) == []


def test_swap_replaces_a_file_or_a_symlink_too(tmp_path):
    for make in (lambda p: p.write_text("a file"), lambda p: p.symlink_to(tmp_path / "elsewhere")):
        target, staging = tmp_path / "out", tmp_path / "staging"
        make(target)
        staging.mkdir()
        io_lib.swap_folder(staging, target)
        assert target.is_dir() and not target.is_symlink()
        target.rmdir()
    assert leftovers(tmp_path) == []


def test_tracking_uri_and_sqlite_path(tmp_path):
    uri = io_lib.default_tracking_uri(tmp_path / "out")
    assert uri == f"sqlite:///{tmp_path.resolve()}/out/mlflow/mlflow.db"
    assert io_lib.sqlite_path(uri) == tmp_path.resolve() / "out" / "mlflow" / "mlflow.db"
    assert io_lib.sqlite_path("postgresql://u@h/db") is None


def test_read_json_option_names_the_option_and_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--space .*missing.json: file not found"):
        io_lib.read_json_option(tmp_path / "missing.json", "--space")
    (tmp_path / "bad.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(ValueError, match=r"--config .*bad.json: not valid JSON"):
        io_lib.read_json_option(tmp_path / "bad.json", "--config")
