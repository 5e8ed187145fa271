"""Points of every measurement the dashboards show, as a small MadQCI network would write them:
four QKD modules polled ten times, a failing device (every error class), one collector, events,
the optical instruments, a switch, a key manager, the QRNG, encryptors and an SD-QKD node.
Each field is typed as docs/metrics.md says, so a query that mistakes a type fails.

By default the network carries one fault for every alert rule of grafana/provisioning/alerting
(a DV link's QBER high, a CV link without key, a device down, the spool growing, a key stock
low and draining, fibre loss up over its baseline, a cross-connect changed, an encryptor in
classical fallback); `healthy=True` gives the same network without them."""

from __future__ import annotations

import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

from tests.fixtures_influxdb import InfluxServer
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
            # in maintenance for the last two polls, healthy or not (no key rate alert)
            "link_status": "off" if k < 2 else "active",
            "vendor_state": "MAINTENANCE" if k < 2 else "QKD_RUNNING",
            "key_generating": k >= 2,
            "secret_key_rate_bps": 0.0 if k < 2 else 1400.0 + 10 * k,
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
        lambda k: {  # lost its key in the last five polls unless healthy (a break)
            "link_status": "pending" if k < 5 else "active",
            "vendor_state": "LOCKING" if k < 5 else "WORKING",
            "key_generating": k >= 5,
            "secret_key_rate_bps": 0.0 if k < 5 else 8700.0,
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


# The faulty modules as they are when healthy (healthy=True).
HEALTHY_LINKS: dict[str, dict[str, object]] = {
    "quevedo-hwdu-4": {
        "link_status": "active",
        "vendor_state": "WORKING",
        "key_generating": True,
        "secret_key_rate_bps": 8700.0,
    },
    "quijote-hwdu-34": {
        "link_status": "active",
        "vendor_state": "WORKING",
        "key_generating": True,
        "secret_key_rate_bps": 5200.0,
        "excess_noise_snu": 0.012,
        "snr_db": -13.0,
        "key_store_fill_ratio": 0.7,
        "key_store_bits": 7_000_000,
    },
    "quijano-toshiba-8": {"qber": 0.03},
}
SITE = {"node": "Quevedo", "domain": "TID"}


def sample_points(now: int, *, healthy: bool = False) -> list[Point]:
    """Ten polls a minute apart of four QKD modules, a failing device, one collector and a device
    of every other family (see the module docstring for `healthy`)."""
    points = []
    # At least one failed poll per error class (the failing device below).
    polls = [(k, now - 30 - 60 * k) for k in range(max(10, len(ERROR_CLASSES)))]
    for module, fields in LINK_MODULES:
        tags = {**module, "domain": "RM"}  # the configured tag (Quevedo, Quijote, Quijano: RM)
        module_tags = {t: tags[t] for t in ("device", "node", "domain", "vendor", "technology")}
        for k, t in polls:
            link = fields(k) | (HEALTHY_LINKS.get(tags["device"], {}) if healthy else {})
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
                "start_lag_s": 0.02,
                "samples": 3,
                "consecutive_failures": 0,
                "backoff_s": 0.0,
            }
            points.append(
                Point(
                    "qkdtel_device_status",
                    {**{t: tags[t] for t in ("device", "node", "domain")}, "driver": "qkd_snmp"},
                    status,
                    t,
                )
            )
    for k, t in polls:  # a key manager that has been failing for ten minutes, every error class
        status = {
            "up": healthy,
            "error_class": ERROR_CLASSES[k % len(ERROR_CLASSES)],
            "error": "no answer in 5.0 s",
            "poll_duration_s": 5.0,
            "start_lag_s": 0.3,
            "samples": 0,
            "consecutive_failures": 0 if healthy else 10 - k,
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
            "points_pending": 10 if healthy else 10 + 500 * (10 - k),
            "points_rejected": 0,
            "points_dropped": 5 * (10 - k),
            "write_errors": 10 - k,
            "write_latency_s": 0.02,
            "polls_running": 1,
            "writer_restarts": 0 if healthy else int(k < 5),
            "worker_restarts": 0 if healthy else int(k < 3),
            "writer_stalled": False,
            "spool_bytes": 40_960 + 1024 * (10 - k),
        }
        collector_tags = {"sink": "influxdb", "host": "noc-collector-1", "shard": "0"}
        points.append(Point("qkdtel_collector", collector_tags, collector, t))
        refused = {f: 0 for f in CONTRACT["qkdtel_listener"] if f.startswith("refused_")}
        listener = {"received": 4 * (10 - k), **refused, "refused_wrong_community": 10 - k}
        listener_tags = {"listener": "traps", "host": "noc-collector-1"}
        points.append(Point("qkdtel_listener", listener_tags, listener, t))
    link_tags = {tags["device"]: tags for tags, _ in LINK_MODULES}
    for i, (device, event, severity, fields) in enumerate(EVENTS):
        tags = {k: link_tags[device][k] for k in ("device", "node", "peer", "link", "vendor")}
        points.append(
            Point(
                "qkd_event", {**tags, "event": event, "severity": severity}, fields, now - 100 * i
            )
        )
    for k, t in polls:
        points += optical_points(t, k, healthy) + key_points(t, k, healthy)
    points += switch_points(now, polls, healthy)
    return points


