"""A damaged spool file, of each kind: truncated, garbage over its header, a corrupt page of
`chunks`, a damaged write-ahead log, at start (through the real `qkdtel run`) and while the daemon
runs (against a real InfluxDB); and a spool the daemon may not read or write.

Every case checks the counts: points salvaged plus points lost make every point the file held,
the salvaged ones are delivered, the lost ones are named by sequence number and are the ones
missing. Damage is made on real files with real writes; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from qkdtel.delivery import Delivery
from qkdtel.sample import to_line
from qkdtel.sims.influxd import InfluxServer
from qkdtel.spool import SPOOL_FILE, Spool, SpoolAccessError, SpoolCorruptError, list_rejected
from qkdtel.spool_salvage import open_spool
from tests.collector_run import collector_document, written
from tests.test_delivery import samples, settings, v1, wait_for

PER_CHUNK = 50
CHUNKS = 60
TOTAL = PER_CHUNK * CHUNKS
ACKED = 10 * PER_CHUNK + 20
NOBODY = 65534
SALVAGE_LINE = re.compile(
    r"spool file (?P<path>\S+) was damaged \((?P<problem>.*)\): moved aside to (?P<moved>\S+) "
    r"\((?P<size>\d+) bytes\); (?P<saved>\d+) points salvaged into a fresh spool, "
    r"(?P<lost>\d+ points lost|at least \d+ points lost, maybe more|an unknown number of points "
    r"lost)"
)


def fill(path: Path, chunks: int = CHUNKS, sink: str = "file", keep_open: bool = False) -> Spool:
    """A spool of `chunks` submits of PER_CHUNK points (seq 0.. in order), for sink `sink`."""
    spool = Spool(path, [sink], 10 * TOTAL)
    points = samples(chunks * PER_CHUNK)
    for i in range(0, len(points), PER_CHUNK):
        spool.append([to_line(p) for p in points[i : i + PER_CHUNK]])
    if not keep_open:
        spool.close()
    return spool


def crash_copy(src: Path, dst_dir: Path) -> Path:
    """The spool files as a crash leaves them while `src` is open (database and its log)."""
    dst_dir.mkdir(parents=True)
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{src}{suffix}", dst_dir / f"{SPOOL_FILE}{suffix}")
    return dst_dir / SPOOL_FILE


def chunk_leaf_pages(path: Path) -> list[int]:
    """Page numbers of the leaf pages of the `chunks` b-tree (dbstat)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'chunks' AND pagetype = 'leaf' ORDER BY pageno"
        ).fetchall()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    assert page_size == 16384
    return [r[0] for r in rows]


