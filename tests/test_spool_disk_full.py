"""The spool on a full disk and under its byte budget: the overflow policy decides what goes,
every point lost is counted, nothing raises, and the spool grows again once space is back.

The disk is a real tmpfs of a few MiB filled by a filler file (`tests/fixtures_disk.py`); where
a tmpfs cannot be mounted (not root) the full disk is injected, as that module says.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qkdtel.config import FileSink
from qkdtel.delivery import Delivery
from qkdtel.spool import SPOOL_FILE, WAL_MAX_BYTES, Spool
from qkdtel.spool_space import RESERVE_FILE
from tests.collector_run import store_lines
from tests.fixtures_disk import SmallDisk, small_disk
from tests.test_delivery import run, samples, settings, wait_for


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    with small_disk(tmp_path, "24m", monkeypatch) as d:
        yield d


def lines(start: int, count: int = 100) -> list[str]:
    """`count` distinct points of ~80 bytes each, numbered from `start`."""
    return [f'm,device=d{i % 7} v={i}i,s="{"x" * 40}" {i}' for i in range(start, start + count)]


def fill_spool(spool: Spool, start: int, submits: int) -> tuple[int, int]:
    """`submits` appends of 100 points from `start`; (points accepted, points dropped)."""
    accepted = dropped = 0
    for n in range(submits):
        result = spool.append(lines(start + 100 * n))
        accepted += result.accepted
        dropped += result.dropped.get("a", 0)
    return accepted, dropped


def stored(spool: Spool) -> list[str]:
    batch = spool.read("a", 10_000_000)
    return batch.lines if batch else []


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_new"])
def test_a_full_disk_is_handled_by_the_overflow_policy_and_every_loss_counted(
    disk: SmallDisk, policy: str
) -> None:
    spool = Spool(disk.path / SPOOL_FILE, ["a"], 10_000_000, policy)
    assert (disk.path / RESERVE_FILE).exists()
    before, lost = fill_spool(spool, 0, 100)
    assert (before, lost) == (10_000, 0)
    disk.fill()

    accepted, dropped = fill_spool(spool, 10_000, 500)  # 50,000 points on a full disk
    assert spool.disk_full
    assert dropped > 0
    # Every point offered (60,000) is stored or counted as lost: none vanished uncounted.
    kept = stored(spool)
    assert len(kept) == spool.pending("a") == 60_000 - dropped
    numbers = [int(line.rsplit(" ", 1)[1]) for line in kept]
    if policy == "drop_oldest":
        # The newest are kept, in order, without a gap: whole oldest submits went.
        assert numbers == list(range(60_000 - len(numbers), 60_000))
    else:
        # What was stored before the disk filled is all kept; the new points were refused.
        assert numbers[:10_000] == list(range(10_000))
        assert numbers == sorted(set(numbers))  # in order; some submits kept a first part
        assert accepted == len(numbers) - 10_000 < 50_000

    disk.free()
    more, more_lost = fill_spool(spool, 60_000, 10)
    assert not spool.disk_full
    assert (more, more_lost) == (1_000, 0)
    assert (disk.path / RESERVE_FILE).exists()
    assert stored(spool)[-1].endswith(" 60999")
    spool.close()


def test_acknowledging_and_reopening_work_on_a_full_disk(disk: SmallDisk) -> None:
    path = disk.path / SPOOL_FILE
    spool = Spool(path, ["a"], 10_000_000)
    fill_spool(spool, 0, 50)
    disk.fill()
    fill_spool(spool, 5_000, 50)
    assert spool.disk_full
    batch = spool.read("a", 1_000)
    assert batch is not None
    assert spool.ack("a", batch) == (1_000, 0)  # room from the released reserve
    pending = spool.pending("a")
    spool.close()

    again = Spool(path, ["a"], 10_000_000)  # the disk is still full
    assert again.pending("a") == pending
    result = again.append(lines(100_000))
    assert result.accepted + result.discarded >= 100
    disk.free()
    again.append(lines(200_000))
    assert not again.disk_full
    again.close()


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_new"])
def test_spool_max_bytes_bounds_the_files_before_the_disk_fills(tmp_path: Path, policy: str):
    max_bytes = 12 << 20
    spool = Spool(tmp_path / SPOOL_FILE, ["a"], 10_000_000, policy, max_bytes)
    _, dropped = fill_spool(spool, 0, 2_000)  # 200,000 points, ~17 MB of lines
    assert dropped > 0
    assert spool.bytes_on_disk() <= max_bytes + WAL_MAX_BYTES // 4, spool.bytes_on_disk()
    assert spool.pending("a") == 200_000 - dropped
    assert not spool.disk_full
    spool.close()


def test_delivery_on_a_full_disk_counts_in_telemetry_and_resumes_by_itself(
    disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    """Spool and file sink on the same full disk: the sink's writes fail with ENOSPC (retried),
    the spool drops by its policy; both counted and shown, and all resumes once space is back."""
    sink = FileSink(type="file", name="a", path=disk.path / "lp")
    config = settings(disk.path, flush_interval=0.05, retry_max_delay=0.2)
    dropped: list[int] = []

    async def main() -> None:
        delivery = Delivery(config, [sink])
        await delivery.start()
        await delivery.submit(samples(500))
        await wait_for(lambda: delivery.spool.pending("a") == 0)
        disk.fill()
        for i in range(1, 60):
            await delivery.submit(samples(500, start=500 * i))
        (full,) = delivery.telemetry()
        assert full.fields["spool_disk_full"] is True
        assert full.fields["points_dropped"] > 0
        assert full.fields["spool_free_bytes"] < 4 << 20
        if disk.real:
            assert full.fields["write_errors"] > 0  # the file sink met ENOSPC too
        disk.free()
        await delivery.submit(samples(500, start=30_000))
        await wait_for(lambda: delivery.spool.pending("a") == 0)
        (after,) = delivery.telemetry()
        assert after.fields["spool_disk_full"] is False
        assert after.fields["writer_stalled"] is False
        fields = after.fields
        assert fields["points_collected"] == 30_500
        assert fields["points_written"] + fields["points_dropped"] == fields["points_collected"]
        dropped.append(fields["points_dropped"])
        await delivery.stop(5)

    run(main)
    written = set(store_lines(disk.path / "lp"))
    # Every point not counted as dropped arrived. A few counted may have arrived too: a batch
    # in flight while drop_oldest dropped it reaches the sink, but was counted lost.
    assert 30_500 - dropped[0] <= len(written) <= 30_500
    losses = [r for r in caplog.records if "spool full (disk full" in r.getMessage()]
    assert len(losses) == 1  # once for the episode, not once per submit
    assert "keeps every point again" in caplog.text