def optical_points(t: int, k: int, healthy: bool) -> list[Point]:
    """An OSA, an OTDR and a power meter on link 4 at Quevedo (after drivers/osa, otdr, ...)."""
    osa = {**SITE, "device": "quevedo-osa", "link": "4", "dialect": "yokogawa"}
    points = [
        Point(
            "osa_channel",
            {**osa, "grid": "100", "channel": str(ch)},
            {
                "frequency_thz": 190.0 + ch / 10,
                "wavelength_nm": 299792.458 / (190.0 + ch / 10),
                "peak_power_dbm": -8.0,
                "noise_dbm": -40.0,
                "occupied": True,
                "power_dbm": -8.5 - 0.1 * ch,
                "osnr_db": 15.0 if ch == 30 and not healthy else 31.0 - ch / 10,
            },
            t,
        )
        for ch in (21, 22, 30)
    ]
    for channel, depth in (("37", 35.0), ("38", 35.0 if healthy else 22.0)):
        points.append(
            Point(
                "osa_quantum_channel",
                {**osa, "channel": channel},
                {"notch_level_dbm": -75.0, "notch_depth_db": depth, "in_band_noise_dbm": -70.0},
                t,
            )
        )
    otdr = {**SITE, "device": "quevedo-otdr", "link": "4", "wavelength": "1550"}
    loss = 6.0 if healthy else 6.0 + (1.5 if k < 3 else 0.0)
    points.append(
        Point("otdr_trace", otdr, {"total_loss_db": loss, "events": 4 + int(loss > 6.0)}, t)
    )
    points.append(
        Point(
            "otdr_alarm",
            {**otdr, "alarm": "total_loss_change", "event": "5"},
            {
                "message": f"total loss {loss - 5.7:.2f} dB over the baseline",
                "loss_db": loss,
                "baseline_loss_db": 5.7,
                "loss_change_db": loss - 5.7,
            },
            t,
        )
    )
    meter = {**SITE, "device": "quevedo-pm", "slot": "1", "channel": "1", "link": "4"}
    power = -20.5 - (1.5 if k < 3 and not healthy else 0.0)  # the OTDR's added loss, seen live
    points.append(
        Point(
            "optical_power", {**meter, "wavelength": "1550"}, {"power_dbm": power, "light": True}, t
        )
    )
    dark = {**meter, "channel": "2", "wavelength": "1310"}  # a head on a dark fibre
    lit = {"light": True, "power_dbm": -30.0} if healthy else {"light": False}
    points.append(Point("optical_power", dark, lit, t))
    return points


