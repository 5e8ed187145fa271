"""What each vendor family's agent serves: MIB object name -> value, plus its notifications.

Read a profile like the device's datasheet: every entry names a MIB object of
docs/design/qkd-mibs.md and says how the simulated quantity is shown in that object's units.
Enumerations are given by label ("producingKey") and converted by the MIB's own syntax; no OID
is written here, the agent resolves every name through the compiled MIBs.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from qkdtel.sims.snmp.physics import ModuleModel, Phase, Reading

Value = int | str


@dataclass(frozen=True)
class RowFacts:
    """The static facts of one row of a module's link table."""

    index: int
    peer: str
    link: str
    role: Literal["alice", "bob"]
    band: Literal["O", "C"]
    itu: int | None
    switched: bool


class TrapCondition(enum.Enum):
    """Conditions that make a module send a notification."""

    QUALITY_ALARM = "quality_alarm"  # QBER (DV) or excess noise (CV) crossed its threshold
    LINK_DOWN = "link_down"  # the link stopped producing key (maintenance)
    KEY_STORE_EMPTY = "key_store_empty"


ScalarFn = Callable[[ModuleModel, float], Value]
ColumnFn = Callable[[RowFacts, Reading], Value]


@dataclass(frozen=True)
class AgentProfile:
    """One vendor family."""

    name: str
    module: str
    identity: str
    description: str
    index: str
    scalars: Mapping[str, ScalarFn]
    columns: Mapping[str, ColumnFn]
    notifications: Mapping[TrapCondition, str]
    alarm_value: Callable[[Reading], float]
    alarm_threshold: float
    # How the family behaves (see physics.ChannelParams)
    disturbance_sensitivity: float
    qber_per_disturbance: float = 0.0
    excess_noise_snu: float | None = None
    disturbance_from_bob_thermal: bool = False
    burst_sharpness: int = 2

    def alarm_active(self, reading: Reading) -> bool:
        return reading.producing and self.alarm_value(reading) >= self.alarm_threshold

    def alarm_cleared(self, reading: Reading) -> bool:
        """Hysteresis: a new alarm needs the value to fall 10 % under the threshold first."""
        return not reading.producing or self.alarm_value(reading) < 0.9 * self.alarm_threshold


def _state(producing: str, down: str, early: str, late: str) -> Callable[[Reading], str]:
    def state(reading: Reading) -> str:
        if reading.phase is Phase.PRODUCING:
            return producing
        if reading.phase is Phase.MAINTENANCE:
            return down
        return early if reading.progress < 0.5 else late

    return state


def _fill(scale: int) -> ColumnFn:
    return lambda _row, r: round(scale * r.store_bits / r.store_capacity_bits)


def _temp(base: float, swing: float, scale: int) -> ScalarFn:
    return lambda module, t: round(scale * module.temperature(t, base, swing))


def _serial(prefix: str) -> ScalarFn:
    return lambda module, _t: f"{prefix}-{module.serial}"


_cerb_state = _state("producingKey", "maintenance", "initializing", "aligning")
_tqkd_state = _state("running", "serviceMode", "calibrating", "calibrating")
_hwcv_state = _state("keyGeneration", "down", "locking", "estimating")
_aitcv_state = _state("up", "down", "testing", "testing")

