"""The configuration file: one YAML document validated by pydantic models.

Why the loader does more than `yaml.safe_load` + `model_validate`:
- operators need every error at once, each with its path *and line* in the file
  (`devices[3].snmp.auth_key (line 41): ...`), never the offending value (it may be a secret);
- secrets come from the file, from `${ENV}` references or from `<name>_file` paths;
- each device's driver section is validated by the model the driver itself declares, so the
  error paths of driver options read the same as those of the collector's own settings.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

from qkdtel.paths import default_lineprotocol_dir, default_spool_dir
from qkdtel.plugins import DriverNotFound, ListenerNotFound, load_driver, load_listener
from qkdtel.sdk import DURATION_PATTERN, Duration, Model, is_secret, parse_duration

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class HealthSettings(Model):
    """The collector's own HTTP endpoint: `/metrics` (Prometheus) and `/healthz`."""

    listen: str = Field(
        "127.0.0.1:9273",
        pattern=r"^[^\s:]+:[0-9]{1,5}$",
        description="host:port to serve on (keep it on loopback or a management network)",
    )
    unhealthy_after: Duration = Field(
        300.0,
        le=86400,
        description="/healthz answers 503 when a sink has delivered nothing this long while"
        " points wait for it; at most 1 day",
    )


class ShardSettings(Model):
    """This collector is one of `count` splitting the devices by rendezvous hashing on their
    names (`qkdtel.shard`): each polls only its own share, into its own spool."""

    index: int = Field(ge=0, le=1023, description="this collector's shard, from 0")
    count: int = Field(ge=1, le=1024, description="how many collectors share the devices")

    @model_validator(mode="after")
    def _index_below_count(self) -> ShardSettings:
        if self.index >= self.count:
            raise ValueError(f"index {self.index} must be below count {self.count}")
        return self


