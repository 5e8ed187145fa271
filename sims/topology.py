"""Schema of a simulated network file (e.g. `madqci.yaml`), validated on load.

The file names sites, fibre links, QKD modules and quantum channels; the simulators, the
generated collector configuration and the tests all read it through `load_topology`, which
reports every problem at once as `path: message`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


PortName = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SwitchPort(_Model):
    """A fibre port of an optical switch: the fibre of a link, or a QKD module's line port."""

    name: str = PortName
    link: str | None = Field(None, description="the link whose fibre this port terminates")
    module: str | None = Field(None, description="the QKD module whose line port this is")

    @model_validator(mode="after")
    def _one_end(self) -> SwitchPort:
        if (self.link is None) == (self.module is None):
            raise ValueError("a port joins either a link or a module: give exactly one")
        return self


class Switch(_Model):
    """An optical fibre switch at a site: quantum paths cross it when its map joins them."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    site: str
    insertion_loss_db: float | None = Field(
        None, ge=0, description="default: behaviour.switch_loss_db (the published baseline)"
    )
    ports: list[SwitchPort] = Field(min_length=2)
    cross_connects: dict[str, str] = Field(
        default_factory=dict, description="initial map: port joined to port (both ways)"
    )
    invented: bool = Field(True, description="the sources do not describe the switches")

    def port_for(self, kind: str, name: str) -> SwitchPort | None:
        """The port terminating link `name` (kind "link") or module `name` (kind "module")."""
        return next((p for p in self.ports if getattr(p, kind) == name), None)


class KeyManager(_Model):
    """A node's key manager (KME): key for its SAE toward each peer site's KME."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    site: str
    sae_id: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="the node's SAE (its apps)")
    peers: list[str] = Field(description="sites whose KMEs share key with this one")
    invented: bool = True


class Encryptor(_Model):
    """A link encryptor pair between two sites, drawing key from a key manager."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    layer: Literal["L1", "L2"]
    a: str
    b: str
    key_manager: str = Field(description="the KME (at a or b) it draws keys from")
    refresh_s: float = Field(gt=0, description="key refresh period")
    invented: bool = True


class Qrng(_Model):
    """The network's quantum random number generator."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    site: str
    invented: bool = True