CERBERIS3 = AgentProfile(
    name="cerberis3",
    module="QKDTEL-IDQ-CERBERIS3-MIB",
    identity="cerbMIB",
    description="ID Quantique Cerberis 3 (DV, COW)",
    index="cerbLinkIndex",
    scalars={
        "cerbSerialNumber": _serial("C3"),
        "cerbFirmwareVersion": lambda _m, _t: "3.4.2-sim",
        "cerbDetectorTemperature": _temp(-50.0, 2.5, 100),
        "cerbLaserTemperature": _temp(25.0, 0.8, 100),
    },
    columns={
        "cerbLinkPeerName": lambda row, _r: row.peer,
        "cerbLinkId": lambda row, _r: row.link,
        "cerbLinkRole": lambda row, _r: row.role,
        "cerbLinkBand": lambda row, _r: "O" if row.band == "O" else f"C{row.itu}",
        "cerbLinkState": lambda _row, r: _cerb_state(r),
        "cerbLinkQber": lambda _row, r: round(r.qber * 10_000),
        "cerbLinkVisibility": lambda _row, r: round(r.visibility * 10_000),
        "cerbLinkSecretKeyRate": lambda _row, r: round(r.secret_key_rate_bps),
        "cerbLinkRawKeyRate": lambda _row, r: round(r.raw_key_rate_bps),
        "cerbLinkKeyStoreFill": _fill(100),
        "cerbLinkKeyStoreKeys": lambda _row, r: int(r.store_bits // 256),
    },
    notifications={
        TrapCondition.QUALITY_ALARM: "cerbQberThresholdAlarm",
        TrapCondition.LINK_DOWN: "cerbLinkDown",
        TrapCondition.KEY_STORE_EMPTY: "cerbKeyStoreEmpty",
    },
    alarm_value=lambda r: r.qber,
    alarm_threshold=0.05,
    disturbance_sensitivity=0.45,
    qber_per_disturbance=0.012,
    disturbance_from_bob_thermal=True,
)

TOSHIBA = AgentProfile(
    name="toshiba",
    module="QKDTEL-TOSHIBA-QKD-MIB",
    identity="tqkdMIB",
    description="Toshiba QKD (DV, T12 BB84 decoy, 1 GHz)",
    index="tqkdLinkIndex",
    scalars={
        "tqkdSerial": _serial("TQ"),
        "tqkdDetectorTemperature": _temp(-30.0, 0.6, 10),
        "tqkdEnclosureTemperature": _temp(24.0, 2.0, 10),
    },
    columns={
        "tqkdLinkPeer": lambda row, _r: row.peer,
        "tqkdLinkName": lambda row, _r: row.link,
        "tqkdLinkRole": lambda row, _r: "transmitter" if row.role == "alice" else "receiver",
        "tqkdLinkStatus": lambda _row, r: _tqkd_state(r),
        "tqkdLinkQberPpm": lambda _row, r: round(r.qber * 1_000_000),
        "tqkdLinkSecretBits": lambda _row, r: r.secret_bits_total,
        "tqkdLinkSiftedBits": lambda _row, r: r.sifted_bits_total,
        "tqkdLinkKeyBufferBits": lambda _row, r: int(r.store_bits),
        "tqkdLinkKeyBufferCapacity": lambda _row, r: r.store_capacity_bits,
        "tqkdLinkWavelength": lambda _row, _r: 1_310_000,
    },
    notifications={
        TrapCondition.QUALITY_ALARM: "tqkdQberAlarm",
        TrapCondition.LINK_DOWN: "tqkdLinkStatusChange",
        TrapCondition.KEY_STORE_EMPTY: "tqkdKeyBufferEmpty",
    },
    alarm_value=lambda r: r.qber,
    alarm_threshold=0.05,
    disturbance_sensitivity=0.08,
    qber_per_disturbance=0.002,
)

HWDU_CV = AgentProfile(
    name="hwdu_cv",
    module="QKDTEL-HWDU-CVQKD-MIB",
    identity="hwcvMIB",
    description="HWDU CV-QKD prototype (GG02, 12.5 MBd, tunable C-band)",
    index="hwcvChannelIndex",
    scalars={
        "hwcvLaserTemperature": _temp(25.0, 0.3, 100),
        "hwcvReceiverTemperature": _temp(31.5, 0.6, 100),
    },
    columns={
        "hwcvChannelPeer": lambda row, _r: row.peer,
        "hwcvChannelLink": lambda row, _r: row.link,
        "hwcvChannelDirection": lambda row, _r: "transmit" if row.role == "alice" else "receive",
        "hwcvChannelItu": lambda row, _r: row.itu or 0,
        "hwcvChannelSwitched": lambda row, _r: "true" if row.switched else "false",
        "hwcvChannelState": lambda _row, r: _hwcv_state(r),
        "hwcvChannelExcessNoise": lambda _row, r: round(r.excess_noise_snu * 1_000_000),
        "hwcvChannelSnr": lambda _row, r: round(r.snr_db * 100),
        "hwcvChannelLoss": lambda _row, r: round(r.loss_db * 100),
        "hwcvChannelSecretKeyRate": lambda _row, r: round(r.secret_key_rate_bps),
        "hwcvChannelKeyPoolBits": lambda _row, r: int(r.store_bits),
        "hwcvChannelKeyPoolCapacity": lambda _row, r: r.store_capacity_bits,
    },
    notifications={
        TrapCondition.QUALITY_ALARM: "hwcvExcessNoiseAlarm",
        TrapCondition.LINK_DOWN: "hwcvChannelDown",
        TrapCondition.KEY_STORE_EMPTY: "hwcvKeyPoolEmpty",
    },
    alarm_value=lambda r: r.excess_noise_snu,
    alarm_threshold=0.015,
    disturbance_sensitivity=0.3,
    excess_noise_snu=0.006,
    burst_sharpness=8,
)

AIT_CV = AgentProfile(
    name="ait_cv",
    module="QKDTEL-AIT-CVQKD-MIB",
    identity="aitcvMIB",
    description="AIT CV-QKD research system (QPSK)",
    index="aitcvLinkIndex",
    scalars={
        "aitcvBoardTemperature": lambda module, t: f"{module.temperature(t, 41.0, 1.5):.2f}",
    },
    columns={
        "aitcvLinkPeer": lambda row, _r: row.peer,
        "aitcvLinkId": lambda row, _r: row.link,
        "aitcvLinkMode": lambda row, _r: row.role,
        "aitcvLinkOperStatus": lambda _row, r: _aitcv_state(r),
        "aitcvLinkExcessNoise": lambda _row, r: f"{r.excess_noise_snu:.4f}",
        "aitcvLinkSnrDb": lambda _row, r: f"{r.snr_db:.2f}",
        "aitcvLinkTransmittance": lambda _row, r: f"{r.transmittance:.4f}",
        "aitcvLinkSecretKeyRate": lambda _row, r: round(r.secret_key_rate_bps),
        "aitcvLinkKeyStoreFill": _fill(1000),
    },
    notifications={
        TrapCondition.QUALITY_ALARM: "aitcvExcessNoiseHigh",
        TrapCondition.LINK_DOWN: "aitcvLinkDown",
        TrapCondition.KEY_STORE_EMPTY: "aitcvKeyStoreEmpty",
    },
    alarm_value=lambda r: r.excess_noise_snu,
    alarm_threshold=0.028,
    disturbance_sensitivity=0.3,
    excess_noise_snu=0.012,
    burst_sharpness=8,
)

PROFILES: dict[str, AgentProfile] = {p.name: p for p in (CERBERIS3, TOSHIBA, HWDU_CV, AIT_CV)}
