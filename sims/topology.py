"""Schema of a simulated network file (e.g. `madqci.yaml`), validated on load.

The file names sites, fibre links, QKD modules and quantum channels; the simulators, the
generated collector configuration and the tests all read it through `load_topology`, which
reports every problem at once as `path: message`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ProfileName = Literal["cerberis3", "toshiba", "hwdu_cv", "ait_cv"]
FAMILY: dict[str, Literal["dv", "cv"]] = {
    "cerberis3": "dv",
    "toshiba": "dv",
    "hwdu_cv": "cv",
    "ait_cv": "cv",
}
_ITU = {  # C-band ITU channels each family can use (None: any); the O-band has no channel
    "cerberis3": {32, 34},
    "hwdu_cv": {34, 37, 38},
    "ait_cv": None,
}
MAX_ROWS = 64  # the MIBs' index range is 1..64

DEFAULT_TOPOLOGY = "madqci.yaml"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(_Model):
    """A node of the network."""

    name: str = Field(
        pattern=r"^[ -~]+$", description="printable ASCII: devices report it as a DisplayString"
    )
    domain: str = Field(min_length=1, description="operator domain, e.g. RM or TID")
    invented: bool = Field(False, description="the sources do not name this site")


class Link(_Model):
    """A fibre link (one fibre pair) between two sites."""

    id: str = Field(pattern=r"^[A-Za-z0-9]+$")
    a: str
    b: str
    length_km: float = Field(gt=0)
    loss_db: float = Field(ge=0, description="C-band loss")
    published: bool = Field(False, description="length and loss come from the sources")


class Module(_Model):
    """A QKD module: one SNMP agent."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    site: str
    profile: ProfileName


class Channel(_Model):
    """A quantum channel in one direction, Alice -> Bob, over one link or a switched path."""

    link: str = Field(pattern=r"^[A-Za-z0-9]+(\+[A-Za-z0-9]+)*$", description='e.g. "4", "3+4"')
    alice: str
    bob: str
    band: Literal["O", "C"]
    itu: int | None = Field(None, ge=1, le=100, description="ITU 100 GHz channel (C-band)")
    switched: bool = Field(False, description="the path crosses optical switches")
    skr_kbps: float = Field(gt=0, description="published long-run mean secret key rate")
    qber_percent: float | None = Field(None, gt=0, lt=50, description="DV only")
    excess_noise_msnu: float | None = Field(None, gt=0, description="CV only")
    loss_db: float | None = Field(None, ge=0, description="overrides the loss from the links")

    @property
    def link_ids(self) -> list[str]:
        return self.link.split("+")


class Behaviour(_Model):
    """Timing shared by every channel."""

    maintenance_every_h: float = Field(168.0, gt=0)
    maintenance_duration_min: float = Field(120.0, gt=0)
    restart_min: float = Field(5.0, ge=0)
    switch_loss_db: float = Field(0.5, ge=0, description="per optical switch on a switched path")
    o_band_loss_factor: float = Field(1.5, ge=1, description="O-band loss / C-band loss")

    @model_validator(mode="after")
    def _fits(self) -> Behaviour:
        if (self.maintenance_duration_min + self.restart_min) / 60 >= self.maintenance_every_h:
            raise ValueError("maintenance plus restart must be shorter than its period")
        return self


@dataclass(frozen=True)
class Row:
    """One row of a module's link table: a channel seen from one end."""

    channel: Channel
    role: Literal["alice", "bob"]
    peer: Site