class CollectorSettings(Model):
    """How the daemon schedules, spools and delivers."""

    concurrency: int = Field(
        32, ge=1, le=4096, description="polls running at once, all devices together"
    )
    spool_dir: Path = Field(
        default_factory=default_spool_dir,
        description="durable queue between polling and writing; default: <state>/spool, the"
        " state directory being $STATE_DIRECTORY (systemd), else /var/lib/qkdtel for root, else"
        " $XDG_STATE_HOME/qkdtel (~/.local/state/qkdtel)",
    )
    spool_max_points: int = Field(
        2_000_000, ge=1000, le=1_000_000_000, description="points the spool may hold"
    )
    spool_max_bytes: ByteSize | None = Field(
        None,
        ge=8 << 20,
        le=1 << 50,
        description="disk the spool may take, database and write-ahead log together (e.g."
        " `512MiB`); default: the smaller of 1 GiB and half the space free in spool_dir at start",
    )
    overflow: Literal["drop_oldest", "reject_new"] = Field(
        "drop_oldest",
        description="what a full spool does: drop the oldest whole submits, or refuse new points;"
        " either way every lost point is counted and logged as an error",
    )
    batch_size: int = Field(5000, ge=1, le=100_000, description="points per write request")
    flush_interval: Duration = Field(
        1.0, le=3600, description="longest a point waits before a write; at most 1h"
    )
    retry_max_delay: Duration = Field(
        60.0, le=3600, description="cap of the write retry back-off; at most 1h"
    )
    max_backoff: Duration = Field(
        300.0, le=86400, description="cap of a failing device's poll back-off; at most 1 day"
    )
    shutdown_grace: Duration = Field(
        10.0,
        le=300,
        description="how long SIGTERM waits for polls/flush; at most 5m, so a stop never hangs",
    )
    self_telemetry_interval: Duration = Field(
        10.0, le=3600, description="period of qkdtel_collector; at most 1h"
    )
    shard: ShardSettings | None = Field(
        None,
        description="poll only this shard's share of the devices (`--shard i/N` overrides);"
        " spool_dir gets the suffix .shard-<index>",
    )
    workers: int | Literal["auto"] = Field(
        1,
        description="worker processes on this host, 1 to 256, each a shard of its own (`auto`:"
        " one per CPU; `--workers` overrides; docs/scaling.md)",
    )
    health: HealthSettings | None = Field(
        None, description="serve /metrics and /healthz over HTTP (off unless given)"
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_count(cls, value: object) -> object:
        """One error for both forms (the union would report one per alternative)."""
        if value == "auto" or (type(value) is int and 1 <= value <= 256):
            return value
        raise ValueError(f"expected 1 to 256 or auto, not {value!r}")

    @property
    def state_dir(self) -> Path:
        """Where the collector keeps what it rebuilds (compiled MIBs): spool_dir's parent, a
        directory the operator already made writable for it (never the user's home)."""
        return self.spool_dir.parent


class InfluxV2Sink(Model):
    """InfluxDB through the v2 write API (InfluxDB 2.x, 3.x and the 1.8+ compatibility API)."""

    type: Literal["influxdb_v2"]
    name: str = "influxdb"
    url: str = Field(pattern=r"^https?://")
    org: str = "-"
    bucket: str
    token: SecretStr | None = None
    verify_tls: bool = True
    ca_file: Path | None = Field(None, description="PEM CA bundle to verify the server with")
    timeout: Duration = Field(10.0, le=600, description="limit of one write request; at most 10m")


class InfluxV1Sink(Model):
    """InfluxDB 1.x through its `/write` endpoint."""

    type: Literal["influxdb_v1"]
    name: str = "influxdb"
    url: str = Field(pattern=r"^https?://")
    database: str
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    verify_tls: bool = True
    ca_file: Path | None = Field(None, description="PEM CA bundle to verify the server with")
    timeout: Duration = Field(10.0, le=600, description="limit of one write request; at most 10m")


class FileSink(Model):
    """Local line-protocol store: files `influx write` (2.x) or `influx -import` (1.x) can load."""

    type: Literal["file"]
    name: str = "file"
    path: Path = Field(
        default_factory=default_lineprotocol_dir,
        description="folder of the files; default: <state>/lineprotocol (see spool_dir)",
    )
    rotate_bytes: int = Field(64 * 1024 * 1024, ge=1024, le=1 << 40)
    database: str = Field(
        "qkdtel",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="database each file's header names for `influx -import` (InfluxDB 1.x)",
    )


Sink = Annotated[InfluxV2Sink | InfluxV1Sink | FileSink, Field(discriminator="type")]
_SINK_TYPES = {"influxdb_v2", "influxdb_v1", "file"}


class DeviceConfig(Model):
    """One polled device. Keys not listed here belong to its driver and are validated by it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    driver: str
    interval: Duration = Field(10.0, le=86400, description="time between polls; at most 1 day")
    timeout: Duration = Field(5.0, le=3600, description="limit of one poll; at most 1h")
    enabled: bool = True
    tags: dict[str, str] = Field(default_factory=dict)


class DeviceDefaults(Model):
    """What every device gets unless its own entry says otherwise (Telegraf's agent interval
    and global_tags): a device's `tags` are added to these, its own winning."""

    interval: Duration | None = Field(
        None, le=86400, description="time between polls of a device that gives none"
    )
    timeout: Duration | None = Field(
        None, le=3600, description="limit of one poll of a device that gives none"
    )
    tags: dict[str, str] = Field(default_factory=dict, description="tags of every device")


INCLUDABLE = ("sinks", "listeners", "devices")
"""The lists an included file may add to (in name order, after the main file's)."""


class ListenerConfig(Model):
    """One listener. Keys not listed here belong to the listener and are validated by it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", description="default: the type"
    )


TRAPS_LISTENER = "snmp_traps"
"""The listener type the `traps:` section configures (kept from before listeners existed)."""


class Config(Model):
    """The whole file."""

    collector: CollectorSettings = Field(default_factory=CollectorSettings)
    sinks: list[Sink] = Field(
        default_factory=list,
        description="where points go; none configured means the local line-protocol store",
    )
    listeners: list[ListenerConfig] = Field(
        default_factory=list,
        description="plugins that receive data devices push (`type: snmp_traps`: SNMP"
        " notifications); the `traps:` section is the same as a `snmp_traps` listener",
    )
    devices: list[DeviceConfig] = Field(default_factory=list)
    defaults: DeviceDefaults = Field(
        default_factory=DeviceDefaults, description="interval, timeout and tags of every device"
    )
    include: Path | None = Field(
        None,
        description="a directory (relative: to this file's) whose *.yaml files add sinks,"
        " listeners and devices, merged in name order (like conf.d)",
    )

    def effective_sinks(self) -> list[InfluxV2Sink | InfluxV1Sink | FileSink]:
        """The configured sinks, or the embedded local store when there are none."""
        return list(self.sinks) or [FileSink(type="file")]


@dataclass(frozen=True)
class Device:
    """A configured device with its driver's own options validated."""

    config: DeviceConfig
    options: BaseModel


@dataclass(frozen=True)
class ListenerSpec:
    """A configured listener with its own options validated."""

    name: str
    type: str
    options: BaseModel


@dataclass(frozen=True)
class LoadedConfig:
    """The validated file plus each enabled device's driver options and each listener's."""

    config: Config
    devices: list[Device]
    source: Path | None = None
    listeners: list[ListenerSpec] = field(default_factory=list)
    unpolled: list[Device] = field(default_factory=list)
    """Enabled devices other collectors poll (`qkdtel.shard.select`): listeners still know them."""


class ConfigError(Exception):
    """The file is invalid; `problems` lists every error as `path (line N): message`."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: {len(self.problems)} error(s)\n  " + "\n  ".join(problems))


def format_loc(loc: Iterable[str | int]) -> str:
    """`('devices', 3, 'snmp', 'auth_key')` -> `devices[3].snmp.auth_key`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _line_of(node: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """Line (1-based) of the YAML node at `loc`, or of its deepest existing ancestor."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where its leniency hides mistakes or leaks values.

    A key given twice in one mapping is an error naming both lines (PyYAML keeps the last one
    silently). A tagged value it cannot build (`!!int abc`, `!!timestamp x`) becomes a YAML
    error at its line, instead of a bare ValueError whose message shows the value. A lone
    surrogate (`"\\udcff"`) is refused: no path, name or secret can be encoded with one.
    """

    def construct_scalar(self, node: yaml.Node) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str) and _SURROGATE.search(value):
            raise yaml.constructor.ConstructorError(
                problem="a \\u escape of a lone surrogate (U+D800..U+DFFF)",
                problem_mark=node.start_mark,
            )
        return value

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` may be overridden: that is what it is for
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:
                    continue  # unhashable: the base class reports it at its line
                if earlier is not key_node:
                    name = key if isinstance(key, str) and _PLAIN_KEY.match(key) else "a key"
                    raise yaml.constructor.ConstructorError(
                        problem=f"{name} given twice (first at {_mark(earlier.start_mark)})",
                        problem_mark=key_node.start_mark,
                    )
        return super().construct_mapping(node, deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError):
            kind = node.tag.rsplit(":", 1)[-1]
            # from None: the cause's message shows the value, which may be a secret
            raise yaml.constructor.ConstructorError(
                None, None, f"the value is not a valid {kind}", node.start_mark
            ) from None


_SURROGATE = re.compile("[\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_SHOWABLE = re.compile(r"<[a-z ]+>|\\[tnr]|[^\w\s]")
"""What PyYAML may quote from the source and we may show: a token name (`'<stream end>'`),
a tab or another single punctuation character. Anchors, aliases and tags are not shown."""


def _redact(text: str) -> str:
    """`found undefined alias 'S3CRET'` -> `found undefined alias (not shown)`."""
    return _QUOTED.sub(
        lambda m: (
            m.group(0) if _SHOWABLE.fullmatch(m.group(1) or m.group(2) or "") else "(not shown)"
        ),
        text,
    )


def _mark(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """`line 4, column 9: not valid YAML: <problem> (<context> at line 3, column 1)`.

    Never PyYAML's own `str(exc)`: it quotes the offending line, and that line may be
    `password: S3CRET: WORD`.
    """
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        return (
            f"line {line}, column {column}: not valid YAML: "
            f"character #x{exc.character:04x} is not allowed in YAML"
        )
    if not isinstance(exc, yaml.MarkedYAMLError):
        return "not valid YAML"
    marks = [m for m in (exc.problem_mark, exc.context_mark) if m is not None]
    where = f"{_mark(marks[0])}: " if marks else ""
    message = _redact(exc.problem or exc.context or "syntax error")
    if exc.problem and exc.context:
        at = f" at {_mark(exc.context_mark)}" if exc.context_mark else ""
        message += f" ({_redact(exc.context)}{at})"
    return f"{where}not valid YAML: {message}"


def _parse_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (for the lines of errors) and its data."""
    loader = None
    try:
        loader = _StrictLoader(text)
        root = loader.get_single_node()
        return root, loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        # from None: PyYAML's message quotes the offending line, which may hold a secret
        raise ConfigError(source, [_yaml_problem(exc, text)]) from None
    except RecursionError as exc:
        raise ConfigError(source, ["not valid YAML: nested too deeply"]) from exc
    finally:
        if loader is not None:
            loader.dispose()


def _interpolate(data: Any, problems: list[tuple]) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in strings; a missing variable, an unfinished
    `${`, or an alias that contains itself (`a: &x [*x]`) is a config error.

    An aliased mapping or list is one object however often it is referred to: it is
    interpolated once and shared, so a file of nested aliases (a "billion laughs") stays as
    small as it is written.
    """
    done: dict[int, Any] = {}

    def walk(value: Any, loc: tuple[str | int, ...], parents: frozenset[int]) -> Any:
        if isinstance(value, str):
            return _substitute(value, loc, problems)
        if not isinstance(value, dict | list):
            return value
        if id(value) in parents:
            problems.append((loc, "a YAML alias that contains itself"))
            return None
        if id(value) not in done:
            inner = parents | {id(value)}
            if isinstance(value, dict):
                done[id(value)] = {k: walk(v, (*loc, k), inner) for k, v in value.items()}
            else:
                done[id(value)] = [walk(v, (*loc, i), inner) for i, v in enumerate(value)]
        return done[id(value)]

    return walk(data, (), frozenset())


def _substitute(text: str, loc: tuple[str | int, ...], problems: list[tuple]) -> str:
    """One string's `${...}` references replaced, each problem recorded at `loc`."""
    if "${" not in text:
        return text

    def sub(match: re.Match[str]) -> str:
        value = os.environ.get(match.group(1), match.group(2))
        if value is None:
            problems.append((loc, f"environment variable {match.group(1)} is not set"))
            return ""
        return value

    if "${" in _ENV_REF.sub("", text):
        problems.append((loc, "an unfinished ${ reference: write ${NAME} or ${NAME:-default}"))
    return _ENV_REF.sub(sub, text)


def _message(err: Any) -> str:
    """Pydantic's message without the input it may quote (an `${ENV}` value may be a secret)."""
    if err["type"] == "union_tag_invalid":
        return f"{err['ctx']['discriminator']} should be one of {err['ctx']['expected_tags']}"
    value = err.get("input")
    msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
    if isinstance(value, str | int | float) and str(value):
        msg = msg.replace(f"'{value}'", "(the value)")
    return msg


def _pydantic_problems(
    exc: ValidationError, prefix: tuple[str | int, ...]
) -> list[tuple[tuple, str]]:
    out = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        # A discriminated union puts its tag (`influxdb_v2`) in the path; it is no key in the file.
        if len(loc) > 2 and loc[0] == "sinks" and loc[2] in _SINK_TYPES:
            loc = (*loc[:2], *loc[3:])
        out.append(((*prefix, *loc), _message(err)))
    return out


def _repeated_names(names: Sequence[str | None], where: str) -> list[tuple[tuple, str]]:
    """Each reuse of a name, at the entry that reuses it (`None`: an entry already invalid)."""
    first: dict[str, int] = {}
    out = []
    for index, name in enumerate(names):
        if name is None:
            continue
        if name in first:
            out.append(
                (
                    (where, index, "name"),
                    f"names must be unique; {where}[{first[name]}] has this name too",
                )
            )
        first.setdefault(name, index)
    return out


def _directory_problem(path: Path) -> str | None:
    """Why `path` is not, and cannot become, a directory this process can write; None if it
    can. Creates nothing: `check` leaves the machine as it found it."""
    target = Path(os.path.abspath(path))
    existing = target
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not os.path.isdir(existing):
        if existing == target:
            return f"{path} exists and is not a directory"
        return f"{path} cannot be created: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == target:
            return f"{path} is not writable"
        return f"{path} cannot be created: {existing} is not writable"
    return None


def _ca_file_problem(path: Path) -> str | None:
    """Why the CA bundle at `path` cannot verify a server (missing, unreadable, not PEM
    certificates); None if it loads."""
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        return f"{path} holds no usable PEM certificate ({exc.reason or 'unreadable'})"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    return None


def environment_problems(config: Config) -> list[tuple[tuple, str]]:
    """What `run` would trip on at start-up on this machine, checked without changing it: the
        directories it creates and writes, the CA files it loads (each listener checks its own
    options: `Listener.environment_problems`)."""
    problems: list[tuple[tuple, str]] = []
    spool = _directory_problem(config.collector.spool_dir)
    if spool:
        problems.append((("collector", "spool_dir"), spool))
    for index, sink in enumerate(config.effective_sinks()):
        where: tuple[str | int, ...] = ("sinks", index) if config.sinks else ("sinks",)
        if isinstance(sink, FileSink):
            problem, key = _directory_problem(sink.path), "path"
        else:
            problem, key = sink.ca_file and _ca_file_problem(sink.ca_file), "ca_file"
        if problem:
            problems.append(((*where, key) if config.sinks else where, problem))
    return problems


def load_config_text(
    text: str,
    source: str = "<config>",
    *,
    check_environment: bool = False,
    base_dir: Path | None = None,
) -> LoadedConfig:
    """Validate a configuration document; raise `ConfigError` listing every problem.

    With `check_environment`, also what `run` needs of this machine (`environment_problems`):
    `load_config` asks for it, as a file is loaded to be run here; a document alone (the
    README's example, a test's snippet) is checked as a document.
    """
    root, raw = _parse_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): expected a mapping of settings"])

    problems: list[tuple[tuple, str]] = []
    origins = _include(raw, Path(source).parent if base_dir is None else base_dir, problems)
    raw = _interpolate(raw, problems)
    raw_traps = raw.pop("traps", None)
    raw_devices = raw.get("devices") or []
    if not isinstance(raw_devices, list):
        problems.append((("devices",), "expected a list of devices"))
        raw_devices = []

    # The collector's own settings, each device and each listener are validated separately,
    # so one bad entry does not hide the errors of the others (or of their plugin options).
    settings: Config | None = None
    try:
        settings = Config.model_validate({**raw, "devices": [], "listeners": []})
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, ()))
    else:
        problems.extend(_repeated_names([s.name for s in settings.sinks], "sinks"))
        if check_environment:
            problems.extend(environment_problems(settings))
        raw_devices = [_with_defaults(d, settings.defaults) for d in raw_devices]
        raw["devices"] = raw_devices
    device_options = _device_options(raw_devices, problems)
    listeners = _listeners(_listener_entries(raw, raw_traps, problems), problems)
    if check_environment:
        for where, spec in listeners:
            checks = load_listener(spec.type).environment_problems(spec.options)
            problems.extend(((*where, *loc), message) for loc, message in checks)

    config: Config | None = None
    if not problems:
        try:
            config = Config.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, ()))

    if problems:
        raise ConfigError(
            source, [_where(loc, root, origins) + f": {msg}" for loc, msg in problems]
        )
    assert config is not None
    devices = [
        Device(device, options)
        for device, options in zip(config.devices, device_options, strict=True)
        if device.enabled
    ]
    return LoadedConfig(config, devices, listeners=[spec for _, spec in listeners])


_Origin = tuple[str, yaml.Node | None, int]
"""Where an entry merged from an included file came from: (file, its node there, its index)."""


def _include(raw: dict[str, Any], base_dir: Path, problems: list[tuple]) -> dict[tuple, _Origin]:
    """Append the entries of every `*.yaml` file of `include:` (in name order) to the main
    file's lists; returns where each appended entry came from, for error messages."""
    where = raw.get("include")
    if where is None:
        return {}
    if not isinstance(where, str):
        problems.append((("include",), "expected the path of a directory"))
        return {}
    directory = base_dir / where
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))
    except OSError as exc:
        problems.append((("include",), f"cannot read the directory {directory}: {exc.strerror}"))
        return {}
    origins: dict[tuple, _Origin] = {}
    for path in files:
        try:
            node, data = _parse_yaml(_decode(path.read_bytes(), str(path)), str(path))
        except ConfigError as exc:
            problems.extend((("include",), f"{path}: {p}") for p in exc.problems)
            continue
        except OSError as exc:
            problems.append((("include",), f"cannot read {path}: {exc.strerror}"))
            continue
        for key, entries in (data or {}).items() if isinstance(data, dict) else [(None, None)]:
            if key not in INCLUDABLE or not isinstance(entries, list):
                line = _line_of(node, (key,) if isinstance(key, str) else ())
                problems.append(
                    (
                        ("include",),
                        f"{path} (line {line}): an included file holds only lists of"
                        f" {', '.join(INCLUDABLE)}",
                    )
                )
                continue
            merged = raw.setdefault(key, [])
            if not isinstance(merged, list):
                continue  # the main file's own error says so
            for index, entry in enumerate(entries):
                origins[(key, len(merged))] = (str(path), _item_node(node, key, index), index)
                merged.append(entry)
    return origins


def _item_node(root: yaml.Node | None, key: str, index: int) -> yaml.Node | None:
    """The node of `root[key][index]` (for the lines of errors)."""
    for k, v in root.value if isinstance(root, yaml.MappingNode) else []:
        if k.value == key and isinstance(v, yaml.SequenceNode) and index < len(v.value):
            return v.value[index]
    return None


def _where(loc: tuple, root: yaml.Node | None, origins: dict[tuple, _Origin]) -> str:
    """`devices[3].snmp (line 41)`, or for an entry from an included file
    `conf.d/20-sites.yaml: devices[0].snmp (line 7)` (its index and line in that file)."""
    origin = origins.get(tuple(loc[:2]))
    if origin is None:
        line = _line_of(root, loc)
        return format_loc(loc) + (f" (line {line})" if line else "")
    path, node, index = origin
    line = _line_of(node, loc[2:])
    return f"{path}: {format_loc((loc[0], index, *loc[2:]))}" + (f" (line {line})" if line else "")


def _with_defaults(raw_device: Any, defaults: DeviceDefaults) -> Any:
    """A device entry with `defaults:` filled in where it gives nothing of its own."""
    if not isinstance(raw_device, dict):
        return raw_device  # its own error says what it should be
    out = dict(raw_device)
    for key in ("interval", "timeout"):
        value = getattr(defaults, key)
        if value is not None and key not in out:
            out[key] = value
    if defaults.tags and isinstance(out.get("tags", {}), dict):
        out["tags"] = {**defaults.tags, **(out.get("tags") or {})}
    return out


def _device_options(raw_devices: list[Any], problems: list[tuple[tuple, str]]) -> list[BaseModel]:
    """Each device's driver options (in order), its problems recorded at `devices[i]`."""
    device_options: list[BaseModel] = []
    device_names: list[str | None] = []
    for index, raw_device in enumerate(raw_devices):
        where: tuple[str | int, ...] = ("devices", index)
        device_names.append(None)
        try:
            device = DeviceConfig.model_validate(raw_device)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, where))
            continue
        device_names[-1] = device.name
        try:
            driver = load_driver(device.driver)
        except DriverNotFound as exc:
            problems.append(((*where, "driver"), str(exc)))
            continue
        try:
            device_options.append(driver.options_model.model_validate(device.model_extra or {}))
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, where))
    problems.extend(_repeated_names(device_names, "devices"))
    return device_options


_Entry = tuple[tuple[str | int, ...], Any]


def _listener_entries(
    raw: dict[str, Any], raw_traps: Any, problems: list[tuple[tuple, str]]
) -> list[_Entry]:
    """(where in the file, raw entry) of every listener: `listeners[i]`, and the `traps:`
    section as a `snmp_traps` listener named `traps` (its errors keep reading `traps.listen`)."""
    raw_listeners = raw.get("listeners") or []
    if not isinstance(raw_listeners, list):
        problems.append((("listeners",), "expected a list of listeners"))
        raw_listeners = []
    entries: list[_Entry] = [(("listeners", i), entry) for i, entry in enumerate(raw_listeners)]
    if raw_traps is not None:
        if not isinstance(raw_traps, dict):
            problems.append((("traps",), "expected a mapping (listen, communities, users)"))
        elif any(isinstance(e, dict) and e.get("type") == TRAPS_LISTENER for e in raw_listeners):
            problems.append(
                (("traps",), f"give either traps or a listener of type {TRAPS_LISTENER}")
            )
        else:
            entries.append((("traps",), {**raw_traps, "type": TRAPS_LISTENER, "name": "traps"}))
    return entries


def _listeners(
    entries: list[_Entry], problems: list[tuple[tuple, str]]
) -> list[tuple[tuple[str | int, ...], ListenerSpec]]:
    """Each listener with its options validated by the listener's own model, and where it is
    in the file; problems recorded there."""
    specs: list[tuple[tuple[str | int, ...], ListenerSpec]] = []
    names: list[str | None] = []
    for where, raw_entry in entries:
        names.append(None)
        try:
            entry = ListenerConfig.model_validate(raw_entry)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, where))
            continue
        names[-1] = entry.name or entry.type
        try:
            listener = load_listener(entry.type)
        except ListenerNotFound as exc:
            problems.append(((*where, "type"), str(exc)))
            continue
        try:
            options = listener.options_model.model_validate(entry.model_extra or {})
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, where))
            continue
        specs.append((where, ListenerSpec(names[-1], entry.type, options)))
    problems.extend(_repeated_names(names, "listeners"))
    return specs


def _decode(data: bytes, source: str) -> str:
    """The file as text (a leading BOM dropped); invalid UTF-8 is reported by line and byte
    offset, never by its bytes (they may belong to a secret)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        # from None: the cause holds the undecodable bytes, which may be a secret's
        raise ConfigError(
            source, [f"line {line}: not UTF-8 text (invalid byte at offset {exc.start})"]
        ) from None


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate the configuration file at `path`, and what running it needs of this
    machine (`environment_problems`): `check` and `run` both load through here."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from exc
    loaded = load_config_text(_decode(data, str(path)), str(path), check_environment=True)
    return dataclasses.replace(loaded, source=path)


def _plugin_variants(
    plugins: dict[str, type[BaseModel]], base: type[BaseModel], key: str, what: str
) -> Any:
    """`base` entries discriminated by `key`, one variant per plugin typed by its options."""
    variants = []
    for name, options in sorted(plugins.items()):
        namespace = {
            "__annotations__": {key: Literal[name]},  # type: ignore[valid-type]
            "model_config": ConfigDict(extra="forbid", frozen=True),
            "__module__": __name__,
            "__doc__": f"{what} {name}.",
        }
        variants.append(
            type(f"{base.__name__.removesuffix('Config')}_{name}", (base, options), namespace)
        )
    return Annotated[Union[tuple(variants)], Field(discriminator=key)]  # noqa: UP007


def json_schema(
    drivers: dict[str, type[BaseModel]], listeners: dict[str, type[BaseModel]] | None = None
) -> dict[str, Any]:
    """JSON Schema of the file for editors, each device's options typed by its driver and each
    listener's by the listener (`traps:` by the `snmp_traps` listener's, as it is one).

    `drivers` and `listeners` map names to options models (all installed plugins).
    """
    fields: dict[str, Any] = {}
    if drivers:
        device = _plugin_variants(drivers, DeviceConfig, "driver", "A device polled by the driver")
        fields["devices"] = (list[device], [])
    if listeners:
        listener = _plugin_variants(listeners, ListenerConfig, "type", "A listener of type")
        fields["listeners"] = (list[listener], [])
    if listeners and TRAPS_LISTENER in listeners:
        fields["traps"] = (listeners[TRAPS_LISTENER] | None, None)
    schema_model = create_model("Config", __base__=Config, **fields)
    return _accept_env_refs(schema_model.model_json_schema(schema_generator=_FileSchema))


_ENV_REF_SCHEMA = {
    "type": "string",
    "pattern": _ENV_REF.pattern,
    "description": "an ${ENV} reference, substituted before validation",
}
_KEEP_OUTSIDE = ("title", "description", "default")
_DISCRIMINATORS = {"driver", "type"}


class _FileSchema(GenerateJsonSchema):
    """The schema of what the *file* may hold, not of the validated model: a duration may be
    written `10s`, a secret `token` as `token_file: PATH` (one of the two)."""

    def function_before_schema(self, schema: Any) -> JsonSchemaValue:
        inner = super().function_before_schema(schema)
        if schema["function"]["function"] is parse_duration:
            return {"anyOf": [inner, {"type": "string", "pattern": DURATION_PATTERN.pattern}]}
        return inner

    def model_schema(self, schema: Any) -> JsonSchemaValue:
        out = super().model_schema(schema)
        cls = schema["cls"]
        secrets = [n for n, info in cls.model_fields.items() if is_secret(info.annotation)]
        for name in secrets:
            file_key = f"{name}_file"
            out["properties"][file_key] = {
                "type": "string",
                "description": f"a file holding {name} (trailing newline dropped)",
            }
            either: dict[str, Any] = {"not": {"required": [name, file_key]}}
            if name in out.get("required", []):
                out["required"].remove(name)
                either = {"oneOf": [{"required": [name]}, {"required": [file_key]}]}
            out.setdefault("allOf", []).append(either)
        return out


def _accept_env_refs(node: Any, key: str | None = None) -> Any:
    """Every scalar the loader would take from an `${ENV}` reference (numbers, booleans,
    strings bound by a pattern or a list of values) also accepts one: the loader substitutes
    before it validates. Plugin discriminators (`driver`, `type`) stay literal."""
    if isinstance(node, list):
        return [_accept_env_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _accept_env_refs(v, k) for k, v in node.items()}
    kind = out.get("type")
    constrained = kind == "string" and ({"pattern", "enum"} & out.keys())
    if key in _DISCRIMINATORS or "const" in out:
        return out
    if kind in ("number", "integer", "boolean") or constrained:
        outside = {k: out.pop(k) for k in _KEEP_OUTSIDE if k in out}
        return {**outside, "anyOf": [out, _ENV_REF_SCHEMA]}
    return out
