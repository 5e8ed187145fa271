"""`qkdtel sims keys`: the key-delivery chain of one link, simulated, until interrupted.

    qkdtel sims keys --pki-dir DIR [--config-out FILE] [--speed N]
                     [--outage-after S] [--outage-for S]

Serves, on loopback: a key manager (KME-Quevedo, ETSI GS QKD 014 over HTTPS with mutual TLS)
holding the key stocks of two SAE pairs fed by the Quevedo-Norte link 4 (1.4 kbit/s of secret
key, as published); the two encryptors drawing from them over SNMP (an L2 SITLine-class one
refreshing every 2 s, an L1 OTN ADVA-class one every 5 s); and a QRNG. `--pki-dir` receives
the certificates the servers use and a client certificate for the collector; `--config-out`
writes a collector configuration polling all four (`qkdtel run -c FILE`). `--outage-after S
--outage-for S` cuts the link for a while, S simulated seconds from the start: the stocks drain
and the encryptors fall back to classical keys, then recover.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from qkdtel.sims.certs import TestPki, make_pki
from qkdtel.sims.cli_common import EXIT_OK, EXIT_USAGE, positive, stop_on_signal
from qkdtel.sims.clock import AcceleratedClock
from qkdtel.sims.collector_config import snmp_options
from qkdtel.sims.encryptor import (
    Association,
    BackgroundEncryptors,
    EncryptorAgent,
    EncryptorModel,
    Port,
)
from qkdtel.sims.kme.kme import KeyStock, SaePair, SimulatedKme, link_channel
from qkdtel.sims.qrng import SimulatedQrng

LINK_SKR_BPS = 1400.0
"""Link 4, Quevedo-Norte (ID Quantique DV): 1.4 kbit/s of secret key (DOMAIN.md)."""


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `keys` on the `qkdtel sims` subcommands."""
    p = subparsers.add_parser(
        "keys",
        help="a simulated KME, QRNG and two encryptors (key delivery), until interrupted",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pki-dir", type=Path, required=True, help="where to write certificates")
    p.add_argument("--config-out", type=Path, help="write a collector config polling them")
    p.add_argument("--speed", type=positive, default=1.0, help="simulated seconds per second")
    p.add_argument("--outage-after", type=positive, metavar="S", help="cut the link at S")
    p.add_argument("--outage-for", type=positive, default=600.0, metavar="S", help="for S")
    p.set_defaults(func=cmd_keys)


class KeyChain:
    """The simulated devices of `qkdtel sims keys`, started and stopped together."""

    def __init__(self, pki: TestPki, speed: float):
        self.pki = pki
        self.clock = AcceleratedClock(speed)
        channel = link_channel("4", LINK_SKR_BPS)
        l2 = SaePair("sitline-quevedo", "sitline-norte")
        otn = SaePair("adva-quevedo", "adva-norte")
        # encryptors=0: the encryptor agents below draw the keys, refresh by refresh
        self.stocks = {
            l2: KeyStock(channel, encryptors=0, stored=300.0),
            otn: KeyStock(channel, encryptors=0, stored=300.0),
        }
        self.kme = SimulatedKme("KME-Quevedo", "KME-Norte", self.stocks, self.clock, pki)
        self.qrng = SimulatedQrng("QRNG-Quevedo-01", self.clock, pki)
        eth, otu = Port(1, "eth-1/1"), Port(1, "otu4-1", speed_mbps=100_000, load=0.6)
        self.agents = [
            EncryptorAgent(
                "sitline-quevedo",
                "Quevedo",
                EncryptorModel(
                    "sitline_eth",
                    [eth],
                    [Association(1, eth, "Norte", "etsi004", "hybrid", self.stocks[l2], 2.0)],
                ),
                self.clock,
            ),
            EncryptorAgent(
                "adva-quevedo",
                "Quevedo",
                EncryptorModel(
                    "adva_otn",
                    [otu],
                    [Association(1, otu, "Norte", "etsi014", "qkd", self.stocks[otn], 5.0)],
                ),
                self.clock,
            ),
        ]
        self.encryptors = BackgroundEncryptors(self.agents).start()

    def link_up(self, up: bool) -> None:
        for stock in self.stocks.values():
            stock.link_up = up

    def devices(self) -> list[dict[str, Any]]:
        """Collector `devices:` entries polling every simulated device."""
        pairs = [{"master_sae_id": p.master, "slave_sae_id": p.slave} for p in self.stocks]
        tags = {"node": "Quevedo"}
        entries = [
            device_entry(
                "kme-quevedo", "etsi014", tags, pki=self.pki, url=self.kme.url, sae_pairs=pairs
            ),
            device_entry("qrng-quevedo", "qrng", tags, pki=self.pki, url=self.qrng.url),
        ]
        for agent in self.agents:
            entries.append(encryptor_entry(agent, tags))
        return entries

    def close(self) -> None:
        self.encryptors.stop()
        self.kme.close()
        self.qrng.close()


def device_entry(
    name: str,
    driver: str,
    tags: dict[str, str],
    *,
    pki: TestPki | None = None,
    interval: str | float = "5s",
    timeout: str | float = "3s",
    **options: Any,
) -> dict[str, Any]:
    """One collector `devices:` entry (its own dicts throughout: the YAML gets no anchors);
    an HTTPS device (`url` given) gets the client certificate of `pki`."""
    entry = {"name": name, "driver": driver, "interval": interval, "timeout": timeout}
    entry["tags"] = dict(tags)
    if pki is not None and "url" in options:
        entry["tls"] = {
            "ca_file": str(pki.ca),
            "cert_file": str(pki.client.cert),
            "key_file": str(pki.client.key),
        }
    return {**entry, **options}


def encryptor_entry(
    agent: EncryptorAgent, tags: dict[str, str], *, v3: bool = False, **timing: Any
) -> dict[str, Any]:
    """The `encryptor_snmp` device entry polling a running encryptor agent (SNMPv2c, or v3
    authPriv); `timing`: interval, timeout."""
    return device_entry(
        agent.name,
        "encryptor_snmp",
        tags,
        address=f"{agent.host}:{agent.port}",
        profile=agent.model.profile,
        snmp=snmp_options(agent.credentials, v3=v3),
        **timing,
    )


def _outage(chain: KeyChain, after: float, length: float, speed: float) -> list[threading.Timer]:
    """Timers cutting the link `after` simulated seconds from now, for `length` more."""
    cut = threading.Timer(after / speed, chain.link_up, (False,))
    back = threading.Timer((after + length) / speed, chain.link_up, (True,))
    for timer in (cut, back):
        timer.daemon = True
        timer.start()
    return [cut, back]


def cmd_keys(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        pki = make_pki(args.pki_dir)
    except OSError as exc:
        console.print(f"sims keys: --pki-dir {args.pki_dir}: {exc.strerror}", markup=False)
        return EXIT_USAGE
    try:
        chain = KeyChain(pki, args.speed)
    except (OSError, RuntimeError, TimeoutError) as exc:
        console.print(f"sims keys: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    timers: list[threading.Timer] = []
    try:
        stop = stop_on_signal()
        if args.outage_after:
            timers = _outage(chain, args.outage_after, args.outage_for, args.speed)
        for entry in chain.devices():
            where = entry.get("url") or entry.get("address")
            console.print(f"{entry['name']:<18} {entry['driver']:<15} {where}", markup=False)
        if args.config_out:
            document = {"devices": chain.devices()}
            args.config_out.write_text(yaml.safe_dump(document, sort_keys=False))
        console.print(f"certificates in {args.pki_dir}; Ctrl-C to stop", markup=False)
        stop.wait()
    finally:
        for timer in timers:
            timer.cancel()
        chain.close()
    return EXIT_OK
