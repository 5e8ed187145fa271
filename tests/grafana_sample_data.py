"""Points of every measurement the dashboards show, as a small MadQCI network would write them:
four QKD modules polled ten times, a failing device (every error class), one collector, events.
Each field is typed as docs/metrics.md says, so a query that mistakes a type fails."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.grafana_checks import CONTRACT


@dataclass(frozen=True)
class Point:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, object]
    time_s: int


def line_protocol(p: Point) -> str:
    """One line, each field typed as docs/metrics.md says (so type errors show up in queries)."""
    columns = CONTRACT[p.measurement]

    def esc(s: str) -> str:
        return re.sub(r"([ ,=])", r"\\\1", s)

    def value(name: str, v: object) -> str:
        col = columns[name]
        assert col.kind == "field", f"{p.measurement}.{name} is not a documented field"
        if col.type == "float":
            return repr(float(v))  # type: ignore[arg-type]
        if col.type == "int":
            return f"{int(v)}i"  # type: ignore[call-overload]
        if col.type == "bool":
            return "true" if v else "false"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    for tag in p.tags:
        assert columns[tag].kind == "tag", f"{p.measurement}.{tag} is not a documented tag"
    tags = "".join(f",{esc(k)}={esc(v)}" for k, v in sorted(p.tags.items()))
    fields = ",".join(f"{esc(k)}={value(k, v)}" for k, v in p.fields.items())
    return f"{p.measurement}{tags} {fields} {p.time_s}"


# Modules of the fixture, after MadQCI: (tags, fields per poll k=0 newest .. 9 oldest).
LINK_MODULES = [
    (
        {
            "device": "quevedo-idq-4",
            "node": "Quevedo",
            "peer": "Norte",
            "link": "4",
            "vendor": "idq",
            "technology": "dv",
            "protocol": "cow",
            "band": "O",
            "direction": "tx",
            "switched": "false",
        },
        lambda k: {
            "link_status": "active",
            "vendor_state": "QKD_RUNNING",
            "key_generating": True,
            "secret_key_rate_bps": 1400.0 + 10 * k,
            "raw_key_rate_bps": 9.1e5,
            "sifted_key_rate_bps": 4.4e5,
            "secret_key_bits_total": 9_000_000 - 84_000 * k,
            "qber": 0.042,
            "visibility": 0.985,
            "channel_loss_db": 6.1,
            "wavelength_nm": 1310.0,
            "key_store_fill_ratio": 0.6,
            "key_store_bits": 6_000_000,
        },
    ),
    (
        {
            "device": "quevedo-hwdu-4",
            "node": "Quevedo",
            "peer": "Norte",
            "link": "4",
            "vendor": "hwdu",
            "technology": "cv",
            "protocol": "gg02",
            "band": "C",
            "channel": "37",
            "direction": "tx",
            "switched": "false",
        },
        lambda k: {
            "link_status": "active",
            "vendor_state": "WORKING",
            "key_generating": True,
            "secret_key_rate_bps": 8700.0,
            "excess_noise_snu": 0.011 + 0.001 * (k % 3),
            "snr_db": -12.4,
            "transmittance": 0.25,
            "channel_loss_db": 6.0,
            "wavelength_nm": 1547.72,
            "key_store_fill_ratio": 0.9,
            "key_store_bits": 9_000_000,
        },
    ),
    (
        {
            "device": "quijote-hwdu-34",
            "node": "Quijote",
            "peer": "Norte",
            "link": "3+4",
            "vendor": "hwdu",
            "technology": "cv",
            "protocol": "gg02",
            "band": "C",
            "channel": "38",
            "direction": "tx",
            "switched": "true",
        },
        lambda k: {
            "link_status": "failure",
            "vendor_state": "ALARM",
            "key_generating": False,
            "secret_key_rate_bps": 0.0,
            "excess_noise_snu": 0.08,
            "snr_db": -19.5,
            "transmittance": 0.05,
            "channel_loss_db": 13.0,
            "wavelength_nm": 1546.92,
            "key_store_fill_ratio": 0.0,
            "key_store_bits": 0,
        },
    ),
    (
        {
            "device": "quijano-toshiba-8",
            "node": "Quijano",
            "peer": "Quevedo",
            "link": "8",
            "vendor": "toshiba",
            "technology": "dv",
            "protocol": "bb84_decoy",
            "band": "O",
            "direction": "tx",
            "switched": "false",
        },
        lambda k: {
            "link_status": "active",
            "vendor_state": "RUNNING",
            "key_generating": True,
            "secret_key_rate_bps": 37200.0,
            "raw_key_rate_bps": 2.1e6,
            "sifted_key_rate_bps": 1.0e6,
            "secret_key_bits_total": 50_000_000 - 2_232_000 * k,
            "qber": 0.061 if k < 3 else 0.03,
            "channel_loss_db": 11.8,
            "wavelength_nm": 1310.0,
            "key_store_fill_ratio": 0.3,
            "key_store_bits": 3_000_000,
        },
    ),
]
TEMPERATURES = {
    "dv": {"detector_temperature_c": -40.0, "laser_temperature_c": 25.0},
    "cv": {"receiver_temperature_c": 31.0, "laser_temperature_c": 25.0},
}
EVENTS = [
    (
        "quevedo-idq-4",
        "qber_threshold",
        "major",
        {"notification": "cerbQberThresholdAlarm", "source": "10.4.0.11", "qber": 0.061},
    ),
    (
        "quijote-hwdu-34",
        "link_down",
        "critical",
        {"notification": "hwcvChannelDown", "source": "10.3.0.21", "vendor_state": "ALARM"},
    ),
    (
        "quevedo-hwdu-4",
        "excess_noise_threshold",
        "warning",
        {"notification": "hwcvExcessNoiseAlarm", "source": "10.4.0.21", "excess_noise_snu": 0.05},
    ),
    (
        "quijano-toshiba-8",
        "key_store_empty",
        "warning",
        {"notification": "tqkdKeyBufferEmpty", "source": "10.8.0.31", "key_store_bits": 0},
    ),
    (
        "quijano-toshiba-8",
        "link_up",
        "info",
        {"notification": "tqkdLinkStatusChange", "source": "10.8.0.31", "vendor_state": "RUNNING"},
    ),
]
ERROR_CLASSES = sorted(CONTRACT["qkdtel_device_status"]["error_class"].values - {""})
"""Every documented error class (docs/metrics.md), so each dashboard query finds some."""


def sample_points(now: int) -> list[Point]:
    """Ten polls a minute apart of four QKD modules, a failing device and one collector."""
    points = []
    # At least one failed poll per error class (the failing device below).
    polls = [(k, now - 30 - 60 * k) for k in range(max(10, len(ERROR_CLASSES)))]
    for tags, fields in LINK_MODULES:
        module_tags = {t: tags[t] for t in ("device", "node", "vendor", "technology")}
        for k, t in polls:
            link = fields(k)
            points.append(Point("qkd_link", tags, link, t))
            points.append(
                Point(
                    "qkd_module",
                    module_tags,
                    {
                        **TEMPERATURES[tags["technology"]],
                        "enclosure_temperature_c": 22.0 + k / 10,
                        "board_temperature_c": 40.0,
                        "links": 1,
                        "links_generating": int(link["key_generating"]),
                    },
                    t,
                )
            )
            status = {
                "up": True,
                "error_class": "",
                "error": "",
                "poll_duration_s": 0.4,
                "samples": 3,
                "consecutive_failures": 0,
                "backoff_s": 0.0,
            }
            points.append(
                Point(
                    "qkdtel_device_status",
                    {"device": tags["device"], "driver": "qkd_snmp"},
                    status,
                    t,
                )
            )
    for k, t in polls:  # a key manager that has been failing for ten minutes, every error class
        status = {
            "up": False,
            "error_class": ERROR_CLASSES[k % len(ERROR_CLASSES)],
            "error": "no answer in 5.0 s",
            "poll_duration_s": 5.0,
            "samples": 0,
            "consecutive_failures": 10 - k,
            "backoff_s": 60.0,
        }
        points.append(
            Point(
                "qkdtel_device_status", {"device": "distrito-kms", "driver": "etsi014"}, status, t
            )
        )
        collector = {
            "points_collected": 1000 * (10 - k),
            "points_written": 990 * (10 - k),
            "points_pending": 10,
            "points_rejected": 0,
            "points_dropped": 5 * (10 - k),
            "write_errors": 10 - k,
            "write_latency_s": 0.02,
            "polls_running": 1,
        }
        points.append(
            Point("qkdtel_collector", {"sink": "influxdb", "host": "noc-collector-1"}, collector, t)
        )
    link_tags = {tags["device"]: tags for tags, _ in LINK_MODULES}
    for i, (device, event, severity, fields) in enumerate(EVENTS):
        tags = {k: link_tags[device][k] for k in ("device", "node", "peer", "link", "vendor")}
        points.append(
            Point(
                "qkd_event", {**tags, "event": event, "severity": severity}, fields, now - 100 * i
            )
        )
    return points