class Topology(_Model):
    """A whole simulated network."""

    name: str
    description: str = ""
    sites: list[Site]
    links: list[Link]
    modules: list[Module]
    channels: list[Channel]
    behaviour: Behaviour = Field(default_factory=Behaviour)

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        problems = list(self._problems())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _problems(self) -> Iterator[str]:
        for what, names in (
            ("site", [s.name for s in self.sites]),
            ("link", [link.id for link in self.links]),
            ("module", [m.name for m in self.modules]),
        ):
            for name in sorted({n for n in names if names.count(n) > 1}):
                yield f"{what} {name!r} is defined twice"
        sites = {s.name for s in self.sites}
        for i, link in enumerate(self.links):
            for end in (link.a, link.b):
                if end not in sites:
                    yield f"links[{i}] ({link.id}): no site named {end!r}"
            if link.a == link.b:
                yield f"links[{i}] ({link.id}): both ends are {link.a!r}"
        for i, module in enumerate(self.modules):
            if module.site not in sites:
                yield f"modules[{i}] ({module.name}): no site named {module.site!r}"
        for i, channel in enumerate(self.channels):
            for problem in self._channel_problems(channel):
                yield (
                    f"channels[{i}] (link {channel.link}, {channel.alice} -> {channel.bob}): "
                    + problem
                )
        rows: dict[str, int] = {}
        for channel in self.channels:
            for name in (channel.alice, channel.bob):
                rows[name] = rows.get(name, 0) + 1
        for module in self.modules:
            if not rows.get(module.name):
                yield f"module {module.name!r} serves no channel"
            elif rows[module.name] > MAX_ROWS:
                yield f"module {module.name!r} has more than {MAX_ROWS} channels"

    def _channel_problems(self, channel: Channel) -> Iterator[str]:
        modules = {m.name: m for m in self.modules}
        alice, bob = modules.get(channel.alice), modules.get(channel.bob)
        for role, module, name in (("alice", alice, channel.alice), ("bob", bob, channel.bob)):
            if module is None:
                yield f"{role}: no module named {name!r}"
        if alice is None or bob is None:
            return
        if alice.profile != bob.profile:
            yield f"alice is {alice.profile} but bob is {bob.profile}: both ends need one family"
        if alice.site == bob.site:
            yield f"alice and bob are both at {alice.site!r}"
        links = {link.id: link for link in self.links}
        missing = [i for i in channel.link_ids if i not in links]
        if missing:
            yield f"no link {', '.join(missing)}"
        elif not self._path_joins(channel, alice.site, bob.site):
            yield f"links {channel.link} do not run from {alice.site} to {bob.site}"
        if len(channel.link_ids) > 1 and not channel.switched:
            yield "a path over several links crosses optical switches: set switched: true"
        profile = alice.profile
        if FAMILY[profile] == "dv":
            if channel.qber_percent is None:
                yield f"{profile} is discrete-variable: give qber_percent"
            if channel.excess_noise_msnu is not None:
                yield "excess_noise_msnu is for CV systems (DV systems report QBER)"
        elif channel.qber_percent is not None:
            yield f"{profile} is continuous-variable: no qber_percent (it reports excess noise)"
        if channel.band == "O":
            if channel.itu is not None:
                yield "the O-band has no ITU channel: drop itu"
            if profile in ("hwdu_cv", "ait_cv"):
                yield f"{profile} works in the C-band"
        else:
            allowed = _ITU.get(profile, set())
            if channel.itu is None:
                yield "a C-band channel needs its ITU channel number (itu)"
            elif allowed is not None and channel.itu not in allowed:
                wanted = ", ".join(map(str, sorted(allowed))) or "none (O-band only)"
                yield f"{profile} cannot use ITU channel {channel.itu} (allowed: {wanted})"

    def _path_joins(self, channel: Channel, start: str, end: str) -> bool:
        """Whether the channel's links, in order, run from one end module's site to the other."""
        links = {link.id: link for link in self.links}
        for first, last in ((start, end), (end, start)):
            here = first
            for link_id in channel.link_ids:
                link = links[link_id]
                if here not in (link.a, link.b):
                    break
                here = link.b if here == link.a else link.a
            else:
                if here == last:
                    return True
        return False

    # -- queries ---------------------------------------------------------------------------

    def site(self, name: str) -> Site:
        return next(s for s in self.sites if s.name == name)

    def module(self, name: str) -> Module:
        return next(m for m in self.modules if m.name == name)

    def rows(self, module: str) -> list[Row]:
        """The link-table rows of `module`, in file order (row index = position + 1)."""
        out = []
        for channel in self.channels:
            for role, own, other in (
                ("alice", channel.alice, channel.bob),
                ("bob", channel.bob, channel.alice),
            ):
                if own == module:
                    out.append(Row(channel, role, self.site(self.module(other).site)))
        return out

    def channel_loss_db(self, channel: Channel) -> float:
        """Loss of the channel's path in its band: fibre links, plus switches when switched."""
        if channel.loss_db is not None:
            return channel.loss_db
        links = {link.id: link for link in self.links}
        loss = sum(links[i].loss_db for i in channel.link_ids)
        if channel.band == "O":
            loss *= self.behaviour.o_band_loss_factor
        if channel.switched:
            loss += self.behaviour.switch_loss_db * (len(channel.link_ids) + 1)
        return loss


class TopologyError(ValueError):
    """The topology file is invalid; `problems` lists every error."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid topology\n  " + "\n  ".join(problems))


def _format(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        message = err["msg"].removeprefix("Value error, ")
        for line in message.splitlines():
            out.append(f"{loc}: {line}" if loc else line)
    return out


def parse_topology(text: str, source: str = "<topology>") -> Topology:
    """Validate a topology document; raise `TopologyError` listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopologyError(source, [f"not valid YAML: {exc}"]) from None
    try:
        return Topology.model_validate(raw)
    except ValidationError as exc:
        raise TopologyError(source, _format(exc)) from None


def load_topology(path: str | Path | None = None) -> Topology:
    """Read and validate a topology file; None means the bundled MadQCI twin."""
    if path is None:
        text = resources.files("qkdtel.sims").joinpath(DEFAULT_TOPOLOGY).read_text("utf-8")
        return parse_topology(text, DEFAULT_TOPOLOGY)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    return parse_topology(text, str(path))