def overwrite_page(path: Path, page: int, page_size: int = 16384) -> None:
    """Random bytes over one whole database page."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, os.urandom(page_size), (page - 1) * page_size)
        os.fsync(fd)
    finally:
        os.close(fd)


def run_daemon(tmp_path: Path, seconds: float = 2.0) -> subprocess.CompletedProcess[str]:
    """`qkdtel run` on the spool under tmp_path/spool, no device, the file sink tmp_path/lp."""
    cfg = tmp_path / "qkdtel.yaml"
    cfg.write_text(yaml.safe_dump(collector_document(tmp_path, [])))
    return subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), "--duration", str(seconds)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def delivered_seqs(tmp_path: Path) -> list[int]:
    """`seq` of every qkd_link point the file sink wrote."""
    return [
        int(m.group(1))
        for line in written(tmp_path).splitlines()
        if line.startswith("qkd_link,") and (m := re.search(r"\bseq=(\d+)i", line))
    ]


def last_telemetry(tmp_path: Path) -> dict[str, str]:
    """Fields of the last qkdtel_collector point the file sink wrote."""
    lines = [x for x in written(tmp_path).splitlines() if x.startswith("qkdtel_collector,")]
    assert lines, "no self-telemetry written"
    fields = lines[-1].split(" ")[1]
    return dict(field.split("=", 1) for field in fields.split(","))


def the_salvage_line(stderr: str) -> re.Match[str]:
    """The one error line of the salvage; fails unless there is exactly one, and no traceback."""
    assert "Traceback" not in stderr, stderr
    found = [m for line in stderr.splitlines() if (m := SALVAGE_LINE.search(line))]
    assert len(found) == 1, stderr
    assert " ERROR " in found[0].string
    return found[0]


def lost_seqs(line: re.Match[str]) -> set[int]:
    """Sample `seq` values (sequence number - 1) of the lost ranges the line names."""
    ranges = re.search(r"sequence numbers ([\d, -]+)\)", line.string)
    out: set[int] = set()
    for part in ranges.group(1).split(", ") if ranges else []:
        a, _, b = part.partition("-")
        out.update(range(int(a) - 1, int(b or a)))
    return out


def check_start_salvage(tmp_path: Path, size: int) -> tuple[re.Match[str], list[int]]:
    """Run the daemon on the damaged spool; check the moved-aside files (`size`: database and
    log), the one error line, and that the points it says it saved are those delivered."""
    path = tmp_path / "spool" / SPOOL_FILE
    result = run_daemon(tmp_path)
    assert result.returncode == 0, result.stderr
    line = the_salvage_line(result.stderr)
    assert line["path"] == str(path)
    moved = Path(line["moved"])
    assert re.fullmatch(rf"{SPOOL_FILE}\.damaged-\d{{8}}T\d{{6}}Z", moved.name)
    kept = sum(f.stat().st_size for f in (moved, Path(f"{moved}-wal")) if f.exists())
    assert moved.exists() and kept == size == int(line["size"])
    got = delivered_seqs(tmp_path)
    assert len(got) == len(set(got)) == int(line["saved"])
    telemetry = last_telemetry(tmp_path)
    assert telemetry["spool_damaged"] == "1i"
    assert telemetry["points_salvaged"] == f"{line['saved']}i"
    return line, got


def test_truncated_file_salvages_the_first_half_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "spool" / SPOOL_FILE
    fill(path)
    size = path.stat().st_size
    os.truncate(path, size // 2)
    line, got = check_start_salvage(tmp_path, size // 2)
    lost = lost_seqs(line)
    assert line["lost"] == f"{len(lost)} points lost"
    assert 0 < len(got) < TOTAL and len(got) + len(lost) == TOTAL
    assert sorted(set(got) | lost) == list(range(TOTAL)) and not set(got) & lost
    assert last_telemetry(tmp_path)["points_lost_damage"] == f"{len(lost)}i"


def test_garbage_over_the_header_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "spool" / SPOOL_FILE
    fill(path)
    with path.open("r+b") as f:
        f.write(os.urandom(100))
    line, got = check_start_salvage(tmp_path, path.stat().st_size)
    assert "file is not a database" in line["problem"]
    assert line["lost"] == "0 points lost"
    assert sorted(got) == list(range(TOTAL))


def test_corrupt_page_of_chunks_loses_exactly_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "spool" / SPOOL_FILE
    spool = fill(path, keep_open=True)
    # The first 520 points were delivered: the cursor stands inside the 11th chunk...
    whole = spool.read("file", 10 * PER_CHUNK)
    assert whole is not None
    spool.ack("file", whole)
    part = spool.read("file", ACKED - 10 * PER_CHUNK)
    assert part is not None and part.last_seq == ACKED
    refused = [(f"bad line {i}", "unable to parse") for i in range(3)]
    spool.ack("file", part, refused)  # ...but for 3 lines the sink refused, kept aside
    spool.close()
    leaves = chunk_leaf_pages(path)
    assert len(leaves) >= 3
    overwrite_page(path, leaves[len(leaves) // 2])
    line, got = check_start_salvage(tmp_path, path.stat().st_size)
    lost = lost_seqs(line)
    assert line["lost"] == f"{len(lost)} points lost"
    assert lost and len(lost) % PER_CHUNK == 0  # whole submits: the rows of that page
    # Nothing delivered before is sent again (the cursor was salvaged), nothing else is lost.
    assert sorted(set(got) | lost) == list(range(ACKED, TOTAL))
    assert not set(got) & lost
    assert "; 3 rejected lines kept" in line.string
    assert [(r.line, r.reason) for r in list_rejected(path)] == refused


def test_unreadable_cursors_mean_every_salvaged_point_is_sent_again(tmp_path: Path) -> None:
    """The cursors' page is garbage: which points a sink already has is unknown, so every
    salvaged point goes to every sink again (InfluxDB stores a rewritten point once)."""
    path = tmp_path / "spool" / SPOOL_FILE
    spool = fill(path, keep_open=True, sink="a")
    batch = spool.read("a", 10 * PER_CHUNK)
    assert batch is not None
    spool.ack("a", batch)
    spool.close()
    conn = sqlite3.connect(path)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'cursors'").fetchone()
    conn.close()
    overwrite_page(path, root)

    def open_() -> Spool:
        return Spool(path, ["a", "b"], 10 * TOTAL)

    spool, report = open_spool(path, open_)
    try:
        assert report is not None and not report.cursors_saved
        assert report.points_saved == TOTAL - 10 * PER_CHUNK  # the chunks still spooled
        assert not report.lost_exact  # what preceded them is unknown
        assert "sink cursors unreadable: every salvaged point is sent to every sink again" in (
            report.message()
        )
        assert spool.pending("a") == spool.pending("b") == report.points_saved
        resent = spool.read("a", TOTAL)
        assert resent is not None
        assert resent.lines == [to_line(p) for p in samples(TOTAL)[10 * PER_CHUNK :]]
    finally:
        spool.close()


@pytest.mark.parametrize("damage", ["header", "frame"])
def test_damaged_write_ahead_log_is_noticed_and_read_past(tmp_path: Path, damage: str) -> None:
    """SQLite would ignore the whole log (bad header) or every commit after a bad frame,
    without an error: the spool notices, and the salvage re-chains the log to read it all."""
    live = fill(tmp_path / "live" / SPOOL_FILE, keep_open=True)  # the log holds the commits
    try:
        path = crash_copy(live.path, tmp_path / "spool")
    finally:
        live.close()
    wal = Path(f"{path}-wal")
    frame = 24 + 16384
    assert wal.stat().st_size > 32 + 5 * frame
    with wal.open("r+b") as f:
        if damage == "header":
            f.write(os.urandom(32))
        else:
            f.seek(32 + 3 * frame + 24 + 1000)
            f.write(os.urandom(2000))  # page data of frame 4: its checksum no longer holds
    size = path.stat().st_size + wal.stat().st_size
    line, got = check_start_salvage(tmp_path, size)
    assert "write-ahead log" in line["problem"]
    assert Path(f"{line['moved']}-wal").exists()
    lost = lost_seqs(line)
    assert line["lost"] == f"{len(lost)} points lost"
    assert sorted(set(got) | lost) == list(range(TOTAL)) and not set(got) & lost
    if damage == "header":
        assert not lost  # only the header was garbage: every frame is read


def test_garbage_shared_memory_file_is_rebuilt_not_salvaged(tmp_path: Path) -> None:
    """The -shm file is only an index of the log: SQLite rebuilds it when the first connection
    opens the spool, so garbage in it is no damage -- nothing moved aside, every point sent."""
    live = fill(tmp_path / "live" / SPOOL_FILE, keep_open=True)
    try:
        path = crash_copy(live.path, tmp_path / "spool")
        shm = Path(f"{path}-shm")
        shutil.copyfile(f"{live.path}-shm", shm)
    finally:
        live.close()
    shm.write_bytes(os.urandom(shm.stat().st_size))
    result = run_daemon(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "damaged" not in result.stderr and "Traceback" not in result.stderr
    assert sorted(delivered_seqs(tmp_path)) == list(range(TOTAL))
    assert not list(path.parent.glob("*.damaged-*"))


# -- permissions: never moved aside, exit 2 naming the path ---------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="qkdtel-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def run_as_nobody(directory: Path) -> subprocess.CompletedProcess[str]:
    """`qkdtel run` as uid/gid 65534 (the tests run as root, whom modes do not stop)."""
    cfg = directory / "qkdtel.yaml"
    cfg.write_text(yaml.safe_dump(collector_document(directory, [])))
    cfg.chmod(0o644)
    (directory / "lp").mkdir()
    os.chown(directory / "lp", NOBODY, NOBODY)  # the file sink's: only the spool is refused
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run(
        [*setpriv, sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=directory,
    )


def test_unreadable_spool_file_is_exit_2_naming_it(shared_dir: Path) -> None:
    assert os.geteuid() == 0, "needs root to make a file another user cannot read"
    path = shared_dir / "spool" / SPOOL_FILE
    fill(path)
    os.chown(path.parent, NOBODY, NOBODY)
    path.chmod(0o600)  # root's
    before = sorted(os.listdir(path.parent))
    result = run_as_nobody(shared_dir)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot start: spool file {path} cannot be read and written by uid {NOBODY}" in (
        result.stderr
    )
    assert "owner uid 0, mode 0o600" in result.stderr
    assert sorted(os.listdir(path.parent)) == before  # nothing moved aside or created


def test_unwritable_spool_directory_is_exit_2_naming_it(shared_dir: Path) -> None:
    assert os.geteuid() == 0, "needs root to make a directory another user cannot write"
    directory = shared_dir / "spool"
    directory.mkdir(mode=0o755)  # root's
    result = run_as_nobody(shared_dir)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # Found when the configuration is loaded already (collector.spool_dir), or else when the
    # spool opens: either way one line naming the directory.
    assert f"{directory} is not writable" in result.stderr
    assert os.listdir(directory) == []


@pytest.fixture
def read_only_spool(tmp_path: Path) -> Iterator[Path]:
    """A spool on a tmpfs remounted read-only (root cannot write there either)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount)], check=True)
    try:
        path = mount / "spool" / SPOOL_FILE
        fill(path)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_spool_on_a_read_only_filesystem_is_refused_naming_it(
    tmp_path: Path, read_only_spool: Path
) -> None:
    path = read_only_spool
    with pytest.raises(SpoolAccessError) as refused:
        Spool(path, ["file"], TOTAL)
    assert str(refused.value).startswith(f"spool directory {path.parent} is not writable")
    assert "(read-only file system)" in str(refused.value)
    cfg = tmp_path / "qkdtel.yaml"
    document = collector_document(tmp_path, [])
    document["collector"]["spool_dir"] = str(path.parent)
    cfg.write_text(yaml.safe_dump(document))
    result = subprocess.run(
        [sys.executable, "-m", "qkdtel.cli", "run", "-c", str(cfg), "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and f"{path.parent} is not writable" in result.stderr


def test_spool_check_names_the_damage_and_moves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "spool" / SPOOL_FILE
    fill(path)
    cfg = tmp_path / "qkdtel.yaml"
    cfg.write_text(yaml.safe_dump(collector_document(tmp_path, [])))
    argv = [sys.executable, "-m", "qkdtel.cli", "spool", "check", "-c", str(cfg)]
    healthy = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert healthy.returncode == 0 and f"{path}: OK" in healthy.stdout, healthy.stderr
    overwrite_page(path, chunk_leaf_pages(path)[1])
    damaged = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert damaged.returncode == 1, damaged.stderr
    assert f"spool file {path} is damaged" in damaged.stderr
    assert "Traceback" not in damaged.stderr
    assert path.exists() and not list(path.parent.glob("*.damaged-*"))  # nothing moved


def test_damage_found_by_open_is_not_taken_for_access(tmp_path: Path) -> None:
    """The two errors the open path raises: damage (salvaged) versus access (operator's fix)."""
    path = tmp_path / "spool" / SPOOL_FILE
    fill(path)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(SpoolCorruptError, match=re.escape(str(path))):
        Spool(path, ["file"], TOTAL)
    with pytest.raises(SpoolAccessError, match="cannot be created"):
        Spool(Path("/proc/qkdtel-spool") / SPOOL_FILE, ["file"], TOTAL)


# -- at run time ----------------------------------------------------------------------------------


def test_page_corrupted_while_running_is_salvaged_and_delivery_resumes(
    influxdb: InfluxServer, influx_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """InfluxDB down, so points pile up in the spool; a page of `chunks` is overwritten under
    the running daemon; once InfluxDB is back, the writer meets the damage, the spool is
    salvaged, and the salvaged points and the new ones reach InfluxDB."""
    caplog.set_level(logging.ERROR, logger="qkdtel.spool_salvage")
    points = samples(TOTAL + 500)
    path = tmp_path / "spool" / SPOOL_FILE

    async def main() -> dict[str, object]:
        delivery = Delivery(
            settings(tmp_path, batch_size=TOTAL, retry_max_delay=0.3),
            [v1(influxdb.url, influx_db)],
        )
        await asyncio.to_thread(influxdb.stop)
        try:
            await delivery.start()
            for i in range(0, TOTAL, PER_CHUNK):
                await delivery.submit(points[i : i + PER_CHUNK])
            assert delivery.spool.pending("influx") == TOTAL
            # Every page into the database file, then one leaf of `chunks` overwritten there.
            await asyncio.to_thread(_checkpoint, path)
            leaves = chunk_leaf_pages(path)
            overwrite_page(path, leaves[len(leaves) // 2])
            await delivery.submit(points[TOTAL : TOTAL + 250])
        finally:
            await asyncio.to_thread(influxdb.start)
        await wait_for(lambda: bool(caplog.records), timeout=30)
        await delivery.submit(points[TOTAL + 250 :])
        await wait_for(lambda: delivery.spool.pending("influx") == 0, timeout=30)
        (telemetry,) = delivery.telemetry()
        await delivery.stop(5)
        return telemetry.fields

    fields = asyncio.run(main())
    assert fields["spool_damaged"] == 1
    (record,) = caplog.records
    line = SALVAGE_LINE.search(record.getMessage())
    assert line is not None, record.getMessage()
    assert line["path"] == str(path) and Path(line["moved"]).exists()
    lost = lost_seqs(line)
    assert line["lost"] == f"{len(lost)} points lost" and lost
    saved = int(line["saved"])
    assert saved + len(lost) == TOTAL + 250  # the file held every point submitted before
    rows = influxdb.query('SELECT "seq" FROM "qkd_link"', influx_db)
    got = sorted(r["seq"] for r in rows)
    assert got == sorted(set(range(TOTAL + 500)) - lost)  # salvaged + new, nothing else missing
    assert fields["points_salvaged"] == saved
    assert fields["points_lost_damage"] == len(lost)


def _checkpoint(path: Path) -> None:
    """Copy the write-ahead log into the database file (retried while a reader holds it)."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        for _ in range(200):
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
        raise AssertionError("the spool's log could not be checkpointed")
    finally:
        conn.close()
