"""The review page's store (real SQLite, real files) and python -m train review-export."""

from __future__ import annotations

import csv
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from review.store import Check, ReviewStore, is_overturned, save_photo, sha256_hex
from tests.serving_fixtures import jpeg_bytes, png_bytes
from train.cli import main as train_main
from train.feedback import export_decisions


def add_photo(store: ReviewStore, photos: Path, data: bytes, name: str, verdict: str, p: float = 0.8) -> Check:
    sha = sha256_hex(data)
    check = Check(
        sha256=sha, file_name=name, photo_file=save_photo(photos, sha, "jpg", data), model="watermark",
        version="1.0", probability=p, threshold=0.37, verdict=verdict,
        explanation={"rows": 1, "cols": 1, "grid": [[0.5]], "image": {"width": 4, "height": 3}},
    )
    store.record_check(check)
    return check


@pytest.fixture
def store(tmp_path: Path) -> ReviewStore:
    return ReviewStore(tmp_path / "review" / "decisions.sqlite")


def test_durable_settings_and_schema(store: ReviewStore):
    assert store.pragmas() == {"journal_mode": "wal", "synchronous": 2}  # 2 = FULL
    again = ReviewStore(store.path)  # reopening keeps everything
    assert again.decisions() == []
    with pytest.raises(FileNotFoundError, match="no such decisions database"):
        ReviewStore(store.path.with_name("missing.sqlite"), create=False)
    assert not store.path.with_name("missing.sqlite").exists()
    other = store.path.with_name("other.sqlite")
    other.write_bytes(b"not a database at all" * 10)
    with pytest.raises(ValueError, match="not an SQLite database"):
        ReviewStore(other, create=False)
    other.unlink()
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    with pytest.raises(ValueError, match="not a decisions database"):
        ReviewStore(other, create=False)
    assert ReviewStore(store.path, create=False).decisions() == []


def test_overturned_means_decision_disagrees_with_verdict():
    assert is_overturned("watermark", "accept") and is_overturned("clean", "reject")
    assert not is_overturned("watermark", "reject") and not is_overturned("clean", "accept")


def test_decision_copies_its_check_and_a_later_one_replaces_it(store: ReviewStore, tmp_path: Path):
    check = add_photo(store, tmp_path / "photos", jpeg_bytes(seed=1), "shop/a.jpg", "watermark", 0.91)
    first = store.decide(check.sha256, "reject", "  Sara  ")
    assert first.reviewer == "Sara" and not first.overturned and first.probability == 0.91
    assert first.file_name == "shop/a.jpg" and first.photo_file == f"{check.sha256}.jpg"
    assert first.model == "watermark" and first.version == "1.0" and first.threshold == 0.37

    second = store.decide(check.sha256, "accept", "Sara")
    rows = store.decisions()
    assert len(rows) == 1 and rows[0].decision == "accept" and rows[0].overturned
    assert rows[0].decided_at == second.decided_at > first.decided_at

    store.decide(check.sha256, "reject", "Omid")  # another reviewer: a row of their own
    assert len(store.decisions()) == 2
    latest = store.latest_decisions()
    assert len(latest) == 1 and latest[0].reviewer == "Omid" and latest[0].decision == "reject"


def test_bad_decisions_are_refused_by_name(store: ReviewStore, tmp_path: Path):
    check = add_photo(store, tmp_path / "photos", jpeg_bytes(seed=2), "b.jpg", "clean", 0.1)
    with pytest.raises(ValueError, match="allowed are accept"):
        store.decide(check.sha256, "maybe", "Sara")
    for name in ("", "   ", None, 7):
        with pytest.raises(ValueError, match="type your name first"):
            store.decide(check.sha256, "accept", name)
    with pytest.raises(ValueError, match="at most 100 characters"):
        store.decide(check.sha256, "accept", "x" * 101)
    with pytest.raises(LookupError, match="not checked"):
        store.decide("0" * 64, "accept", "Sara")
    assert store.decisions() == []


def test_concurrent_identical_decisions_store_one_row(store: ReviewStore, tmp_path: Path):
    check = add_photo(store, tmp_path / "photos", jpeg_bytes(seed=3), "c.jpg", "clean", 0.2)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def click() -> None:
        try:
            barrier.wait(timeout=10)
            store.decide(check.sha256, "reject", "Sara")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=click) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    rows = store.decisions()
    assert len(rows) == 1 and rows[0].decision == "reject" and rows[0].overturned


