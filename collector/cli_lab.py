"""`qkdtel osa sweep`, `qkdtel otdr acquire` and `qkdtel powermeter read`: one measurement at
the bench, as a table and a PNG plot, through the same driver code the collector polls with
(`qkdtel.lab`).

    qkdtel osa sweep TCPIP::10.0.0.5::10001::SOCKET --dialect yokogawa --start 1528 --stop 1568 \\
        --rbw 0.02 --points 5001 --quantum 37,38 --plot link4.png --trace link4.npz
    qkdtel otdr acquire TCPIP::10.0.0.7::5025::SOCKET --wavelength 1550 --range 70000 \\
        --averaging 30 --plot link8.png --baseline baselines/ --link 8
    qkdtel powermeter read ASRL/dev/ttyUSB0::INSTR --baud 115200 --head 1/1 --head 1/2 \\
        --wavelength 1550

Exit status: 0 measured; 1 the instrument failed (unreachable, an SCPI error, a timeout, a
garbled answer) or a file could not be written, with one line on stderr saying which; 2 the
arguments are invalid (a resolution the dialect lacks, a quantum channel off the grid...);
3 measured, and the OTDR trace raised an alarm against its baseline (marked on the plot).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from rich import box
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from qkdtel.cli_common import stderr, stdout
from qkdtel.lab import (
    Alarm,
    BaselineStore,
    ItuReport,
    OsaSession,
    OtdrSession,
    OtdrTrace,
    PollError,
    Sweep,
    Thresholds,
    compare,
    read_power,
)
from qkdtel.lab import Progress as AcquisitionProgress

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ALARM = 0, 1, 2, 3


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _channels(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected channel numbers like 37,38, got {text!r}"
        ) from exc


def _quiet_drivers() -> None:
    """Drop the SCPI layer's recovery warnings below DEBUG: at the bench the failure is
    reported once, as the command's one-line error; the collector's log needs them, a
    terminal does not."""
    drivers = logging.getLogger("qkdtel.drivers")
    if drivers.getEffectiveLevel() > logging.DEBUG:
        drivers.setLevel(logging.ERROR)


PLOTS_NEED = (
    "--plot needs matplotlib, which a production install leaves out: pip install 'qkdtel[sims]'"
)


def _plots_available() -> bool:
    """Whether matplotlib (the `sims` extra) is installed: checked before a sweep or an
    acquisition, so a missing plotter costs no measurement."""
    try:
        import matplotlib  # noqa: F401 - only whether it imports
    except ModuleNotFoundError:
        return False
    return True


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    stderr.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return code


# -- osa sweep --------------------------------------------------------------------------------


def channel_table(sweep: Sweep, report: ItuReport, every: bool) -> Table:
    """Occupied classical channels (peak, power, OSNR) and quantum channels (notch, in-band
    noise), in channel order; with `every`, the dark channels too."""
    table = Table(
        title=f"{sweep.identity}: ITU channels ({report.grid_ghz} GHz grid)",
        caption="peak: dBm per RBW; power: dBm; OSNR: dB in 0.1 nm; notch: depth, dB; "
        f"in-band: dBm over ±{report.quantum_bandwidth_ghz / 2:g} GHz",
        header_style="bold",
        box=box.SIMPLE_HEAD,
    )
    for heading in ("ch", "THz", "nm", "kind", "peak", "power", "OSNR", "notch", "in-band"):
        table.add_column(heading, justify="left" if heading == "kind" else "right", no_wrap=True)
    notches = {n.channel: n for n in report.notches}
    for channel in report.channels:
        notch = notches.get(channel.channel)
        if notch is not None:
            table.add_row(
                notch.label,
                f"{notch.frequency_thz:.2f}",
                f"{notch.wavelength_nm:.2f}",
                "[magenta]quantum[/]",
                "",
                "",
                "",
                _fmt(notch.depth_db),
                _fmt(notch.in_band_noise_dbm),
            )
        elif channel.occupied or every:
            table.add_row(
                channel.label,
                f"{channel.frequency_thz:.2f}",
                f"{channel.wavelength_nm:.2f}",
                "[green]classical[/]" if channel.occupied else "[dim]dark[/]",
                _fmt(channel.peak_dbm),
                _fmt(channel.power_dbm),
                _fmt(channel.osnr_db),
                "",
                "",
            )
    return table


def _sweeping(identity: str) -> Progress:
    """A progress line while the analyser sweeps and the trace comes over, as an OTDR
    acquisition has: the analyser reports no percentage, so it shows the time it has taken."""
    columns = (
        SpinnerColumn(),
        TextColumn("sweeping {task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
    )
    bar = Progress(*columns, console=stdout)
    bar.add_task(identity or "OSA", total=None)
    return bar


def cmd_osa_sweep(args: argparse.Namespace) -> int:
    """Sweep once, print the channel table, write the plot and trace if asked."""
    span: dict[str, Any] = {
        "start_nm": args.start,
        "stop_nm": args.stop,
        "center_nm": args.center,
        "span_nm": args.span,
    }
    _quiet_drivers()
    if args.trace is not None and args.trace.suffix.lower() not in (".npz", ".csv"):
        return _fail(f"{args.trace}: a trace file ends in .npz or .csv", EXIT_USAGE)
    if args.plot is not None and not _plots_available():
        return _fail(PLOTS_NEED, EXIT_USAGE)
    try:
        with (
            OsaSession.open(args.resource, dialect=args.dialect, timeout=args.timeout) as osa,
            _sweeping(osa.identity),
        ):
            sweep = osa.sweep(
                **{k: v for k, v in span.items() if v is not None},
                rbw_nm=args.rbw,
                points=args.points,
                sensitivity=args.sensitivity,
            )
        report = sweep.itu_report(args.grid, args.quantum, quantum_bandwidth_ghz=args.quantum_band)
    except PollError as exc:
        return _fail(str(exc))
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)

    stdout.print(channel_table(sweep, report, args.all))
    stdout.print(
        f"occupied: {', '.join(c.label for c in report.classical) or 'none'}; "
        f"total power {sweep.total_power_dbm:.1f} dBm; sweep and transfer "
        f"{sweep.duration_s:.2f} s",
        highlight=False,
    )
    try:
        if args.trace is not None:
            stdout.print(f"trace: {sweep.save(args.trace)}", highlight=False)
        if args.plot is not None:
            from qkdtel.lab_plots import plot_spectrum

            stdout.print(f"plot: {plot_spectrum(sweep, report, args.plot)}", highlight=False)
    except OSError as exc:
        return _fail(f"cannot write {exc.filename}: {exc.strerror}")
    return EXIT_OK


# -- otdr acquire -----------------------------------------------------------------------------


def event_table(trace: OtdrTrace) -> Table:
    """The instrument's event table, numbered as on the plot."""
    table = Table(
        title=f"events at {trace.wavelength_nm} nm", header_style="bold", box=box.SIMPLE_HEAD
    )
    for heading in ("#", "km", "type", "loss dB", "reflectance dB", "cumulative dB"):
        table.add_column(heading, justify="left" if heading == "type" else "right")
    for number, event in enumerate(trace.events, start=1):
        table.add_row(
            str(number),
            f"{event.distance_m / 1000:.3f}",
            event.type.value.replace("_", "-"),
            _fmt(event.loss_db, 2),
            _fmt(event.reflectance_db),
            _fmt(event.cumulative_loss_db, 2),
        )
    return table


