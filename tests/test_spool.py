"""The spool on its own: durability settings, order, per-sink cursors, overflow, rejected lines."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from qkdtel.spool import SPOOL_FILE, Spool, list_rejected, requeue_rejected


def lines(start: int, stop: int) -> list[str]:
    return [f"m v={i}i {i}" for i in range(start, stop)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / SPOOL_FILE


def test_commits_in_wal_mode_with_full_sync(path: Path) -> None:
    spool = Spool(path, ["a"], 10_000)
    spool.append(lines(0, 3))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert spool._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # Committed: another connection sees the rows before the spool is closed.
    assert conn.execute("SELECT count(*) FROM points").fetchone()[0] == 3
    conn.close()
    spool.close()


def test_reads_in_order_and_survives_reopening(path: Path) -> None:
    spool = Spool(path, ["a"], 10_000)
    assert spool.append(lines(0, 10)).accepted == 10
    first = spool.read("a", 4)
    assert first is not None and first.lines == lines(0, 4)
    assert spool.ack("a", first) == (4, 0)
    assert spool.pending("a") == 6
    spool.close()

    spool = Spool(path, ["a"], 10_000)
    assert spool.pending("a") == 6
    rest = spool.read("a", 100)
    assert rest is not None and rest.lines == lines(4, 10)
    spool.ack("a", rest)
    assert spool.read("a", 100) is None
    assert spool.size() == 0
    spool.close()


def test_an_unacknowledged_batch_is_read_again(path: Path) -> None:
    spool = Spool(path, ["a"], 10_000)
    spool.append(lines(0, 5))
    again = spool.read("a", 3)
    assert again == spool.read("a", 3)
    spool.close()


def test_each_sink_has_its_own_cursor(path: Path) -> None:
    spool = Spool(path, ["up", "down"], 10_000)
    spool.append(lines(0, 8))
    batch = spool.read("up", 100)
    assert batch is not None
    spool.ack("up", batch)
    assert spool.pending("up") == 0
    assert spool.pending("down") == 8
    # Kept for the sink that has not acknowledged them.
    assert spool.size() == 8
    late = spool.read("down", 100)
    assert late is not None and late.lines == lines(0, 8)
    spool.ack("down", late)
    assert spool.size() == 0
    spool.close()


def test_ids_are_never_reused_after_the_spool_empties(path: Path) -> None:
    spool = Spool(path, ["a", "b"], 10_000)
    spool.append(lines(0, 3))
    for sink in ("a", "b"):
        batch = spool.read(sink, 10)
        assert batch is not None
        spool.ack(sink, batch)
    spool.close()
    spool = Spool(path, ["a", "b"], 10_000)
    spool.append(lines(3, 5))
    # With reused ids the new points would sit at or below the cursors and never be sent.
    assert spool.pending("a") == 2
    batch = spool.read("a", 10)
    assert batch is not None and batch.lines == lines(3, 5)
    spool.close()


def test_a_new_sink_receives_what_is_spooled_and_a_removed_one_lets_go(path: Path) -> None:
    spool = Spool(path, ["old"], 10_000)
    spool.append(lines(0, 4))
    spool.close()
    spool = Spool(path, ["new"], 10_000)
    assert spool.pending("new") == 4
    batch = spool.read("new", 10)
    assert batch is not None
    spool.ack("new", batch)
    # The removed sink's cursor no longer pins the points.
    assert spool.size() == 0
    spool.close()


def test_drop_oldest_counts_what_each_sink_loses(path: Path) -> None:
    spool = Spool(path, ["fast", "slow"], 1000, "drop_oldest")
    spool.append(lines(0, 900))
    batch = spool.read("fast", 300)
    assert batch is not None
    spool.ack("fast", batch)
    result = spool.append(lines(900, 1200))
    assert result.accepted == 300
    assert result.discarded == 200
    # `fast` had already sent points 0..299: it loses none; `slow` loses 0..199.
    assert result.dropped == {"slow": 200}
    assert spool.size() == 1000
    slow = spool.read("slow", 10_000)
    assert slow is not None and slow.lines == lines(200, 1200)
    fast = spool.read("fast", 10_000)
    assert fast is not None and fast.lines == lines(300, 1200)
    spool.close()


def test_drop_oldest_with_more_points_than_the_spool_holds(path: Path) -> None:
    spool = Spool(path, ["a"], 1000, "drop_oldest")
    spool.append(lines(0, 10))
    result = spool.append(lines(10, 1510))
    assert result.accepted == 1000
    assert result.dropped == {"a": 510}
    batch = spool.read("a", 10_000)
    assert batch is not None and batch.lines == lines(510, 1510)
    spool.close()


def test_reject_new_keeps_the_oldest(path: Path) -> None:
    spool = Spool(path, ["a", "b"], 1000, "reject_new")
    spool.append(lines(0, 900))
    result = spool.append(lines(900, 1200))
    assert result.accepted == 100
    assert result.dropped == {"a": 200, "b": 200}
    assert result.discarded == 200
    assert spool.append(lines(1200, 1210)).accepted == 0
    batch = spool.read("a", 10_000)
    assert batch is not None and batch.lines == lines(0, 1000)
    spool.close()


def test_rejected_lines_are_kept_listed_and_requeued(path: Path) -> None:
    spool = Spool(path, ["a", "b"], 10_000)
    spool.append(lines(0, 4))
    batch = spool.read("a", 10)
    assert batch is not None
    written, refused = spool.ack("a", batch, [("m v=2i 2", "HTTP 400: field type conflict")])
    assert (written, refused) == (3, 1)
    kept = list_rejected(path)
    assert [(r.sink, r.reason, r.line) for r in kept] == [
        ("a", "HTTP 400: field type conflict", "m v=2i 2")
    ]
    assert list_rejected(path, sink="b") == []

    # Requeued from another connection (the CLI) while the spool is open.
    assert requeue_rejected(path, sink="a") == 1
    assert list_rejected(path) == []
    spool.refresh()
    assert spool.pending("a") == 1
    again = spool.read("a", 10)
    assert again is not None and again.lines == ["m v=2i 2"]
    spool.close()


def test_requeue_by_id(path: Path) -> None:
    spool = Spool(path, ["a"], 10_000)
    spool.append(lines(0, 3))
    batch = spool.read("a", 10)
    assert batch is not None
    spool.ack("a", batch, [(line, "bad") for line in batch.lines])
    ids = [r.id for r in list_rejected(path)]
    assert requeue_rejected(path, ids=ids[1:2]) == 1
    assert [r.line for r in list_rejected(path)] == [lines(0, 3)[0], lines(0, 3)[2]]
    spool.close()