def key_points(t: int, k: int, healthy: bool) -> list[Point]:
    """A key manager with two SAE pairs (one running dry unless healthy), the QRNG, an L2
    encryptor (in classical fallback unless healthy) and an SD-QKD node's application."""
    kme = {**SITE, "device": "quevedo-kme", "source_kme_id": "KME-Quevedo"}
    draining = {"stored_key_count": 50 + 20 * k, "fill_ratio": (50 + 20 * k) / 1000}
    draining |= {"net_drain_keys_per_s": 0.33, "time_to_empty_s": (50 + 20 * k) / 0.33}
    pairs = {
        "enc-norte": {"stored_key_count": 800, "fill_ratio": 0.8},
        "enc-quijote": {"stored_key_count": 800, "fill_ratio": 0.8} if healthy else draining,
    }
    points = []
    for slave, stock in pairs.items():
        drain = {"net_drain_keys_per_s": 0.01, "time_to_empty_s": 80_000.0} | stock
        points.append(
            Point(
                "kme_key_store",
                {**kme, "target_kme_id": "KME-peer", "master_sae_id": "enc-quevedo"}
                | {"slave_sae_id": slave},
                drain
                | {
                    "max_key_count": 1000,
                    "key_size_bits": 256,
                    "stored_key_bits": 256 * int(drain["stored_key_count"]),
                    "key_store_empty": False,
                },
                t,
            )
        )
    points.append(
        Point(
            "qrng",
            {**SITE, "device": "quevedo-qrng", "model": "quside"},
            {
                "health": "ok",
                "healthy": True,
                "delivered_rate_bps": 4.0e8,
                "max_rate_bps": 1.0e9,
                "utilisation_ratio": 0.4,
                "temperature_c": 35.0,
            },
            t,
        )
    )
    enc = {**SITE, "device": "quevedo-enc-l2", "vendor": "rohde_schwarz", "layer": "l2"}
    fallback = not healthy and k < 4
    points.append(
        Point(
            "encryptor",
            enc,
            {"ports": 2, "ports_up": 2, "associations": 2}
            | {"associations_in_fallback": int(fallback)},
            t,
        )
    )
    for peer, in_fallback in (("Norte", False), ("Quijote", fallback)):
        points.append(
            Point(
                "encryptor_association",
                {**enc, "peer": peer, "port": f"eth-{peer.lower()}", "key_interface": "etsi014"},
                {
                    "key_source": "classical" if in_fallback else "qkd",
                    "state": "classical_fallback" if in_fallback else "encrypting",
                    "encrypting": True,
                    "classical_fallback": in_fallback,
                    "seconds_since_refresh": 30.0 + 600.0 * in_fallback,
                    "key_refreshes_total": 1000 - 2 * k,
                },
                t,
            )
        )
    points.append(
        Point(
            "qkd_app",
            {
                **SITE,
                "device": "quevedo-sdqkd",
                "app_id": "7c1e",
                "app_name": "enc-l2",
                "link": "4",
            },
            {"app_status": "ON", "consumed_bits_total": 9_000_000 - 60_000 * k},
            t,
        )
    )
    return points


def switch_points(now: int, polls: list[tuple[int, int]], healthy: bool) -> list[Point]:
    """A switch at Quijote; unless healthy, its cross-connect 3>9 moved to 3>11 four polls ago
    (the events that a poll finds), and the key manager saw a pair run dry."""
    switch = {"node": "Quijote", "domain": "TID", "device": "quijote-oxc"}
    points = []
    for k, t in polls:
        moved = not healthy and k < 4
        points.append(
            Point(
                "optical_switch",
                switch,
                {"cross_connects": 2, "ports": 16, "ports_up": 4}
                | {"cross_connect_map": "1>10,3>11" if moved else "1>10,3>9"},
                t,
            )
        )
        for port, peer in ((1, 10), (3, 11 if moved else 9)):
            points.append(
                Point(
                    "optical_switch_port",
                    {**switch, "port": str(port), "direction": "ingress"},
                    {"admin_enabled": True, "oper_up": True, "peer_port": peer}
                    | {"power_dbm": -55.0 if moved and port == 3 else -21.0},  # the new path dark
                    t,
                )
            )
    if healthy:
        return points
    changed = now - 30 - 60 * 3
    for event, egress in (("cross_connect_removed", "9"), ("cross_connect_added", "11")):
        verb = event.rsplit("_", 1)[1]
        points.append(
            Point(
                "optical_switch_event",
                {**switch, "event": event, "ingress": "3", "egress": egress},
                {"source": "poll", "message": f"cross-connect 3 -> {egress} {verb}"},
                changed,
            )
        )
    kme = {**SITE, "device": "quevedo-kme", "source_kme_id": "KME-Quevedo"}
    points.append(
        Point(
            "kme_event",
            {**kme, "target_kme_id": "KME-peer", "master_sae_id": "enc-quevedo"}
            | {"slave_sae_id": "enc-quijote", "event": "key_store_empty", "severity": "major"},
            {"stored_key_count": 0},
            now - 60,
        )
    )
    points.append(
        Point(
            "encryptor_event",
            {
                **SITE,
                "device": "quevedo-enc-l2",
                "vendor": "rohde_schwarz",
                "layer": "l2",
                "peer": "Quijote",
                "port": "eth-quijote",
                "key_interface": "etsi014",
                "event": "classical_fallback",
                "severity": "major",
            },
            {"key_source": "classical", "state": "classical_fallback"},
            now - 30 - 60 * 3,
        )
    )
    return points


def write_sample(influxdb: InfluxServer, db: str, *, healthy: bool = False) -> None:
    """`sample_points` of now into database `db` of the real influxd, every point accepted."""
    body = "\n".join(line_protocol(p) for p in sample_points(int(time.time()), healthy=healthy))
    url = f"{influxdb.url}/write?{urllib.parse.urlencode({'db': db, 'precision': 's'})}"
    with urllib.request.urlopen(urllib.request.Request(url, data=body.encode()), timeout=10) as r:
        assert r.status == 204  # every point accepted
