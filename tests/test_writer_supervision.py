"""No writer dies silently: a sink writer raising something else than a WriteError, or an
acknowledgement the spool cannot commit, is logged with its traceback when it happens, counted
(`writer_restarts`), shown (`writer_stalled`), and the writer restarts after a back-off and
delivers every point.

The sink is the real file sink and the spool a real one; the failures themselves are INJECTED
(a writer raising RuntimeError stands for a bug; a real full disk lets the acknowledgement commit
from the released reserve, see test_spool_disk_full, so its SQLITE_FULL is injected here).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from qkdtel.config import FileSink
from qkdtel.delivery import Delivery
from qkdtel.sample import to_line
from qkdtel.sinks import SinkWriter
from tests.collector_run import store_lines
from tests.test_delivery import run, samples, settings, wait_for


class BuggyWriter(SinkWriter):
    """INJECTED fault: the first `failures` writes raise RuntimeError, as a bug would."""

    def __init__(self, inner: SinkWriter, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.attempts: list[float] = []

    def write(self, body: bytes) -> None:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.failures:
            raise RuntimeError(f"injected bug #{len(self.attempts)}")
        self.inner.write(body)

    def close(self) -> None:
        self.inner.close()


def test_a_writer_that_raises_is_logged_counted_restarted_and_delivers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    points = samples(300)
    sink = FileSink(type="file", name="a", path=tmp_path / "lp")

    async def main() -> None:
        delivery = Delivery(settings(tmp_path, flush_interval=0.05, retry_max_delay=1.0), [sink])
        await delivery.start()
        state = delivery._sinks["a"]
        buggy = BuggyWriter(state.writer, failures=3)
        state.writer = buggy
        await delivery.submit(points)
        await wait_for(lambda: len(buggy.attempts) >= 1)
        (stalled,) = delivery.telemetry()
        assert stalled.fields["writer_stalled"] is True
        assert stalled.fields["points_pending"] == 300
        await wait_for(lambda: delivery.spool.pending("a") == 0)
        (after,) = delivery.telemetry()
        assert after.fields["writer_restarts"] == 3
        assert after.fields["writer_stalled"] is False
        assert after.fields["points_written"] == 300
        assert after.fields["points_dropped"] == 0
        gaps = [b - a for a, b in zip(buggy.attempts, buggy.attempts[1:], strict=False)]
        # Back-off doubling from 0.5 s up to retry_max_delay (1 s).
        for gap, expected in zip(gaps, [0.5, 1.0, 1.0], strict=True):
            assert expected - 0.02 <= gap < expected + 0.5, gaps
        await delivery.stop(5)

    run(main)
    assert sorted(store_lines(tmp_path / "lp")) == sorted(to_line(p) for p in points)
    failures = [r for r in caplog.records if "writer failed" in r.getMessage()]
    assert len(failures) == 3 and all(r.levelno == logging.ERROR for r in failures)
    # The traceback once, when it first happens; the repeats in one line each.
    assert failures[0].exc_info is not None and "injected bug #1" in caplog.text
    assert [r.exc_info for r in failures[1:]] == [None, None]
    assert "failed again (2 in a row): RuntimeError: injected bug #2" in caplog.text
    assert "delivering again after 3 writer failures" in caplog.text


def test_an_acknowledgement_the_spool_cannot_commit_restarts_the_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    points = samples(500)
    sink = FileSink(type="file", name="a", path=tmp_path / "lp")

    async def main() -> None:
        delivery = Delivery(settings(tmp_path, flush_interval=0.05, batch_size=100), [sink])
        await delivery.start()
        spool = delivery.spool
        commit_ack = spool._commit_ack
        failed: list[int] = []

        def full_then_fine(*args: object) -> int:
            # INJECTED: both attempts of the first acknowledgement meet SQLITE_FULL.
            if len(failed) < 2:
                failed.append(1)
                full = sqlite3.OperationalError("database or disk is full")
                full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
                raise full
            return commit_ack(*args)

        monkeypatch.setattr(spool, "_commit_ack", full_then_fine)
        await delivery.submit(points)
        await wait_for(lambda: delivery.telemetry()[0].fields["writer_restarts"] == 1)
        await wait_for(lambda: spool.pending("a") == 0)
        (after,) = delivery.telemetry()
        assert after.fields["points_written"] == 500  # counted once, when acknowledged
        assert after.fields["writer_stalled"] is False
        assert spool.disk_full  # the spool took the SQLITE_FULL as a disk-full episode
        await delivery.stop(5)

    run(main)
    lines = store_lines(tmp_path / "lp")
    # Batches whose acknowledgement failed were sent again: every point there, some twice.
    assert set(lines) == {to_line(p) for p in points}
    assert len(lines) > 500
    failure = next(r for r in caplog.records if "writer failed" in r.getMessage())
    assert failure.exc_info is not None
    assert "database or disk is full" in caplog.text


def test_a_spool_that_raises_loses_the_submit_counted_not_the_poller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = FileSink(type="file", name="a", path=tmp_path / "lp")

    async def main() -> None:
        delivery = Delivery(settings(tmp_path), [sink])
        await delivery.start()
        append = delivery.spool.append
        calls: list[int] = []

        def broken_then_fine(lines: list[str]):
            # INJECTED: the spool fails twice with an error that is not a full disk.
            calls.append(len(lines))
            if len(calls) <= 2:
                raise sqlite3.OperationalError("disk I/O error")
            return append(lines)

        monkeypatch.setattr(delivery.spool, "append", broken_then_fine)
        accepted = [await delivery.submit(samples(10, start=10 * i)) for i in range(4)]
        assert accepted == [0, 0, 10, 10]
        (telemetry,) = delivery.telemetry()
        assert telemetry.fields["points_collected"] == 40
        assert telemetry.fields["points_dropped"] == 20
        await wait_for(lambda: delivery.spool.pending("a") == 0)
        await delivery.stop(5)

    run(main)
    losses = [r for r in caplog.records if "spool full" in r.getMessage()]
    assert len(losses) == 1 and losses[0].exc_info is not None  # once per episode
    assert "spool error: OperationalError: disk I/O error" in losses[0].getMessage()
    assert "keeps every point again, after 20 points lost" in caplog.text
    assert len(store_lines(tmp_path / "lp")) == 20


def test_concurrent_submits_share_commits_and_each_returns_once_on_disk(tmp_path: Path) -> None:
    sink = FileSink(type="file", name="a", path=tmp_path / "lp")

    async def main() -> None:
        delivery = Delivery(settings(tmp_path), [sink])
        await delivery.start()
        spool = delivery.spool
        commits: list[int] = []
        append = spool.append

        def counting(lines: list[str]):
            commits.append(len(lines))
            return append(lines)

        spool.append = counting  # type: ignore[method-assign]
        polls = [samples(3, start=3 * i) for i in range(200)]

        returned: list[int] = []

        async def poll(batch: list) -> int:
            accepted = await delivery.submit(batch)
            returned.append(accepted)
            # Each submit returns only once its points are committed: the spool has stored at
            # least every point of the submits that have returned.
            assert spool.last_seq >= sum(returned)
            return accepted

        results = await asyncio.gather(*(poll(b) for b in polls))
        assert results == [3] * 200
        assert sum(commits) == 600
        assert len(commits) < 100, commits  # 200 polls, grouped into far fewer commits
        await wait_for(lambda: spool.pending("a") == 0)
        await delivery.stop(5)

    run(main)
    assert len(store_lines(tmp_path / "lp")) == 600


def test_text_that_is_not_unicode_is_left_out_of_its_group_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = FileSink(type="file", name="a", path=tmp_path / "lp")
    bad = samples(3, start=1000)
    bad[1].fields["link_status"] = "broken \ud800"  # a lone surrogate: no UTF-8

    async def main() -> None:
        delivery = Delivery(settings(tmp_path), [sink])
        await delivery.start()
        accepted = await asyncio.gather(
            delivery.submit(samples(5)), delivery.submit(bad), delivery.submit(samples(4, 10))
        )
        assert accepted == [5, 2, 4]
        await wait_for(lambda: delivery.spool.pending("a") == 0)
        await delivery.stop(5)

    run(main)
    assert len(store_lines(tmp_path / "lp")) == 11
    assert "1 samples hold text that is not valid Unicode" in caplog.text