def _acquire(args: argparse.Namespace) -> tuple[OtdrTrace, str, int]:
    """The trace, the OTDR's identity and when (ns since the epoch) the trace was read."""
    columns = (
        TextColumn("acquiring {task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with (
        OtdrSession.open(args.resource, timeout=args.timeout) as otdr,
        Progress(*columns, console=stdout) as bar,
    ):
        task = bar.add_task(f"{args.wavelength} nm", total=100.0)

        def advance(progress: AcquisitionProgress) -> None:
            bar.update(task, completed=progress.percent)

        trace = otdr.acquire(
            wavelength_nm=args.wavelength,
            pulse_width_ns=args.pulse,
            range_m=args.range,
            averaging_s=args.averaging,
            binary=not args.ascii,
            progress_interval=args.progress_interval,
            on_progress=advance,
        )
        return trace, otdr.identity, time.time_ns()


def _against_baseline(
    args: argparse.Namespace, trace: OtdrTrace
) -> tuple[OtdrTrace | None, list[Alarm]]:
    """The stored baseline and the alarms against it (printed); with none stored, `trace`
    becomes it (as the collector's driver does) and there is no baseline to compare."""
    store = BaselineStore(args.baseline)
    try:
        baseline = store.load(args.link, trace.wavelength_nm)
    except ValueError as exc:  # names the file: not JSON, not a baseline, unreadable
        raise PollError(str(exc)) from exc
    if baseline is None:
        path = store.save(args.link, trace)
        stdout.print(f"no baseline yet: this acquisition saved as it: {path}", highlight=False)
        return None, []
    alarms = compare(baseline, trace, Thresholds())
    where = store.path(args.link, trace.wavelength_nm)
    if not alarms:
        stdout.print(f"no change beyond the thresholds against {where}", highlight=False)
    for alarm in alarms:
        stdout.print(f"[bold red]{alarm.kind}[/]: {alarm.message}", highlight=False)
    return baseline, alarms


def cmd_otdr_acquire(args: argparse.Namespace) -> int:
    """Acquire once with a progress bar, print the events, length and loss; plot if asked."""
    _quiet_drivers()
    if args.baseline is not None and args.link is None:
        return _fail("--baseline needs --link (baselines are kept per link)", EXIT_USAGE)
    if args.plot is not None and not _plots_available():
        return _fail(PLOTS_NEED, EXIT_USAGE)
    try:
        trace, identity, taken_ns = _acquire(args)
        stdout.print(event_table(trace))
        length = (
            "no end seen"
            if trace.fibre_length_m is None
            else f"{trace.fibre_length_m / 1000:.3f} km"
        )
        stdout.print(
            f"fibre length {length}; total loss {_fmt(trace.total_loss_db, 2)} dB",
            highlight=False,
        )
        baseline, alarms = _against_baseline(args, trace) if args.baseline else (None, [])
        if args.plot is not None:
            from qkdtel.lab_plots import plot_otdr

            plot = plot_otdr(
                trace, args.plot, baseline, instrument=identity, taken_ns=taken_ns, alarms=alarms
            )
            stdout.print(f"plot: {plot}", highlight=False)
    except PollError as exc:
        return _fail(str(exc))
    except ValueError as exc:  # invalid arguments
        return _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        return _fail(f"cannot write {exc.filename}: {exc.strerror}")
    return EXIT_ALARM if alarms else EXIT_OK


# -- powermeter read -------------------------------------------------------------------------


def _head(text: str) -> dict[str, int]:
    """`SLOT/CHANNEL` (or `SLOT`) -> the head's keys."""
    try:
        slot, _, channel = text.partition("/")
        return {"slot": int(slot), "channel": int(channel or 1)}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a head like 1/2, got {text!r}") from exc


def cmd_powermeter_read(args: argparse.Namespace) -> int:
    """Read each head once and print a table of power per head."""
    _quiet_drivers()
    heads = [
        {**head, "wavelength_nm": args.wavelength, "averaging": args.averaging}
        for head in args.head or [{"slot": 1, "channel": 1}]
    ]
    try:
        readings = read_power(args.resource, heads, timeout=args.timeout, baud_rate=args.baud)
    except PollError as exc:
        return _fail(str(exc))
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    table = Table(title=f"{args.resource}", header_style="bold", box=box.SIMPLE_HEAD)
    for heading in ("head", "nm", "power dBm", "power µW"):
        table.add_column(heading, justify="right", no_wrap=True)
    for r in readings:
        dark = r.power_dbm is None
        table.add_row(
            f"{r.slot}/{r.channel}",
            f"{r.wavelength_nm:g}",
            "no light" if dark else f"{r.power_dbm:.3f}",
            "-" if dark else f"{10 ** (r.power_dbm / 10) * 1000:.4g}",
        )
    stdout.print(table)
    return EXIT_OK


# -- registration -----------------------------------------------------------------------------


def add_subcommand(subparsers: Any) -> None:
    """Add `osa`, `otdr` and `powermeter` to the `qkdtel` command's subparsers."""
    osa = subparsers.add_parser("osa", help="optical spectrum analyser at the bench")
    osa_sub = osa.add_subparsers(dest="osa_command", required=True)
    p = osa_sub.add_parser(
        "sweep",
        help="one sweep: ITU channel table, plot, trace file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("resource", help="VISA resource, e.g. TCPIP::10.0.0.5::10001::SOCKET")
    p.add_argument("--dialect", choices=("yokogawa", "anritsu"), default="yokogawa")
    p.add_argument("--start", type=float, metavar="NM", help="sweep start (vacuum nm)")
    p.add_argument("--stop", type=float, metavar="NM", help="sweep stop")
    p.add_argument("--center", type=float, metavar="NM", help="or: sweep centre")
    p.add_argument("--span", type=float, metavar="NM", help="and span (default 1528-1567 nm)")
    p.add_argument("--rbw", type=float, default=0.05, metavar="NM", help="resolution bandwidth")
    p.add_argument("--points", type=int, default=2001, help="points per sweep")
    p.add_argument(
        "--sensitivity", default="high1", help="normal, mid, high1, high2, high3 (Yokogawa)"
    )
    p.add_argument("--grid", type=int, choices=(100, 50), default=100, help="ITU grid, GHz")
    p.add_argument(
        "--quantum", type=_channels, default=[], metavar="N,N", help="quantum channels, e.g. 37,38"
    )
    p.add_argument(
        "--quantum-band", type=float, default=40.0, metavar="GHZ", help="quantum receiver band"
    )
    p.add_argument("--all", action="store_true", help="list the dark channels too")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write the spectrum plot here")
    p.add_argument("--trace", type=Path, metavar="FILE", help="write the trace (.npz or .csv)")
    p.add_argument("--timeout", type=float, default=5.0, help="limit of one read/write, s")
    p.set_defaults(func=cmd_osa_sweep)

    otdr = subparsers.add_parser("otdr", help="OTDR at the bench")
    otdr_sub = otdr.add_subparsers(dest="otdr_command", required=True)
    p = otdr_sub.add_parser(
        "acquire",
        help="one acquisition: event table, length, loss, plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("resource", help="VISA resource, e.g. TCPIP::10.0.0.7::5025::SOCKET")
    p.add_argument("--wavelength", type=int, choices=(1310, 1550), default=1550, help="nm")
    p.add_argument("--pulse", type=float, default=1000.0, metavar="NS", help="pulse width")
    p.add_argument(
        "--range", type=float, default=50_000.0, metavar="M", help="about twice the fibre"
    )
    p.add_argument("--averaging", type=float, default=30.0, metavar="S", help="averaging time")
    p.add_argument("--ascii", action="store_true", help="trace as ASCII, not a REAL,32 block")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write the trace plot here")
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="compare with (and overlay) the link's baseline here; saved there if none yet",
    )
    p.add_argument("--link", help="link id, names the baseline file (with --baseline)")
    p.add_argument("--progress-interval", type=float, default=0.5, metavar="S", help="polling")
    p.add_argument("--timeout", type=float, default=5.0, help="limit of one read/write, s")
    p.set_defaults(func=cmd_otdr_acquire)

    meter = subparsers.add_parser("powermeter", help="optical power meter at the bench")
    meter_sub = meter.add_subparsers(dest="powermeter_command", required=True)
    p = meter_sub.add_parser(
        "read",
        help="read each head once: power in dBm and µW",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("resource", help="VISA resource, e.g. ASRL/dev/ttyUSB0::INSTR")
    p.add_argument(
        "--head", type=_head, action="append", metavar="SLOT/CH", help="head(s) to read (1/1)"
    )
    p.add_argument("--wavelength", type=float, default=1550.0, metavar="NM", help="correction")
    p.add_argument("--averaging", type=float, default=0.1, metavar="S", help="averaging time")
    p.add_argument("--baud", type=int, metavar="BPS", help="serial line speed")
    p.add_argument("--timeout", type=float, default=2.0, help="limit of one read/write, s")
    p.set_defaults(func=cmd_powermeter_read)
