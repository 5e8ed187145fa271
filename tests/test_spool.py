"""The spool on its own: durability settings, order, per-sink cursors, overflow, rejected lines,
the chunk layout (one row per submit) and the refusal of spool files of another layout."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from qkdtel.spool import (
    LAYOUT_VERSION,
    SPOOL_FILE,
    Spool,
    SpoolLayoutError,
    list_rejected,
    requeue_rejected,
)


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
    assert conn.execute("SELECT count(*), sum(points) FROM chunks").fetchone() == (1, 3)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LAYOUT_VERSION
    conn.close()
    spool.close()


def test_one_row_per_submit_holding_the_request_body(path: Path) -> None:
    spool = Spool(path, ["a"], 10_000)
    spool.append(lines(0, 3))
    spool.append(lines(3, 5))
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT first_seq, last_seq, points, ends, body FROM chunks").fetchall()
    assert rows == [
        (1, 3, 3, None, "\n".join(lines(0, 3)).encode()),
        (4, 5, 2, None, "\n".join(lines(3, 5)).encode()),
    ]
    conn.close()
    # Whole chunks are joined into one request body, never split into lines and re-joined.
    batch = spool.read("a", 100)
    assert batch is not None
    assert (batch.first_seq, batch.last_seq, len(batch)) == (1, 5, 5)
    assert batch.body == "\n".join(lines(0, 5)).encode()
    assert batch.lines == lines(0, 5)
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
    for start in range(0, 900, 300):
        spool.append(lines(start, start + 300))
    batch = spool.read("fast", 300)
    assert batch is not None
    spool.ack("fast", batch)
    result = spool.append(lines(900, 1200))
    assert result.accepted == 300
    # Room for 200 more points takes the whole oldest chunk, 300 points.
    assert result.discarded == 300
    # `fast` had already sent points 0..299: it loses none; `slow` loses 0..299.
    assert result.dropped == {"slow": 300}
    assert spool.size() == 900
    assert spool.pending("slow") == spool.pending("fast") == 900
    slow = spool.read("slow", 10_000)
    assert slow is not None and slow.lines == lines(300, 1200)
    fast = spool.read("fast", 10_000)
    assert fast is not None and fast.lines == lines(300, 1200)
    spool.close()


def test_drop_oldest_drops_whole_chunks_and_counts_each_point_exactly(path: Path) -> None:
    spool = Spool(path, ["half", "none"], 1000, "drop_oldest")
    for start in range(0, 1000, 100):
        spool.append(lines(start, start + 100))
    # `half` has sent half of the oldest chunk: the chunk stays until every sink is done with it.
    batch = spool.read("half", 50)
    assert batch is not None and batch.lines == lines(0, 50)
    spool.ack("half", batch)
    assert spool.size() == 1000
    # 150 more points: the two oldest chunks go (200 points), no more.
    result = spool.append(lines(1000, 1150))
    assert (result.accepted, result.discarded) == (150, 200)
    assert result.dropped == {"half": 150, "none": 200}
    assert spool.size() == 950
    for sink in ("half", "none"):
        assert spool.pending(sink) == 950
        rest = spool.read(sink, 10_000)
        assert rest is not None and rest.lines == lines(200, 1150)
    spool.close()


def test_an_overflow_during_a_write_is_not_counted_twice(path: Path) -> None:
    spool = Spool(path, ["a"], 1000, "drop_oldest")
    spool.append(lines(0, 500))
    spool.append(lines(500, 1000))
    in_flight = spool.read("a", 500)
    assert in_flight is not None
    # While that batch is being written, overflow drops its chunk (counted as dropped)...
    assert spool.append(lines(1000, 1100)).dropped == {"a": 500}
    # ...so its acknowledgement counts none of it as written.
    assert spool.ack("a", in_flight) == (0, 0)
    assert spool.pending("a") == 600
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


def test_a_batch_takes_whole_chunks_and_cuts_only_what_does_not_fit(path: Path) -> None:
    spool = Spool(path, ["a"], 10_000)
    for start, stop in ((0, 30), (30, 60), (60, 160), (160, 170)):
        spool.append(lines(start, stop))
    first = spool.read("a", 80)
    # 30 + 30 fit; the 100-point chunk does not fit in what is left: the batch ends before it.
    assert first is not None and first.lines == lines(0, 60)
    spool.ack("a", first)
    # Alone it does not fit either: it is cut...
    cut = spool.read("a", 80)
    assert cut is not None and cut.lines == lines(60, 140)
    assert cut.body == "\n".join(lines(60, 140)).encode()
    spool.ack("a", cut)
    # ...and the next batch takes the rest of it, then whole chunks again.
    rest = spool.read("a", 80)
    assert rest is not None and (rest.first_seq, rest.lines) == (141, lines(140, 170))
    spool.close()


def test_reading_ahead_of_the_cursor(path: Path) -> None:
    spool = Spool(path, ["a"], 10_000)
    spool.append(lines(0, 10))
    spool.append(lines(10, 20))
    current = spool.read("a", 10)
    assert current is not None
    # The writer reads its next batch while `current` is still in flight (not acknowledged).
    following = spool.read("a", 10, after=current.last_seq)
    assert following is not None and following.lines == lines(10, 20)
    assert spool.read("a", 10, after=following.last_seq) is None
    assert spool.pending("a") == 20
    spool.close()


def test_lines_holding_newlines_in_string_fields(path: Path) -> None:
    multiline = [f'm s="two\nlines {i}" {i}' for i in range(6)]
    spool = Spool(path, ["a"], 10_000)
    spool.append(lines(0, 2))
    spool.append(multiline)
    spool.append(lines(8, 10))
    whole = spool.read("a", 100)
    assert whole is not None
    assert whole.lines == lines(0, 2) + multiline + lines(8, 10)
    assert whole.body == "\n".join(whole.lines).encode()
    # Cut inside the chunk whose lines hold newlines.
    spool.ack("a", spool.read("a", 2))  # type: ignore[arg-type]
    part = spool.read("a", 4)
    assert part is not None and part.lines == multiline[:4]
    spool.ack("a", part)
    tail = spool.read("a", 100)
    assert tail is not None and tail.lines == multiline[4:] + lines(8, 10)
    spool.ack("a", tail, [(multiline[5], "bad")])
    assert requeue_rejected(path) == 1
    spool.refresh()
    again = spool.read("a", 100)
    assert again is not None and again.lines == [multiline[5]]
    spool.close()


def test_ack_reports_its_counts_before_pending_shows_them(path: Path) -> None:
    spool = Spool(path, ["a"], 10_000)
    spool.append(lines(0, 5))
    batch = spool.read("a", 10)
    assert batch is not None
    seen = []
    spool.ack("a", batch, [], lambda w, r: seen.append((w, r, spool.pending("a"))))
    assert seen == [(5, 0, 5)]
    assert spool.pending("a") == 0
    spool.close()


def _old_layout_spool(path: Path) -> None:
    """A spool file as the one-row-per-point versions of qkdtel left it."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        PRAGMA journal_mode=WAL;
        CREATE TABLE points (id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL);
        CREATE TABLE cursors (sink TEXT PRIMARY KEY, acked_id INTEGER NOT NULL);
        CREATE TABLE rejected (id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL,
            time_ns INTEGER NOT NULL, reason TEXT NOT NULL, line TEXT NOT NULL);
        INSERT INTO points (line) VALUES ('m v=1i 1'), ('m v=2i 2');
        INSERT INTO cursors VALUES ('a', 0);
        """
    )
    conn.close()


def test_a_spool_of_the_old_layout_is_refused_not_misread(path: Path) -> None:
    _old_layout_spool(path)
    for open_it in (
        lambda: Spool(path, ["a"], 10_000),
        lambda: list_rejected(path),
        lambda: requeue_rejected(path),
    ):
        with pytest.raises(SpoolLayoutError) as refused:
            open_it()
        assert str(path) in str(refused.value)
        assert "one-row-per-point" in str(refused.value)
    # Left as it was: its points are still there for the version that wrote them.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT line FROM points").fetchall() == [("m v=1i 1",), ("m v=2i 2",)]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'chunks'").fetchall() == []
    conn.close()


def test_a_database_that_is_no_spool_is_refused_and_left_alone(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(SpoolLayoutError, match="is not a qkdtel spool"):
        Spool(path, ["a"], 10_000)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_a_spool_of_a_newer_layout_is_refused(path: Path) -> None:
    Spool(path, ["a"], 10_000).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LAYOUT_VERSION + 1}")
    conn.close()
    with pytest.raises(SpoolLayoutError, match="newer qkdtel") as refused:
        Spool(path, ["a"], 10_000)
    assert str(path) in str(refused.value)


def test_the_cli_side_does_not_create_a_spool(path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list_rejected(path)
    assert not path.exists()


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
