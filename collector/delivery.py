"""Loss-free delivery of samples to the sinks: encode, spool durably, write, acknowledge.

The poller's side (`submit`) ends once the points are committed to the spool on disk; from then
on they are the writers' business and survive a crash of the daemon. One writer task per sink
reads the spool from that sink's own cursor, so a sink that is down only holds back itself, and
advances the cursor only after the sink acknowledged the batch. Points therefore reach every
sink, in the order they were collected, at least once; exactly-once in effect, since every point
carries its timestamp and rewriting the same series and timestamp does not duplicate it.

Failures:
- down, slow, 5xx, 429: the batch stays in the spool and is sent again after an exponential
  back-off (doubling from RETRY_BASE_DELAY up to `retry_max_delay`), and never sooner than the
  server's Retry-After on 429/503 (which may exceed `retry_max_delay`: the server knows best);
- 400 (malformed lines, type conflicts): the refused lines are found (`write_batch`), the good
  ones are written, the refused ones kept in the spool's `rejected` table and logged as errors;
- spool full (`spool_max_points`, `spool_max_bytes`, or the disk itself): the overflow policy
  drops the oldest points (whole earlier submits, oldest first) or refuses new ones; every point
  lost is counted (`points_dropped`), and the loss is logged as an error once per episode (with
  the limit, the spool's path and the free space), then once more when the spool keeps every
  point again; an exception of the spool itself loses the submit the same way, counted;
- a damaged spool file (at start, or SQLITE_CORRUPT/SQLITE_NOTADB while running): moved aside,
  what can be read salvaged into a fresh spool, one error logged with the points saved and lost
  (`qkdtel.spool_salvage`), counted (`spool_damaged`, `points_salvaged`, `points_lost_damage`);
  appends and writers carry on with the fresh spool;
- anything else a writer meets (a bug, a sink writer raising something else than a WriteError,
  an acknowledgement the spool cannot commit): logged with its traceback when it happens,
  counted (`writer_restarts`), the sink shown stalled (`writer_stalled`) and the writer
  restarted after an exponential back-off, from the sink's cursor; nothing fails silently.

Throughput (bench/delivery.py): a submit is encoded by `encode_lines` and committed as one chunk
(one row, one fsync); submits arriving while a commit runs are committed together by the next one
(`_GroupCommit`), each returning once its own points are on disk; a writer sends whole chunks
joined into a request body, one request in flight per sink and in order, reading the next batch
while a request is in flight, and commits acknowledgements on the side, grouped while batches
stream out (ACK_INTERVAL): a crash may then send the last ~0.1 s of batches again, which the sink
stores once, as above.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qkdtel.config import CollectorSettings, FileSink, InfluxV1Sink, InfluxV2Sink
from qkdtel.sample import encode_lines
from qkdtel.sdk import Sample
from qkdtel.sinks import RetryableWriteError, SinkWriter, make_writer, write_batch
from qkdtel.spool import SPOOL_FILE, AppendResult, Batch, Spool, SpoolCorruptError
from qkdtel.spool_salvage import SalvageReport, open_spool, salvage

log = logging.getLogger(__name__)

RETRY_BASE_DELAY = 0.5
"""First wait after a failed write, in seconds; it doubles with every failure in a row."""

TELEMETRY_MEASUREMENT = "qkdtel_collector"

ACK_INTERVAL = 0.1
"""Seconds between two commits of acknowledgements while a sink's batches stream out."""

GROUP_COMMIT_INTERVAL = 0.005
"""Shortest time between the starts of two spool commits: the submits of busy moments gather
into one commit every 5 ms at most; a lone submit is committed at once."""

ENCODE_SLICE = 256
"""Samples encoded between two hand-overs of the interpreter lock (about half a millisecond)."""


@dataclass
class _SinkState:
    """One sink's writer and its counters since start."""

    writer: SinkWriter
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    due: float | None = None
    """Monotonic time by which the points waiting for this sink must be sent."""
    written: int = 0
    rejected: int = 0
    dropped: int = 0
    write_errors: int = 0
    failures_in_a_row: int = 0
    write_latency_s: float = 0.0
    restarts: int = 0
    crashes_in_a_row: int = 0
    stalled: bool = False
    """The writer failed and has not had an acknowledgement committed since."""
    last_delivery: float = field(default_factory=time.monotonic)
    """Monotonic time of the last write the sink acknowledged (or of the start)."""
    task: asyncio.Task[None] | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    """Set when the writer task ends: a write chain still running sends nothing more."""


