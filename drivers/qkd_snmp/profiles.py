"""One declarative table per vendor family: MIB object -> tag or field of docs/metrics.md.

Read a profile like a datasheet: each `Out(source, name, convert)` line says "the value of MIB
object `source`, passed through `convert`, is tag/field `name`". Everything vendor-specific
(units, scale, state names, what a notification means) lives here; `driver.py` and
`traps.py` only execute these tables. Objects are named, never numbered: `mib.py`
resolves every name through the compiled MIBs.

Converters receive the decoded value: an `int` for integer syntaxes, a `str` for strings, and
the *name* (e.g. "producingKey") for enumerations. They return None for "not known" (the
tag/field is then left out) and raise `ValueError` for junk, which the driver reports as
`Malformed` naming the object, the row and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qkdtel.drivers.optics import channel_nm

LinkStatus = str  # ETSI GS QKD 015 link state: active | pending | off | failure


# ---- converters -------------------------------------------------------------------------------


def per(divisor: float) -> Callable[[int], float]:
    """Integer in device units -> float in metrics units: `per(10_000)` for 0.01 % -> fraction.

    Dividing (not multiplying by 1e-4) keeps decimal values exact: 98 / 100 is 0.98.
    """

    def convert(value: int) -> float:
        return value / divisor

    convert.__name__ = f"per({divisor:g})"
    return convert


def as_int(value: int) -> int:
    """An integer kept as an integer (counters, bit counts)."""
    return int(value)


def as_float(value: int) -> float:
    """An integer already in metrics units, stored as float (InfluxDB keeps one type per field)."""
    return float(value)


def text(value: str) -> str | None:
    """A label; empty means unknown (left out, per docs/metrics.md)."""
    value = value.strip()
    return value or None


def text_float(value: str) -> float:
    """A decimal number sent as text (some research systems do): "0.0123", "-12.40"."""
    number = float(value.strip())  # ValueError on junk
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def choose(mapping: Mapping[str, str]) -> Callable[[str], str]:
    """Enumeration name -> normalised value."""

    def convert(value: str) -> str:
        return mapping[value]

    convert.__name__ = "choose"
    return convert


def truth(value: str) -> str:
    """SNMPv2-TC TruthValue -> "true" / "false" (a tag)."""
    return {"true": "true", "false": "false"}[value]


_CBAND = re.compile(r"^C-?(\d{1,2})$", re.IGNORECASE)


def band_of_label(value: str) -> str:
    """Cerberis band label "O", "C32", "C34" -> band "O" / "C"."""
    label = value.strip().upper()
    if label == "O":
        return "O"
    if _CBAND.match(label):
        return "C"
    raise ValueError("band is neither O nor C<ITU channel>")


def channel_of_label(value: str) -> str | None:
    """Cerberis band label "C34" -> ITU channel "34"; None in the O-band (no C channel)."""
    match = _CBAND.match(value.strip())
    return str(int(match.group(1))) if match else None


def itu_channel(value: int) -> str:
    """ITU 100 GHz grid channel number, as a tag."""
    if not 1 <= value <= 99:
        raise ValueError("not an ITU 100 GHz channel (1..99)")
    return str(value)


def itu_wavelength_nm(value: int) -> float:
    """ITU 100 GHz channel N -> its vacuum wavelength in nm."""
    return channel_nm(value)


def band_of_wavelength(picometres: int) -> str | None:
    """Wavelength -> telecom band; None outside the O and C bands the contract knows."""
    nm = picometres / 1000
    if 1260 <= nm <= 1360:
        return "O"
    if 1530 <= nm <= 1565:
        return "C"
    return None


def ratio(part: int, whole: int) -> float | None:
    """Fill of a store from its level and capacity; unknown when the capacity is 0."""
    return part / whole if whole else None


def const(value: str) -> Callable[[Any], str]:
    """A value the family always has (e.g. HWDU CV systems are C-band)."""

    def convert(_: Any) -> str:
        return value

    convert.__name__ = f"const({value})"
    return convert


# ---- table rows -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Out:
    """One output: MIB object(s) -> tag or field `name`, in `range` once converted."""

    source: str | tuple[str, ...]
    name: str
    convert: Callable[..., Any] = as_float
    tag: bool = False
    range: tuple[float, float] | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else self.source


@dataclass(frozen=True)
class Counter:
    """A monotonically increasing counter (Counter64) from which the driver derives a rate."""

    source: str
    rate: str  # field name of the derived per-second rate


@dataclass(frozen=True)
class QkdEvent:
    """What a notification means, normalised (docs/metrics.md, measurement qkd_event)."""

    event: str
    severity: str


def state(source: str, statuses: Mapping[str, LinkStatus]) -> tuple[Out, ...]:
    """A vendor state column -> `vendor_state`, ETSI `link_status` and `key_generating`."""
    return (
        Out(source, "vendor_state", str),
        Out(source, "link_status", choose(statuses)),
        Out(source, "key_generating", lambda name: statuses[name] == "active"),
    )


FRACTION = (0.0, 1.0)
TEMPERATURE = (-200.0, 200.0)
NON_NEGATIVE = (0.0, math.inf)
DB = (-100.0, 100.0)
TX_RX_ALICE_BOB = {"alice": "tx", "bob": "rx"}
KEY_BITS = 256  # Cerberis counts stored keys of 256 bits


@dataclass(frozen=True)
class SnmpProfile:
    """Everything the driver needs to know about one vendor family."""

    name: str
    mib: str
    module_tags: Mapping[str, str]
    link_tags: Mapping[str, str]
    table: str
    scalars: tuple[Out, ...]
    columns: tuple[Out, ...]
    state_source: str
    statuses: Mapping[str, LinkStatus]
    counters: tuple[Counter, ...] = ()
    notifications: Mapping[str, QkdEvent] = field(default_factory=dict)

    @property
    def column_names(self) -> tuple[str, ...]:
        """Every table column the profile reads (outputs and counters), in first-use order."""
        names = [s for out in self.columns for s in out.sources]
        names += [c.source for c in self.counters]
        return tuple(dict.fromkeys(names))

    @property
    def scalar_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for out in self.scalars for s in out.sources))


# ---- the four families ------------------------------------------------------------------------

CERB_STATUSES = {
    "off": "off",
    "initializing": "pending",
    "aligning": "pending",
    "producingKey": "active",
    "error": "failure",
    "maintenance": "off",
}

CERBERIS3 = SnmpProfile(
    name="cerberis3",
    mib="QKDTEL-IDQ-CERBERIS3-MIB",
    module_tags={"vendor": "idq", "technology": "dv"},
    link_tags={"protocol": "cow"},
    table="cerbLinkTable",
    scalars=(
        Out("cerbDetectorTemperature", "detector_temperature_c", per(100), range=TEMPERATURE),
        Out("cerbLaserTemperature", "laser_temperature_c", per(100), range=TEMPERATURE),
    ),
    columns=(
        Out("cerbLinkPeerName", "peer", text, tag=True),
        Out("cerbLinkId", "link", text, tag=True),
        Out("cerbLinkRole", "direction", choose(TX_RX_ALICE_BOB), tag=True),
        Out("cerbLinkBand", "band", band_of_label, tag=True),
        Out("cerbLinkBand", "channel", channel_of_label, tag=True),
        *state("cerbLinkState", CERB_STATUSES),
        Out("cerbLinkQber", "qber", per(10_000), range=FRACTION),  # 0.01 % -> fraction
        Out("cerbLinkVisibility", "visibility", per(10_000), range=FRACTION),
        Out("cerbLinkSecretKeyRate", "secret_key_rate_bps"),
        Out("cerbLinkRawKeyRate", "raw_key_rate_bps"),
        Out("cerbLinkKeyStoreFill", "key_store_fill_ratio", per(100), range=FRACTION),
        Out("cerbLinkKeyStoreKeys", "key_store_bits", lambda keys: keys * KEY_BITS),
    ),
    state_source="cerbLinkState",
    statuses=CERB_STATUSES,
    notifications={
        "cerbQberThresholdAlarm": QkdEvent("qber_threshold", "warning"),
        "cerbLinkDown": QkdEvent("link_down", "critical"),
        "cerbKeyStoreEmpty": QkdEvent("key_store_empty", "major"),
    },
)

TOSHIBA_STATUSES = {
    "idle": "off",
    "calibrating": "pending",
    "running": "active",
    "fault": "failure",
    "serviceMode": "off",
}

TOSHIBA = SnmpProfile(
    name="toshiba",
    mib="QKDTEL-TOSHIBA-QKD-MIB",
    module_tags={"vendor": "toshiba", "technology": "dv"},
    link_tags={"protocol": "bb84_decoy"},
    table="tqkdLinkTable",
    scalars=(
        Out("tqkdDetectorTemperature", "detector_temperature_c", per(10), range=TEMPERATURE),
        Out("tqkdEnclosureTemperature", "enclosure_temperature_c", per(10), range=TEMPERATURE),
    ),
    columns=(
        Out("tqkdLinkPeer", "peer", text, tag=True),
        Out("tqkdLinkName", "link", text, tag=True),
        Out("tqkdLinkRole", "direction", choose({"transmitter": "tx", "receiver": "rx"}), tag=True),
        Out("tqkdLinkWavelength", "band", band_of_wavelength, tag=True),
        *state("tqkdLinkStatus", TOSHIBA_STATUSES),
        Out("tqkdLinkQberPpm", "qber", per(1_000_000), range=FRACTION),  # ppm -> fraction
        Out("tqkdLinkSecretBits", "secret_key_bits_total", as_int),
        Out("tqkdLinkKeyBufferBits", "key_store_bits", as_int),
        Out(
            ("tqkdLinkKeyBufferBits", "tqkdLinkKeyBufferCapacity"),
            "key_store_fill_ratio",
            ratio,
            range=FRACTION,
        ),
        Out("tqkdLinkWavelength", "wavelength_nm", per(1000)),  # picometres -> nm
    ),
    state_source="tqkdLinkStatus",
    statuses=TOSHIBA_STATUSES,
    counters=(
        Counter("tqkdLinkSecretBits", "secret_key_rate_bps"),
        Counter("tqkdLinkSiftedBits", "sifted_key_rate_bps"),
    ),
    notifications={
        "tqkdQberAlarm": QkdEvent("qber_threshold", "warning"),
        "tqkdLinkStatusChange": QkdEvent("link_down", "critical"),
        "tqkdKeyBufferEmpty": QkdEvent("key_store_empty", "major"),
    },
)

HWDU_STATUSES = {
    "down": "off",
    "locking": "pending",
    "estimating": "pending",
    "keyGeneration": "active",
    "alarm": "failure",
}

HWDU_CV = SnmpProfile(
    name="hwdu_cv",
    mib="QKDTEL-HWDU-CVQKD-MIB",
    module_tags={"vendor": "hwdu", "technology": "cv"},
    link_tags={"protocol": "gg02"},  # Gaussian-modulated coherent states
    table="hwcvChannelTable",
    scalars=(
        Out("hwcvLaserTemperature", "laser_temperature_c", per(100), range=TEMPERATURE),
        Out("hwcvReceiverTemperature", "receiver_temperature_c", per(100), range=TEMPERATURE),
    ),
    columns=(
        Out("hwcvChannelPeer", "peer", text, tag=True),
        Out("hwcvChannelLink", "link", text, tag=True),
        Out(
            "hwcvChannelDirection",
            "direction",
            choose({"transmit": "tx", "receive": "rx"}),
            tag=True,
        ),
        Out("hwcvChannelItu", "band", const("C"), tag=True),  # tunable C-band laser
        Out("hwcvChannelItu", "channel", itu_channel, tag=True),
        Out("hwcvChannelSwitched", "switched", truth, tag=True),
        *state("hwcvChannelState", HWDU_STATUSES),
        Out("hwcvChannelExcessNoise", "excess_noise_snu", per(1_000_000), range=NON_NEGATIVE),
        Out("hwcvChannelSnr", "snr_db", per(100), range=DB),  # may be negative
        Out("hwcvChannelLoss", "channel_loss_db", per(100), range=DB),
        Out("hwcvChannelSecretKeyRate", "secret_key_rate_bps"),
        Out("hwcvChannelKeyPoolBits", "key_store_bits", as_int),
        Out(
            ("hwcvChannelKeyPoolBits", "hwcvChannelKeyPoolCapacity"),
            "key_store_fill_ratio",
            ratio,
            range=FRACTION,
        ),
        Out("hwcvChannelItu", "wavelength_nm", itu_wavelength_nm),
    ),
    state_source="hwcvChannelState",
    statuses=HWDU_STATUSES,
    notifications={
        "hwcvExcessNoiseAlarm": QkdEvent("excess_noise_threshold", "warning"),
        "hwcvChannelDown": QkdEvent("link_down", "critical"),
        "hwcvKeyPoolEmpty": QkdEvent("key_store_empty", "major"),
    },
)

# AIT has no administrative "off": an operationally down link is a failure to the operator.
AIT_STATUSES = {"down": "failure", "up": "active", "testing": "pending"}

AIT_CV = SnmpProfile(
    name="ait_cv",
    mib="QKDTEL-AIT-CVQKD-MIB",
    module_tags={"vendor": "ait", "technology": "cv"},
    link_tags={"protocol": "qpsk"},  # band not reported by the MIB: left out
    table="aitcvLinkTable",
    scalars=(Out("aitcvBoardTemperature", "board_temperature_c", text_float, range=TEMPERATURE),),
    columns=(
        Out("aitcvLinkPeer", "peer", text, tag=True),
        Out("aitcvLinkId", "link", text, tag=True),
        Out("aitcvLinkMode", "direction", choose(TX_RX_ALICE_BOB), tag=True),
        *state("aitcvLinkOperStatus", AIT_STATUSES),
        Out("aitcvLinkExcessNoise", "excess_noise_snu", text_float, range=NON_NEGATIVE),
        Out("aitcvLinkSnrDb", "snr_db", text_float, range=DB),
        Out("aitcvLinkTransmittance", "transmittance", text_float, range=FRACTION),
        Out("aitcvLinkSecretKeyRate", "secret_key_rate_bps"),
        Out("aitcvLinkKeyStoreFill", "key_store_fill_ratio", per(1000), range=FRACTION),
    ),
    state_source="aitcvLinkOperStatus",
    statuses=AIT_STATUSES,
    notifications={
        "aitcvExcessNoiseHigh": QkdEvent("excess_noise_threshold", "warning"),
        "aitcvLinkDown": QkdEvent("link_down", "critical"),
        "aitcvKeyStoreEmpty": QkdEvent("key_store_empty", "major"),
    },
)

PROFILES: dict[str, SnmpProfile] = {p.name: p for p in (CERBERIS3, TOSHIBA, HWDU_CV, AIT_CV)}
"""Profiles by the name a device's `profile:` option gives."""