def test_save_photo_is_content_addressed_and_leaves_no_temporary_file(tmp_path: Path):
    data = png_bytes(seed=4)
    sha = sha256_hex(data)
    name = save_photo(tmp_path / "photos", sha, "png", data)
    assert name == f"{sha}.png" and (tmp_path / "photos" / name).read_bytes() == data
    assert save_photo(tmp_path / "photos", sha, "png", data) == name  # again: kept as is
    assert sorted(os.listdir(tmp_path / "photos")) == [name]
    with pytest.raises(ValueError, match="do not match"):
        save_photo(tmp_path / "photos", "0" * 64, "png", data)
    assert sorted(os.listdir(tmp_path / "photos")) == [name]


# ---------------------------------------------------------------- review-export
@pytest.fixture
def decided(store: ReviewStore, tmp_path: Path) -> dict[str, Check]:
    photos = tmp_path / "photos"
    checks = {
        "kept_mark": add_photo(store, photos, jpeg_bytes(seed=10), "kept_mark.jpg", "watermark", 0.9),
        "missed_mark": add_photo(store, photos, jpeg_bytes(seed=11), "missed_mark.jpg", "clean", 0.2),
        "clean": add_photo(store, photos, jpeg_bytes(seed=12), "clean.jpg", "clean", 0.1),
        "false_alarm": add_photo(store, photos, jpeg_bytes(seed=13), "false_alarm.jpg", "watermark", 0.8),
        "undecided": add_photo(store, photos, jpeg_bytes(seed=14), "undecided.jpg", "watermark", 0.7),
    }
    store.decide(checks["kept_mark"].sha256, "reject", "Sara")
    store.decide(checks["missed_mark"].sha256, "accept", "Sara")
    store.decide(checks["missed_mark"].sha256, "reject", "Omid")  # the latest decision counts
    store.decide(checks["clean"].sha256, "accept", "Sara")
    store.decide(checks["false_alarm"].sha256, "accept", "Sara")
    return checks


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_export_writes_training_folders_from_latest_decisions(store, decided, tmp_path: Path):
    out = tmp_path / "feedback"
    result = export_decisions(store.path, tmp_path / "photos", out)
    assert result == {"out": str(out), "only": "all", "positive": 2, "negative": 2, "overturned": 2}
    sha = {k: c.sha256 for k, c in decided.items()}
    assert sorted(p.name for p in (out / "positive").iterdir()) == sorted(f"{sha[k]}.jpg" for k in ("kept_mark", "missed_mark"))
    assert sorted(p.name for p in (out / "negative").iterdir()) == sorted(f"{sha[k]}.jpg" for k in ("clean", "false_alarm"))
    assert (out / "positive" / f"{sha['kept_mark']}.jpg").read_bytes() == jpeg_bytes(seed=10)
    rows = {r["original_name"]: r for r in read_csv(out / "decisions.csv")}
    assert set(rows) == {"kept_mark.jpg", "missed_mark.jpg", "clean.jpg", "false_alarm.jpg"}
    assert rows["missed_mark.jpg"]["label"] == "positive" and rows["missed_mark.jpg"]["reviewer"] == "Omid"
    assert rows["missed_mark.jpg"]["overturned"] == "1" and rows["kept_mark.jpg"]["overturned"] == "0"
    assert rows["false_alarm.jpg"]["file"] == f"negative/{sha['false_alarm']}.jpg"
    assert sorted(os.listdir(tmp_path)) == sorted(["feedback", "photos", "review"])  # no staging left

    # only the overturned ones, through the command line; a non-empty OUT needs --overwrite
    args = ["review-export", "--db", str(store.path), "--photos", str(tmp_path / "photos"), "--out", str(out)]
    assert train_main([*args, "--only", "overturned"]) == 2
    assert len(read_csv(out / "decisions.csv")) == 4  # untouched
    assert train_main([*args, "--only", "overturned", "--overwrite"]) == 0
    assert [p.name for p in (out / "positive").iterdir()] == [f"{sha['missed_mark']}.jpg"]
    assert [p.name for p in (out / "negative").iterdir()] == [f"{sha['false_alarm']}.jpg"]


def test_export_errors_name_the_path_and_leave_out_alone(store, decided, tmp_path: Path, capsys):
    out = tmp_path / "feedback"
    missing = tmp_path / "photos" / decided["clean"].photo_file
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        export_decisions(store.path, tmp_path / "photos", out)
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="no such decisions database"):
        export_decisions(tmp_path / "nope.sqlite", tmp_path / "photos", out)
    assert not (tmp_path / "nope.sqlite").exists()  # never created by a reader
    (tmp_path / "photos" / decided["kept_mark"].photo_file).write_bytes(b"changed")
    missing.write_bytes(jpeg_bytes(seed=12))
    with pytest.raises(ValueError, match="do not match"):
        export_decisions(store.path, tmp_path / "photos", out)
    assert train_main(["review-export", "--db", str(store.path), "--photos", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "--photos" in capsys.readouterr().err and not out.exists()
