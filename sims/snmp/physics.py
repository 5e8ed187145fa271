"""Behaviour of simulated QKD links and modules over simulated time, independent of SNMP.

A `ChannelModel` is one quantum channel in one direction (Alice -> Bob). Both end modules report
the same model, as the two ends of a real link agree on key rate and error rate. What it
reproduces (docs: /work/shared/DOMAIN.md):

- long-run means equal to the published per-link figures: the key rate *including* downtime is
  the table's SKR, and QBER / excess noise while producing are the table's values; every
  disturbance below has a known mean that is compensated exactly;
- noise (fast wiggle), drifts (slow wiggle) and steps (re-alignments);
- a daily disturbance: for Cerberis 3 the detector-temperature excursion of the Bob module,
  which lowers the key rate and raises the QBER; for CV systems bursts of excess noise;
- maintenance windows (state maintenance/serviceMode, key rate 0) followed by a restart;
- key rate falling with channel loss (`extra_loss_db` knob: DV ~ transmittance, CV ~ its square),
  and the CV excess noise referred to the input rising with it;
  the twin (sims/twin/model.py) adds its path's loss through the `path_loss` hook: a path whose
  switches do not make it, or a loss past `BREAK_LOSS_DB`, leaves the receiver without signal
  (state starting, no key, the CV receiver's no-signal SNR);
- a key store filled by the key rate and drained by a fluctuating consumer (empty after a long
  outage), and running totals of secret and sifted bits (the Toshiba counters).
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from qkdtel.sims.snmp.noise import Excursion, Steps, Wiggle, stream_id, uniform

Family = Literal["dv", "cv"]

NO_SIGNAL_SNR_DB = -30.0
"""What a CV receiver reports with no quantum signal (maintenance, restart)."""
BREAK_LOSS_DB = 20.0
"""Extra loss at which a channel counts as broken: no signal, no key."""


def _no_path_loss() -> float | None:
    return 0.0


class Phase(enum.Enum):
    """What a channel is doing; each vendor profile names these states its own way."""

    PRODUCING = "producing"
    MAINTENANCE = "maintenance"
    STARTING = "starting"


@dataclass(frozen=True)
class Schedule:
    """One maintenance window per `period`, at a seeded offset, then a restart.

    Exactly one window per period makes the availability exact over whole periods, which is
    what lets the key rate be calibrated to the published long-run mean.
    """

    seed: int
    stream: int
    period: float
    duration: float
    restart: float

    @property
    def availability(self) -> float:
        """Fraction of time the channel produces key."""
        return 1.0 - (self.duration + self.restart) / self.period

    def at(self, t: float) -> tuple[Phase, float]:
        """Phase at `t` and, while starting, the progress of the restart in [0, 1)."""
        k = math.floor(t / self.period)
        slack = self.period - self.duration - self.restart
        start = k * self.period + uniform(self.seed, self.stream, k) * slack
        if start <= t < start + self.duration:
            return Phase.MAINTENANCE, 0.0
        restart_at = start + self.duration
        if restart_at <= t < restart_at + self.restart:
            return Phase.STARTING, (t - restart_at) / self.restart
        return Phase.PRODUCING, 0.0


@dataclass(frozen=True)
class ChannelParams:
    """What a channel is meant to look like, from the topology file."""

    name: str
    family: Family
    skr_bps: float
    loss_db: float
    qber: float | None = None
    excess_noise_snu: float | None = None
    disturbance_sensitivity: float = 0.1
    """Relative key-rate drop per unit of disturbance; strong for Cerberis 3 (temperature)."""
    qber_per_disturbance: float = 0.002
    """QBER rise (fraction) per unit of disturbance (DV)."""
    snr_at_zero_loss_db: float = 3.0
    """CV receiver SNR extrapolated to a lossless channel: 23 dB loss gives about -20 dB."""


@dataclass(frozen=True)
class Reading:
    """Everything a module can report about a channel at one simulated instant."""

    t: float
    phase: Phase
    progress: float
    secret_key_rate_bps: float
    raw_key_rate_bps: float
    sifted_key_rate_bps: float
    qber: float
    visibility: float
    excess_noise_snu: float
    snr_db: float
    loss_db: float
    transmittance: float
    store_bits: float
    store_capacity_bits: int
    secret_bits_total: int
    sifted_bits_total: int
    store_empty_count: int

    @property
    def producing(self) -> bool:
        return self.phase is Phase.PRODUCING


@dataclass(frozen=True)
class Behaviour:
    """Network-wide timing of maintenance, from the topology file."""

    maintenance_period_s: float = 7 * 86_400.0
    maintenance_duration_s: float = 2 * 3_600.0
    restart_s: float = 300.0


def binary_entropy(p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def _store_capacity(skr_bps: float) -> int:
    """A power of two holding 1.5-3 h of key, within Gauge32: a 2 h outage may empty it."""
    return int(min(2**31, max(2**20, 2 ** math.ceil(math.log2(skr_bps * 5400.0)))))


@dataclass
class _Totals:
    t: float
    store_bits: float
    secret_bits: float
    sifted_bits: float
    empties: int = 0
    armed: bool = True  # an empty store counts again only after refilling to 10 %


class ChannelModel:
    """One quantum channel; `reading(t)` is safe from any thread and `t` must not go back."""

    MAX_STEP_S = 120.0
    MAX_STEPS_PER_ADVANCE = 2000

    def __init__(
        self, params: ChannelParams, seed: int, behaviour: Behaviour, disturbance: Excursion
    ):
        self.params = params
        self.disturbance = disturbance
        self.extra_loss_db = 0.0
        """Knob: loss added to the channel (a bend, a bad splice); lowers the key rate."""
        self.path_loss: Callable[[], float | None] = _no_path_loss
        """Hook: the extra loss of the channel's path now (the twin's faults and switches);
        None when the path is not lit."""
        name = params.name
        self.schedule = Schedule(
            seed,
            stream_id(name, "maintenance"),
            behaviour.maintenance_period_s,
            behaviour.maintenance_duration_s,
            behaviour.restart_s,
        )
        self._fast = Wiggle(seed, stream_id(name, "fast"), 20.0)
        self._slow = Wiggle(seed, stream_id(name, "slow"), 6 * 3_600.0)
        self._steps = Steps(seed, stream_id(name, "steps"), 8 * 3_600.0)
        self._quality = Wiggle(seed, stream_id(name, "quality"), 45.0)
        self._loss = Wiggle(seed, stream_id(name, "loss"), 3 * 3_600.0)
        self._demand = Wiggle(seed, stream_id(name, "demand"), 3_600.0)
        self.capacity_bits = _store_capacity(params.skr_bps)
        uptime = (1.0 + 4.0 * uniform(seed, stream_id(name, "uptime"), 0)) * 86_400.0
        secret = params.skr_bps * uptime
        self._totals = _Totals(0.0, self.capacity_bits / 2, secret, secret * 2.5)
        self._lock = threading.Lock()
        self._last: Reading | None = None

    # -- instantaneous values (pure functions of t) -----------------------------------------

    def _extra(self) -> tuple[float, bool]:
        """Extra loss now (knob plus path) and whether the receiver is left without signal."""
        path = self.path_loss()
        extra = self.extra_loss_db + (path or 0.0)
        return extra, path is None or extra >= BREAK_LOSS_DB

    def loss_db_at(self, t: float) -> float:
        return self.params.loss_db + 0.05 * self._loss(t) + self._extra()[0]

    def phase_at(self, t: float) -> tuple[Phase, float]:
        """The schedule's phase, except that a dark or broken path keeps the channel starting
        (searching for a signal) when it would produce."""
        phase, progress = self.schedule.at(t)
        if phase is Phase.PRODUCING and self._extra()[1]:
            return Phase.STARTING, 0.0
        return phase, progress

    def _disturbance(self, t: float) -> float:
        """Zero-mean disturbance: the excursion minus its long-run mean."""
        return self.disturbance(t) - self.disturbance.mean

    def _key_rate(self, t: float) -> float:
        p = self.params
        level = p.skr_bps / self.schedule.availability
        noise = (1 + 0.08 * self._fast(t)) * (1 + 0.10 * self._slow(t) + 0.05 * self._steps(t))
        disturbance = 1 - p.disturbance_sensitivity * self._disturbance(t)
        loss_power = 1.0 if p.family == "dv" else 2.0
        loss = 10 ** (-loss_power * (self.loss_db_at(t) - p.loss_db) / 10)
        return max(0.0, level * noise * disturbance * loss)

    def _qber(self, t: float) -> float:
        p = self.params
        if p.qber is None:
            return 0.0
        value = p.qber * (1 + 0.06 * self._quality(t))
        value += p.qber_per_disturbance * self._disturbance(t) + 0.002 * self._extra()[0]
        return min(0.5, max(0.0, value))

    def _excess_noise(self, t: float) -> float:
        """Excess noise referred to the channel input, as CV systems report it. About half of it
        is the receiver's own (electronic and phase noise), which referral divides by the
        channel's transmittance: added loss raises it by (1 + 10^(dB/10)) / 2."""
        xi = self.params.excess_noise_snu
        if xi is None:
            return 0.0
        referred = (1 + 10 ** (self._extra()[0] / 10)) / 2
        return max(
            0.0, referred * xi * (1 + 0.1 * self._quality(t)) + 1.1 * xi * self._disturbance(t)
        )

    def _sifted_rate(self, skr: float, qber: float) -> float:
        """Sifted rate from the secret rate: secret fraction 1 - f h(Q) - h(Q), f = 1.2."""
        fraction = max(0.05, 1.0 - 2.2 * binary_entropy(qber))
        return skr / fraction

    def _demand_at(self, t: float) -> float:
        """Key consumption (encryptors): about 85 % of the mean production, +/- 30 % over hours."""
        return self.params.skr_bps * (0.85 + 0.3 * self._demand(t))

    def key_rate_at(self, t: float) -> float:
        """Secret key rate at `t`, 0 outside production: a function of `t` and the path's
        present state, for whoever consumes the key (the KME simulator's stocks) without
        advancing this model's own store and counters, from any thread and in any order."""
        phase, _ = self.phase_at(t)
        return self._key_rate(t) if phase is Phase.PRODUCING else 0.0

    # -- stateful totals ------------------------------------------------------------------

    def _advance(self, t: float) -> None:
        totals = self._totals
        if t < totals.t:
            raise ValueError(f"{self.params.name}: simulated time went back to {t}")
        span = t - totals.t
        steps = max(1, min(self.MAX_STEPS_PER_ADVANCE, math.ceil(span / self.MAX_STEP_S)))
        h = span / steps
        for i in range(steps if span > 0 else 0):
            mid = totals.t + (i + 0.5) * h
            phase, _ = self.phase_at(mid)
            skr = self._key_rate(mid) if phase is Phase.PRODUCING else 0.0
            totals.store_bits = min(
                float(self.capacity_bits),
                max(0.0, totals.store_bits + (skr - self._demand_at(mid)) * h),
            )
            if totals.store_bits == 0.0 and totals.armed:
                totals.empties += 1
                totals.armed = False
            elif totals.store_bits > 0.1 * self.capacity_bits:
                totals.armed = True
            totals.secret_bits += skr * h
            if skr:
                totals.sifted_bits += self._sifted_rate(skr, self._qber(mid)) * h
        totals.t = t

    def reading(self, t: float) -> Reading:
        """The channel as seen at simulated time `t` (advancing the key store and counters)."""
        with self._lock:
            if self._last is not None and self._last.t == t:
                return self._last  # both end modules, and every column of a request
            self._advance(t)
            totals = self._totals
            phase, progress = self.phase_at(t)
            loss = self.loss_db_at(t)
            producing = phase is Phase.PRODUCING
            skr = self._key_rate(t) if producing else 0.0
            qber = self._qber(t) if producing else 0.0
            sifted = self._sifted_rate(skr, qber) if producing else 0.0
            cv = self.params.family == "cv"
            self._last = Reading(
                t=t,
                phase=phase,
                progress=progress,
                secret_key_rate_bps=skr,
                raw_key_rate_bps=sifted * 1.9 if producing else 0.0,
                sifted_key_rate_bps=sifted,
                qber=qber,
                visibility=min(1.0, max(0.0, 0.995 - 1.6 * qber)) if producing else 0.0,
                excess_noise_snu=self._excess_noise(t) if producing and cv else 0.0,
                snr_db=self.params.snr_at_zero_loss_db - loss + 0.2 * self._fast(t)
                if producing
                else NO_SIGNAL_SNR_DB,
                loss_db=loss,
                transmittance=10 ** (-loss / 10),
                store_bits=totals.store_bits,
                store_capacity_bits=self.capacity_bits,
                secret_bits_total=int(totals.secret_bits),
                sifted_bits_total=int(totals.sifted_bits),
                store_empty_count=totals.empties,
            )
            return self._last


@dataclass
class ModuleModel:
    """A QKD module's own condition: its thermal excursion drives its temperatures.

    For a Cerberis 3 Bob the same excursion is the disturbance of its channels (detector
    temperature swings are what made its key rates fluctuate).
    """

    name: str
    seed: int
    thermal: Excursion = field(init=False)

    def __post_init__(self) -> None:
        self.thermal = Excursion(self.seed, stream_id(self.name, "thermal"))
        self._drift = Wiggle(self.seed, stream_id(self.name, "temperature"), 900.0)

    @property
    def serial(self) -> str:
        """A stable serial number derived from the module's name."""
        return f"{stream_id(self.name, 'serial') % 10**8:08d}"

    def temperature(self, t: float, base: float, swing: float) -> float:
        """`base` degrees plus `swing` per unit of the thermal excursion, plus sensor noise."""
        return base + swing * self.thermal(t) + 0.05 * abs(swing) * self._drift(t)