class Instrument(_Model):
    """An optical instrument watching a link from one of its ends."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: Literal["osa", "otdr", "powermeter"]
    site: str
    link: str
    invented: bool = True


@dataclass(frozen=True)
class Join:
    """A cross-connect a channel's path needs: `switch` sending the light entering at port `a`
    out at port `b`."""

    switch: str
    a: str
    b: str


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
    switches: list[Switch] = Field(default_factory=list)
    key_managers: list[KeyManager] = Field(default_factory=list)
    encryptors: list[Encryptor] = Field(default_factory=list)
    qrng: Qrng | None = None
    instruments: list[Instrument] = Field(default_factory=list)

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
            ("switch", [s.name for s in self.switches]),
            ("key manager", [k.name for k in self.key_managers]),
            ("encryptor", [e.name for e in self.encryptors]),
            ("instrument", [i.name for i in self.instruments]),
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
        yield from self._switch_problems()
        yield from self._key_problems()
        yield from self._instrument_problems()

    def _placed_once(
        self, items: Sequence[Switch | KeyManager], section: str, kind: str
    ) -> Iterator[str]:
        """Each of `items` (the file's `section`, of `kind`s) at a known site, one a site."""
        sites = {s.name for s in self.sites}
        first: dict[str, str] = {}
        for i, item in enumerate(items):
            where = f"{section}[{i}] ({item.name}).site"
            if item.site not in sites:
                yield f"{where}: no site named {item.site!r}"
            elif item.site in first:
                yield f"{where}: {item.site} already has {kind} {first[item.site]}"
            first.setdefault(item.site, item.name)

    def _switch_problems(self) -> Iterator[str]:
        links = {link.id: link for link in self.links}
        modules = {m.name: m for m in self.modules}
        yield from self._placed_once(self.switches, "switches", "switch")
        for i, switch in enumerate(self.switches):
            where = f"switches[{i}] ({switch.name})"
            names = [p.name for p in switch.ports]
            for j, port in enumerate(switch.ports):
                here = f"{where}.ports[{j}] ({port.name})"
                if names.count(port.name) > 1:
                    yield f"{here}: port name used twice"
                if port.link is not None:
                    link = links.get(port.link)
                    if link is None:
                        yield f"{here}.link: no link {port.link!r}"
                    elif switch.site not in (link.a, link.b):
                        yield f"{here}.link: link {port.link} does not end at {switch.site}"
                elif port.module not in modules:
                    yield f"{here}.module: no module named {port.module!r}"
                elif modules[port.module].site != switch.site:
                    yield f"{here}.module: {port.module} is not at {switch.site}"
            used: list[str] = []
            for a, b in switch.cross_connects.items():
                for end in (a, b):
                    if end not in names:
                        yield f"{where}.cross_connects.{a}: no port named {end!r}"
                    elif end in used:
                        yield f"{where}.cross_connects.{a}: port {end!r} is joined twice"
                    used.append(end)
        for i, channel in enumerate(self.channels):
            if not (self.switches and channel.switched) or self._channel_problems_exist(channel):
                continue
            for site, here, there in self._steps(channel)[1:-1]:
                switch = self.switch_at(site)
                if switch is None or None in (
                    switch.port_for(*here),
                    switch.port_for(*there),
                ):
                    yield (
                        f"channels[{i}] (link {channel.link}): the path crosses {site}, where "
                        f"no switch has ports for links {here[1]} and {there[1]}"
                    )

    def _channel_problems_exist(self, channel: Channel) -> bool:
        return next(iter(self._channel_problems(channel)), None) is not None

    def _key_problems(self) -> Iterator[str]:
        sites = {s.name for s in self.sites}
        yield from self._placed_once(self.key_managers, "key_managers", "key manager")
        kme_at: dict[str, KeyManager] = {}
        for kme in self.key_managers:
            kme_at.setdefault(kme.site, kme)
        for i, kme in enumerate(self.key_managers):
            for j, peer in enumerate(kme.peers):
                where = f"key_managers[{i}] ({kme.name}).peers[{j}]"
                if peer not in kme_at:
                    yield f"{where}: no key manager at {peer!r}"
                elif kme.site not in kme_at[peer].peers:
                    yield f"{where}: {kme_at[peer].name} does not list {kme.site} back"
                elif not self.channels_between(kme.site, peer):
                    yield f"{where}: no quantum channel joins {kme.site} and {peer}"
        if self.key_managers:
            for site in sorted({m.site for m in self.modules} - set(kme_at)):
                yield f"key_managers: site {site} has QKD modules but no key manager"
        kmes = {k.name: k for k in self.key_managers}
        for i, enc in enumerate(self.encryptors):
            where = f"encryptors[{i}] ({enc.name})"
            for end in ("a", "b"):
                if getattr(enc, end) not in sites:
                    yield f"{where}.{end}: no site named {getattr(enc, end)!r}"
            kme = kmes.get(enc.key_manager)
            if kme is None:
                yield f"{where}.key_manager: no key manager named {enc.key_manager!r}"
            elif kme.site not in (enc.a, enc.b):
                yield f"{where}.key_manager: {kme.name} is at {kme.site}, not {enc.a} or {enc.b}"
            elif ({enc.a, enc.b} - {kme.site}).pop() not in kme.peers:
                yield f"{where}.key_manager: {kme.name} has no SAE pair toward the other end"
        if self.qrng is not None and self.qrng.site not in sites:
            yield f"qrng.site: no site named {self.qrng.site!r}"

    def _instrument_problems(self) -> Iterator[str]:
        links = {link.id: link for link in self.links}
        for i, instrument in enumerate(self.instruments):
            where = f"instruments[{i}] ({instrument.name})"
            link = links.get(instrument.link)
            if link is None:
                yield f"{where}.link: no link {instrument.link!r}"
            elif instrument.site not in (link.a, link.b):
                ends = f"{link.a}-{link.b}"
                yield f"{where}.site: link {link.id} runs {ends}, not from {instrument.site}"

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

    def switch_at(self, site: str) -> Switch | None:
        return next((s for s in self.switches if s.site == site), None)

    def link(self, link_id: str) -> Link:
        return next(link for link in self.links if link.id == link_id)

    def channels_between(self, site_a: str, site_b: str) -> list[Channel]:
        """The channels whose end modules are at `site_a` and `site_b` (either way round)."""
        want = {site_a, site_b}
        return [
            c for c in self.channels if {self.module(c.alice).site, self.module(c.bob).site} == want
        ]

    def _steps(self, channel: Channel) -> list[tuple[str, tuple[str, str], tuple[str, str]]]:
        """Each site the channel's light crosses, from Alice's: (site, came from, goes to),
        where each end is ("module", name) or ("link", id)."""
        here = self.module(channel.alice).site
        ids = channel.link_ids
        first = self.link(ids[0])
        if here not in (first.a, first.b):
            ids = ids[::-1]
        steps = []
        came: tuple[str, str] = ("module", channel.alice)
        for link_id in ids:
            steps.append((here, came, ("link", link_id)))
            link = self.link(link_id)
            here = link.b if here == link.a else link.a
            came = ("link", link_id)
        steps.append((here, came, ("module", channel.bob)))
        return steps

    def joins(self, channel: Channel) -> list[Join]:
        """The cross-connects the channel's light needs, Alice's site first: at each site
        whose switch has ports for both what the light comes from and where it goes."""
        out = []
        for site, came, goes in self._steps(channel):
            switch = self.switch_at(site)
            if switch is None:
                continue
            a, b = switch.port_for(*came), switch.port_for(*goes)
            if a is not None and b is not None:
                out.append(Join(switch.name, a.name, b.name))
        return out

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