@dataclass(frozen=True)
class SinkProgress:
    """How one sink's delivery goes, now."""

    name: str
    pending: int
    """Points waiting for it in the spool."""
    since_delivery_s: float
    """Seconds since its last acknowledged write (or since the start)."""
    stalled: bool
    """Its writer failed and nothing was acknowledged since (`writer_stalled`)."""
    writer_alive: bool
    """Its writer task runs (or the daemon is stopping)."""


class Delivery:
    """Spools samples and writes them to every sink; see the module docstring."""

    def __init__(
        self, settings: CollectorSettings, sinks: list[InfluxV2Sink | InfluxV1Sink | FileSink]
    ) -> None:
        if not sinks:
            raise ValueError("delivery needs at least one sink")
        self.settings = settings
        self._sink_configs = list(sinks)
        self._sinks: dict[str, _SinkState] = {}
        self._spool: Spool | None = None
        self._collected = 0
        self._closing = False
        self._host = socket.gethostname()
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._group: _GroupCommit | None = None
        self._losses: _Losses | None = None
        self._spool_error: Exception | None = None
        self._closed = asyncio.Event()
        # A damaged spool file: salvaged once (`_recover`), counted for the telemetry.
        self._salvage_lock = threading.Lock()
        self._salvaged = SalvageCounts()
        self._adopted = 0
        """Points taken over from orphaned spools since start (`qkdtel.spool_adopt`)."""

    @property
    def spool(self) -> Spool:
        """The open spool (after `start`)."""
        if self._spool is None:
            raise RuntimeError("Delivery.start() has not been called")
        return self._spool

    @property
    def sink_names(self) -> list[str]:
        """The configured sinks' names, in the file's order."""
        return [s.name for s in self._sink_configs]

    async def start(self) -> None:
        """Open the spool and start one writer task per sink; replays what a last run left."""
        path = self.settings.spool_dir / SPOOL_FILE
        self._spool, report = await asyncio.to_thread(open_spool, path, self._open_spool)
        self._salvaged.add(report)
        self._closing = False
        self._closed = asyncio.Event()
        self._group = _GroupCommit(self._append, self._count)
        # Reads of a writer's next batch, while its current one is in flight.
        self._reader = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self._sink_configs), thread_name_prefix="qkdtel-spool-read"
        )
        for config in self._sink_configs:
            writer = await asyncio.to_thread(make_writer, config)
            self._sinks[config.name] = _SinkState(writer)
        for name, state in self._sinks.items():
            left = self._spool.pending(name)
            if left:
                log.info("sink %s: %d points left in the spool by a previous run", name, left)
                state.due = time.monotonic()
            state.task = asyncio.create_task(
                self._supervise(name, state), name=f"qkdtel-sink-{name}"
            )

    async def submit(self, samples: Sequence[Sample]) -> int:
        """Encode and durably spool `samples`; returns the points accepted (committed on disk).

        Never waits for a sink and never raises for the spool: a point the spool cannot keep
        (overflow, full disk, a failing spool) is counted in `points_dropped`. Submits that
        arrive while a commit runs are committed together by the next one (`_GroupCommit`).
        Samples without a field InfluxDB can store (only NaN or infinite values) are not points
        and are not counted.
        """
        if self._group is None:
            raise RuntimeError("Delivery.start() has not been called")
        lines = await asyncio.to_thread(_encode, samples)
        if not lines:
            return 0
        return await self._group.commit(lines)

    async def adopt(self, lines: list[str]) -> int:
        """Spool lines taken over from an orphaned spool (`qkdtel.spool_adopt`) as a submit's:
        one group commit, the overflow policy and the counting apply (`points_collected`,
        `points_dropped`), and `points_adopted`; returns how many were kept, once on disk."""
        if self._group is None:
            raise RuntimeError("Delivery.start() has not been called")
        kept = await self._group.commit(lines)
        self._adopted += kept
        return kept

    def count_salvage(self, report: SalvageReport | None) -> None:
        """Count a salvage made outside delivery (an adopted orphan's) in `spool_damaged`."""
        self._salvaged.add(report)

    def _append(self, lines: list[str], salvage_first: bool = True) -> AppendResult:
        """In a worker thread: `Spool.append`; a failure of the spool loses these points,
        counted like an overflow (the error is logged with the loss, `_note_losses`). A
        damaged spool is salvaged first (`_recover`) and the append tried once more."""
        spool = self.spool
        try:
            return spool.append(lines)
        except UnicodeEncodeError:
            raise  # `_GroupCommit` leaves the lines that have no UTF-8 out
        except Exception as exc:
            if isinstance(exc, SpoolCorruptError) and salvage_first:
                self._recover(spool, exc)
                return self._append(lines, salvage_first=False)
            self._spool_error = exc
            lost = len(lines)
            return AppendResult(0, dict.fromkeys(self._sinks, lost), lost, lost, "spool error")

    def _count(self, result: AppendResult, offered: int) -> None:
        """Account for one committed group: points collected, dropped per sink; wake the
        writers."""
        self._collected += offered
        now = time.monotonic()
        for name, state in self._sinks.items():
            state.dropped += result.dropped.get(name, 0)
            if state.due is None and result.accepted:
                state.due = now + self.settings.flush_interval
            state.wakeup.set()
        self._note_losses(result)

    def _note_losses(self, result: AppendResult) -> None:
        """Log a loss episode once when it starts and once when it ends; count in between."""
        spool = self.spool
        if result.discarded and self._losses is None:
            self._losses = _Losses(time.monotonic())
            error = self._spool_error if result.limit == "spool error" else None
            log.error(
                "spool full (%s, overflow=%s) at %s, %d bytes free on its filesystem: %d points"
                " lost%s; further losses are counted in points_dropped, not logged, until it"
                " keeps every point again",
                _limit_detail(spool, result.limit, error),
                spool.overflow,
                spool.path,
                spool.free_bytes(),
                result.discarded,
                "".join(f"; {n} not yet sent to sink {s}" for s, n in result.dropped.items()),
                exc_info=error,
            )
        if result.discarded and self._losses is not None:
            self._losses.points += result.discarded
        elif self._losses is not None and not spool.disk_full:
            log.warning(
                "spool %s keeps every point again, after %d points lost in %.0f s",
                spool.path,
                self._losses.points,
                time.monotonic() - self._losses.since,
            )
            self._losses = None

    async def stop(self, timeout: float) -> None:
        """Send what can be sent within `timeout`, then close; the rest stays in the spool."""
        if self._spool is None:
            return
        self._closing = True
        self._closed.set()
        if self._group is not None:
            await self._group.drain()
        tasks = [s.task for s in self._sinks.values() if s.task is not None]
        for state in self._sinks.values():
            state.wakeup.set()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for name, state in self._sinks.items():
            left = self._spool.pending(name)
            if left:
                log.warning("sink %s: %d points stay in the spool for the next start", name, left)
            log.info(
                "sink %s since start: %d points collected, %d written, %d rejected, %d dropped,"
                " %d pending",
                name,
                self._collected,
                state.written,
                state.rejected,
                state.dropped,
                left,
            )
            await asyncio.to_thread(state.writer.close)
        spool, self._spool = self._spool, None
        self._sinks = {}
        if self._reader is not None:
            self._reader.shutdown(wait=False)
        await asyncio.to_thread(spool.close)

    def telemetry(self) -> list[Sample]:
        """One `qkdtel_collector` point per sink (docs/metrics.md), without the daemon's
        polls_running."""
        now = time.time_ns()
        spool_fields: dict[str, int | bool] = {}
        if self._spool is not None:
            spool_fields = {
                "spool_bytes": self._spool.bytes_on_disk(),
                "spool_free_bytes": self._spool.free_bytes(),
                "spool_disk_full": self._spool.disk_full,
            }
        return [
            Sample(
                TELEMETRY_MEASUREMENT,
                {"sink": name, "host": self._host},
                {
                    "points_collected": self._collected,
                    "points_written": state.written,
                    "points_pending": self._spool.pending(name) if self._spool else 0,
                    "points_rejected": state.rejected,
                    "points_dropped": state.dropped,
                    "write_errors": state.write_errors,
                    "write_latency_s": state.write_latency_s,
                    "writer_restarts": state.restarts,
                    "writer_stalled": state.stalled,
                    "spool_damaged": self._salvaged.files,
                    "points_salvaged": self._salvaged.points,
                    "points_lost_damage": self._salvaged.lost,
                    "points_adopted": self._adopted,
                    **spool_fields,
                },
                now,
            )
            for name, state in self._sinks.items()
        ]

    def progress(self) -> list[SinkProgress]:
        """Each sink's delivery as the health check judges it (`qkdtel.health`)."""
        now = time.monotonic()
        return [
            SinkProgress(
                name,
                self._spool.pending(name) if self._spool else 0,
                now - state.last_delivery,
                state.stalled,
                self._closing or (state.task is not None and not state.task.done()),
            )
            for name, state in self._sinks.items()
        ]

    # -- one writer task per sink ------------------------------------------------------------

    async def _run(self, name: str, state: _SinkState) -> None:
        """Write this sink's batches until `stop`; exits once its queue is empty while closing.

        The writes themselves run in a worker thread, several in a row (`_write_chain`), the
        acknowledgements are committed on the side (`_Acknowledger`): neither the spool's
        commits nor a round trip through the event loop sit between two requests. A batch is
        acknowledged only once the sink has answered for it.
        """
        spool = self.spool
        batch_size = self.settings.batch_size

        def counted(written: int, rejected: int) -> None:
            # In the acknowledging thread, before the spool shows the points as no longer pending.
            state.written += written
            state.rejected += rejected
            state.last_delivery = time.monotonic()
            if state.stalled:
                log.warning(
                    "sink %s: delivering again after %d writer failures",
                    name,
                    state.crashes_in_a_row,
                )
                state.stalled, state.crashes_in_a_row = False, 0

        acks = _Acknowledger(spool, name, counted)
        # The last point the sink has answered for (its acknowledgement may not be committed
        # yet), and the next batch to send (read while the previous one was in flight).
        sent = spool.cursor(name)
        batch: Batch | None = None
        try:
            while True:
                # Overflow may have moved the cursor past what this writer has sent.
                sent = max(sent, spool.cursor(name))
                pending = max(0, spool.last_seq - sent)
                now = time.monotonic()
                ready = pending >= batch_size or (
                    pending > 0 and (self._closing or (state.due is not None and now >= state.due))
                )
                if not ready:
                    if acks.outstanding:
                        # Nothing to send right now: commit what the sink has acknowledged.
                        await acks.flush()
                        continue
                    if self._closing:
                        break
                    timeout = self.settings.flush_interval
                    if pending and state.due is not None:
                        timeout = max(0.0, state.due - now)
                    try:
                        await asyncio.wait_for(state.wakeup.wait(), timeout)
                    except TimeoutError:
                        # Nothing came in: look at the spool anyway, another process (the
                        # requeue command) may have added points.
                        await asyncio.to_thread(spool.refresh)
                        if spool.pending(name) and state.due is None:
                            state.due = time.monotonic()
                    state.wakeup.clear()
                    continue
                if batch is None or batch.first_seq <= sent:
                    batch = await asyncio.to_thread(spool.read, name, batch_size, sent)
                    if batch is None:
                        state.due = None
                        continue
                chain = await asyncio.to_thread(self._write_chain, name, state, batch)
                if chain.written:
                    acks.add(chain.written)
                    sent = chain.written[-1][0].last_seq
                for _, refused in chain.written:
                    if refused:
                        log.error(
                            "sink %s refused %d points (kept aside, see `qkdtel spool "
                            "rejected`): %s",
                            name,
                            len(refused),
                            refused[0][1],
                        )
                if chain.written and state.failures_in_a_row:
                    log.warning(
                        "sink %s: writing again after %d failed attempts",
                        name,
                        state.failures_in_a_row,
                    )
                    state.failures_in_a_row = 0
                if chain.failed is not None:
                    batch = None
                    await acks.flush()  # not held back for the whole back-off
                    await self._retry_later(name, state, chain.failed)
                    continue
                batch = chain.ahead
                # Whatever arrived during the last write has waited long enough: send it now.
                state.due = chain.last_started if spool.last_seq > sent else None
        except BaseException:
            # Also when cancelled by `stop`: commit what the sink has answered for, and never
            # let the spool close under a commit; unless committing is what failed.
            with contextlib.suppress(Exception):
                await acks.flush()
            raise
        await acks.flush()

    async def _supervise(self, name: str, state: _SinkState) -> None:
        """The sink's writer task: `_run`, restarted after any exception it meets.

        The failure is logged with its traceback when it happens (a repeat of it in a row in
        one line), counted in `writer_restarts`, and the sink shows `writer_stalled` until an
        acknowledgement commits again. The restart waits an exponential back-off (as a failed
        write), then reads the spool from the sink's cursor: batches whose acknowledgement was
        lost are sent again, which the sink stores once.
        """
        try:
            while True:
                spool = self._spool
                try:
                    await self._run(name, state)
                    return
                except SpoolCorruptError as exc:
                    # A damaged spool file: salvaged (one error logged), then written from the
                    # fresh spool; not a writer failure.
                    await asyncio.to_thread(self._recover, spool, exc)
                    continue
                except Exception as exc:
                    if spool is not self._spool:
                        continue  # salvaged and replaced under this writer: use the new one
                    state.restarts += 1
                    state.crashes_in_a_row += 1
                    state.stalled = True
                    delay = self._backoff(state.crashes_in_a_row)
                    if state.crashes_in_a_row == 1:
                        log.error(
                            "sink %s: writer failed, %d points wait in the spool; the sink is"
                            " stalled, restarting its writer in %.1f s",
                            name,
                            self.spool.pending(name),
                            delay,
                            exc_info=exc,
                        )
                    else:
                        log.error(
                            "sink %s: writer failed again (%d in a row): %s: %s; restarting in"
                            " %.1f s",
                            name,
                            state.crashes_in_a_row,
                            type(exc).__name__,
                            exc,
                            delay,
                        )
                    if self._closing:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closed.wait(), delay)
        finally:
            # A chain still writing stops after its request.
            state.stopped.set()

    def _open_spool(self) -> Spool:
        """The spool at `collector.spool_dir`, as configured."""
        return Spool(
            self.settings.spool_dir / SPOOL_FILE,
            [s.name for s in self._sink_configs],
            self.settings.spool_max_points,
            self.settings.overflow,
            self.settings.spool_max_bytes,
        )

    def _recover(self, damaged: Spool | None, exc: SpoolCorruptError) -> None:
        """In a worker thread: the spool file turned out damaged while running. Close it,
        move it aside and salvage it (`qkdtel.spool_salvage`), then carry on with the fresh
        spool. Once per damaged spool: whoever meets the damage next finds it replaced."""
        with self._salvage_lock:
            if damaged is None or damaged is not self._spool:
                return
            last = damaged.last_seq  # committed, as far as this process knows
            try:
                damaged.close()
            except sqlite3.Error as close_error:
                log.debug("closing the damaged spool: %s", close_error)
            try:
                report = salvage(damaged.path, exc.problem, last)
                self._salvaged.add(report)
                self._spool = self._open_spool()
            except Exception as failure:
                # No room for the fresh spool, the directory gone...: the writers keep failing
                # on the closed spool (logged, writer_stalled) and appends count their losses,
                # until a restart salvages or starts anew. Never a silent stop.
                log.error(
                    "spool file %s is damaged (%s) and could not be salvaged: %s: %s; nothing"
                    " is delivered until qkdtel is restarted",
                    damaged.path,
                    exc.problem,
                    type(failure).__name__,
                    failure,
                    exc_info=failure,
                )

    def _backoff(self, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row."""
        return min(RETRY_BASE_DELAY * 2 ** (failures - 1), self.settings.retry_max_delay)

    def _write_chain(self, name: str, state: _SinkState, batch: Batch) -> _Chain:
        """In a worker thread: write `batch`, then the batches after it for as long as there
        are some and for at most ACK_INTERVAL, one request at a time, in order; stops at the
        first failure. Each next batch is read from the spool while the request before it is
        in flight."""
        spool, reader = self.spool, self._reader
        assert reader is not None
        batch_size = self.settings.batch_size
        deadline = time.monotonic() + ACK_INTERVAL
        chain = _Chain()
        while True:
            ahead = None
            if spool.last_seq > batch.last_seq and not state.stopped.is_set():
                ahead = reader.submit(spool.read, name, batch_size, batch.last_seq)
            chain.last_started = time.monotonic()
            try:
                refused = write_batch(state.writer, batch.body, _lines_of(batch), state.stopped)
            except RetryableWriteError as exc:
                chain.failed = exc
                if ahead is not None:
                    concurrent.futures.wait([ahead])
                return chain
            state.write_latency_s = time.monotonic() - chain.last_started
            chain.written.append((batch, refused))
            following = ahead.result() if ahead is not None else None
            if following is None or state.stopped.is_set() or time.monotonic() >= deadline:
                chain.ahead = following
                return chain
            batch = following

    async def _retry_later(self, name: str, state: _SinkState, exc: RetryableWriteError) -> None:
        """Count a failed write and wait before the next attempt (back-off or Retry-After)."""
        state.write_errors += 1
        state.failures_in_a_row += 1
        delay = self._backoff(state.failures_in_a_row)
        if exc.retry_after is not None:
            # The server's minimum wait; back-off still grows if it keeps refusing.
            delay = max(delay, exc.retry_after)
        log.warning(
            "sink %s: write failed (%s); %d points wait in the spool, next attempt in %.1f s",
            name,
            exc,
            self.spool.pending(name),
            delay,
        )
        await asyncio.sleep(delay)


@dataclass
class _Chain:
    """What `Delivery._write_chain` did: the batches written (with the lines the sink
    refused), the failure that stopped it, the next batch it read but did not send."""

    written: list[tuple[Batch, list[tuple[str, str]]]] = field(default_factory=list)
    failed: RetryableWriteError | None = None
    ahead: Batch | None = None
    last_started: float = 0.0


class _Acknowledger:
    """Commits the acknowledgements of one sink's batches to the spool, in order, off the
    writer's path.

    While batches stream out, one commit (an fsync) per batch would compete with the poller's
    appends for the spool; so while one commit runs, or within ACK_INTERVAL of the last one,
    acknowledgements are gathered and committed together (consecutive batches: one cursor move).
    The writer calls `flush` as soon as it has nothing to send. A crash loses at most the
    gathered acknowledgements, whose batches are then sent again: as after any crash between a
    write and its acknowledgement, the sink stores them once (same series and timestamps).
    """

    def __init__(self, spool: Spool, sink: str, counted: Callable[[int, int], None]) -> None:
        self._spool = spool
        self._sink = sink
        self._counted = counted
        self._first: int | None = None
        self._last = 0
        self._refused: list[tuple[str, str]] = []
        self._commit: asyncio.Future[tuple[int, int]] | None = None
        self._started = -ACK_INTERVAL

    @property
    def outstanding(self) -> bool:
        """Whether some acknowledgement is gathered or still committing."""
        return self._first is not None or (self._commit is not None and not self._commit.done())

    def add(self, written: list[tuple[Batch, list[tuple[str, str]]]]) -> None:
        """The sink has answered for these consecutive batches (each written, its refused
        lines set aside)."""
        for batch, refused in written:
            if self._first is None:
                self._first = batch.first_seq
            self._last = batch.last_seq
            self._refused += refused
        idle = self._commit is None or self._commit.done()
        if idle and self._commit is not None:
            self._commit.result()  # a failed commit (disk full...) stops the writer here
        if idle and time.monotonic() - self._started >= ACK_INTERVAL:
            self._start()

    async def flush(self) -> None:
        """Commit every acknowledgement added so far; returns once they are committed."""
        if self._first is not None:
            self._start()
        if self._commit is not None:
            await asyncio.shield(self._commit)

    def _start(self) -> None:
        assert self._first is not None
        group = Batch(self._first, self._last, b"")
        refused, self._first, self._refused = self._refused, None, []
        self._started = time.monotonic()
        self._commit = asyncio.ensure_future(
            _ack_after(self._commit, self._spool, self._sink, group, refused, self._counted)
        )


async def _ack_after(
    previous: asyncio.Future[tuple[int, int]] | None,
    spool: Spool,
    name: str,
    batch: Batch,
    refused: list[tuple[str, str]],
    counted: Callable[[int, int], None],
) -> tuple[int, int]:
    """`spool.ack` in a worker thread, once the `previous` acknowledgement has committed."""
    if previous is not None:
        await previous
    return await asyncio.to_thread(spool.ack, name, batch, refused, counted)


class _GroupCommit:
    """Commits the submits that arrive while a commit runs together, with the next commit: one
    transaction, one chunk, one fsync for all of them.

    One commit per poll costs an fsync and two pages of write-ahead log each (bench/README);
    here a lone submit is committed at once, and the submits of busy moments share the commits,
    which start GROUP_COMMIT_INTERVAL apart at the closest, not once per poll. Each `commit`
    returns only once its own points are on disk: "on disk before it counts as collected" holds
    for every submit. The accounting (`counted`) is done here, not by the submitter, so a poll
    abandoned at shutdown while its points commit does not lose their count.
    """

    def __init__(
        self,
        append: Callable[[list[str]], AppendResult],
        counted: Callable[[AppendResult, int], None],
    ) -> None:
        self._append = append
        self._counted = counted
        self._waiting: list[tuple[list[str], asyncio.Future[int]]] = []
        self._task: asyncio.Task[None] | None = None
        self._started = -GROUP_COMMIT_INTERVAL

    async def commit(self, lines: list[str]) -> int:
        """Spool `lines` with the next group; returns how many of them were kept."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((lines, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="qkdtel-spool-commit")
        return await asyncio.shield(future)

    async def drain(self) -> None:
        """Wait for the commits under way and queued."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        while self._waiting:
            wait = self._started + GROUP_COMMIT_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # busy: let more submits join this commit
            self._started = time.monotonic()
            group, self._waiting = self._waiting, []
            try:
                await self._commit_group(group)
            except Exception as exc:
                # A bug here must neither leave submitters waiting forever nor pass unseen.
                log.error("spool commit of %d submits failed", len(group), exc_info=exc)
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)

    async def _commit_group(self, group: list[tuple[list[str], asyncio.Future[int]]]) -> None:
        """One commit for the submits of `group`; each one's future gets its points kept."""
        lines = [line for part, _ in group for line in part]
        try:
            result = await asyncio.to_thread(self._append, lines)
        except UnicodeEncodeError:
            # Rare: text that is not Unicode (lone surrogates) has no UTF-8, so no line
            # protocol.
            group = [([x for x in part if _encodable(x)], future) for part, future in group]
            good = [line for part, _ in group for line in part]
            log.warning(
                "%d samples hold text that is not valid Unicode (lone surrogates): not spooled",
                len(lines) - len(good),
            )
            lines = good
            result = await asyncio.to_thread(self._append, lines)
        self._counted(result, len(lines))
        kept_from, kept_to = result.skipped, result.skipped + result.accepted
        offset = 0
        for part, future in group:
            end = offset + len(part)
            if not future.done():
                future.set_result(max(0, min(end, kept_to) - max(offset, kept_from)))
            offset = end


@dataclass
class SalvageCounts:
    """Damaged spool files salvaged since start, with the points saved and lost (a loss of
    unknown size counts what is known of it)."""

    files: int = 0
    points: int = 0
    lost: int = 0

    def add(self, report: SalvageReport | None) -> None:
        if report is not None:
            self.files += 1
            self.points += report.points_saved
            self.lost += report.points_lost


@dataclass
class _Losses:
    """A loss episode: points lost since `since` (monotonic), logged at its start and end."""

    since: float
    points: int = 0


def _limit_detail(spool: Spool, limit: str, error: Exception | None) -> str:
    """The limit a loss ran into, with its value, for the log."""
    if limit == "spool_max_points":
        return f"spool_max_points={spool.max_points}"
    if limit == "spool_max_bytes":
        return f"spool_max_bytes={spool.max_bytes}"
    if error is not None:
        return f"spool error: {type(error).__name__}: {error}"
    return limit


def _encode(samples: Sequence[Sample]) -> list[str]:
    """In a worker thread: the line protocol of `samples` (those with a storable field)."""
    lines: list[str] = []
    for start in range(0, len(samples), ENCODE_SLICE):
        lines += encode_lines(samples[start : start + ENCODE_SLICE])
        # Hand the interpreter lock over: a thread that needs it (a writer whose request
        # has just been answered, the event loop) would otherwise wait for the
        # interpreter's switch interval (5 ms) at every step while a large submit encodes.
        time.sleep(0)
    if len(lines) < len(samples):
        log.warning(
            "%d samples had no field InfluxDB can store (NaN or infinite only): not spooled",
            len(samples) - len(lines),
        )
    return lines


def _lines_of(batch: Batch) -> Callable[[], list[str]]:
    """The batch's lines, split only if asked for (a rejected batch)."""
    return lambda: batch.lines


def _encodable(line: str) -> bool:
    try:
        line.encode()
    except UnicodeEncodeError:
        return False
    return True
