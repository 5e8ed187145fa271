"""The configuration file: one YAML document validated by pydantic models.

Why the loader does more than `yaml.safe_load` + `model_validate`:
- operators need every error at once, each with its path *and line* in the file
  (`devices[3].snmp.auth_key (line 41): ...`), never the offending value (it may be a secret);
- secrets come from the file, from `${ENV}` references or from `<name>_file` paths;
- each device's driver section is validated by the model the driver itself declares, so the
  error paths of driver options read the same as those of the collector's own settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    model_validator,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_duration(value: Any) -> Any:
    """Accept `10`, `2.5`, `500ms`, `10s`, `5m`, `1h`; return seconds (pydantic checks > 0)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError("a duration is a number of seconds or like 500ms, 10s, 5m, 1h")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
"""A length of time in seconds, written in the file as a number or with a unit."""


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in get_args(annotation)


class Model(BaseModel):
    """Base of every configuration model: strict keys, and `<secret>_file` support.

    A secret field `token` may instead be given as `token_file: /run/secrets/influx`; the file's
    content (trailing newline stripped) becomes the secret.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, info in cls.model_fields.items():
            file_key = f"{name}_file"
            if file_key not in data or not _is_secret(info.annotation):
                continue
            if name in data:
                raise ValueError(f"give either {name} or {file_key}, not both")
            data = dict(data)
            path = Path(str(data.pop(file_key))).expanduser()
            try:
                data[name] = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"{file_key}: cannot read {path}: {exc.strerror}") from None
        return data


class CollectorSettings(Model):
    """How the daemon schedules, spools and delivers."""

    concurrency: int = Field(32, ge=1, description="polls running at once, all devices together")
    spool_dir: Path = Field(
        Path("qkdtel-data/spool"), description="durable queue between polling and writing"
    )
    spool_max_points: int = Field(2_000_000, ge=1000, description="points the spool may hold")
    spool_max_bytes: ByteSize | None = Field(
        None,
        ge=8 << 20,
        description="disk the spool may take, database and write-ahead log together (e.g."
        " `512MiB`); default: the smaller of 1 GiB and half the space free in spool_dir at start",
    )
    overflow: Literal["drop_oldest", "reject_new"] = Field(
        "drop_oldest",
        description="what a full spool does: drop the oldest whole submits, or refuse new points;"
        " either way every lost point is counted and logged as an error",
    )
    batch_size: int = Field(5000, ge=1, le=100_000, description="points per write request")
    flush_interval: Duration = Field(1.0, description="longest a point waits before a write")
    retry_max_delay: Duration = Field(60.0, description="cap of the write retry back-off")
    max_backoff: Duration = Field(300.0, description="cap of a failing device's poll back-off")
    shutdown_grace: Duration = Field(10.0, description="how long SIGTERM waits for polls/flush")
    self_telemetry_interval: Duration = Field(10.0, description="period of qkdtel_collector")


class InfluxV2Sink(Model):
    """InfluxDB through the v2 write API (InfluxDB 2.x, 3.x and the 1.8+ compatibility API)."""

    type: Literal["influxdb_v2"]
    name: str = "influxdb"
    url: str = Field(pattern=r"^https?://")
    org: str = "-"
    bucket: str
    token: SecretStr | None = None
    verify_tls: bool = True
    ca_file: Path | None = None
    timeout: Duration = 10.0


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
    ca_file: Path | None = None
    timeout: Duration = 10.0


class FileSink(Model):
    """Local line-protocol store: files `influx write` (2.x) or `influx -import` (1.x) can load."""

    type: Literal["file"]
    name: str = "file"
    path: Path = Path("qkdtel-data/lineprotocol")
    rotate_bytes: int = Field(64 * 1024 * 1024, ge=1024)


Sink = Annotated[InfluxV2Sink | InfluxV1Sink | FileSink, Field(discriminator="type")]
_SINK_TYPES = {"influxdb_v2", "influxdb_v1", "file"}


class TrapListener(Model):
    """Where the collector listens for SNMP notifications (traps/informs) from devices."""

    listen: str = Field("127.0.0.1:10162", pattern=r"^[^:]+:\d+$")
    communities: list[SecretStr] = Field(default_factory=lambda: [SecretStr("public")])
    users: list[dict[str, Any]] = Field(
        default_factory=list, description="SNMPv3 users (same keys as a device's snmp section)"
    )


class DeviceConfig(Model):
    """One polled device. Keys not listed here belong to its driver and are validated by it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    driver: str
    interval: Duration = 10.0
    timeout: Duration = 5.0
    enabled: bool = True
    tags: dict[str, str] = Field(default_factory=dict)


class Config(Model):
    """The whole file."""

    collector: CollectorSettings = Field(default_factory=CollectorSettings)
    sinks: list[Sink] = Field(
        default_factory=list,
        description="where points go; none configured means the local line-protocol store",
    )
    traps: TrapListener | None = None
    devices: list[DeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        for what, names in (
            ("device", [d.name for d in self.devices]),
            ("sink", [s.name for s in self.sinks]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what} names must be unique; repeated: {', '.join(dupes)}")
        return self

    def effective_sinks(self) -> list[InfluxV2Sink | InfluxV1Sink | FileSink]:
        """The configured sinks, or the embedded local store when there are none."""
        return list(self.sinks) or [FileSink(type="file")]


@dataclass(frozen=True)
class Device:
    """A configured device with its driver's own options validated."""

    config: DeviceConfig
    options: BaseModel


@dataclass(frozen=True)
class LoadedConfig:
    """The validated file plus each enabled device's driver options."""

    config: Config
    devices: list[Device]
    source: Path | None = None


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


def _interpolate(data: Any, loc: tuple[str | int, ...], problems: list[tuple]) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in strings; a missing variable is a config error."""
    if isinstance(data, dict):
        return {k: _interpolate(v, (*loc, k), problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_interpolate(v, (*loc, i), problems) for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data

    def sub(match: re.Match[str]) -> str:
        value = os.environ.get(match.group(1), match.group(2))
        if value is None:
            problems.append((loc, f"environment variable {match.group(1)} is not set"))
            return ""
        return value

    return _ENV_REF.sub(sub, data)


def _pydantic_problems(
    exc: ValidationError, prefix: tuple[str | int, ...]
) -> list[tuple[tuple, str]]:
    out = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = err["loc"]
        # A discriminated union puts its tag (`influxdb_v2`) in the path; it is no key in the file.
        if len(loc) > 2 and loc[0] == "sinks" and loc[2] in _SINK_TYPES:
            loc = (*loc[:2], *loc[3:])
        out.append(((*prefix, *loc), err["msg"]))
    return out


def load_config_text(text: str, source: str = "<config>") -> LoadedConfig:
    """Validate a configuration document; raise `ConfigError` listing every problem."""
    from qkdtel.plugins import DriverNotFound, load_driver

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): expected a mapping of settings"])

    problems: list[tuple[tuple, str]] = []
    raw = _interpolate(raw, (), problems)
    raw_devices = raw.get("devices") or []
    if not isinstance(raw_devices, list):
        problems.append((("devices",), "expected a list of devices"))
        raw_devices = []

    # The collector's own settings and each device are validated separately, so one bad
    # device does not hide the errors of the others (or of their driver options).
    try:
        Config.model_validate({**raw, "devices": []})
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, ()))
    device_options: list[BaseModel] = []
    for index, raw_device in enumerate(raw_devices):
        where: tuple[str | int, ...] = ("devices", index)
        try:
            device = DeviceConfig.model_validate(raw_device)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, where))
            continue
        try:
            driver = load_driver(device.driver)
        except DriverNotFound as exc:
            problems.append(((*where, "driver"), str(exc)))
            continue
        try:
            device_options.append(driver.options_model.model_validate(device.model_extra or {}))
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, where))

    raw_traps = raw.get("traps")
    if isinstance(raw_traps, dict) and isinstance(raw_traps.get("users"), list):
        from qkdtel.drivers.qkd_snmp.options import TrapUser

        for index, raw_user in enumerate(raw_traps["users"]):
            try:
                TrapUser.model_validate(raw_user)
            except ValidationError as exc:
                problems.extend(_pydantic_problems(exc, ("traps", "users", index)))

    config: Config | None = None
    if not problems:  # cross-checks (unique names) need every part valid
        try:
            config = Config.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, ()))

    if problems:
        lines = []
        for loc, msg in problems:
            line = _line_of(root, loc)
            at = f" (line {line})" if line else ""
            lines.append(f"{format_loc(loc)}{at}: {msg}")
        raise ConfigError(source, lines)
    assert config is not None
    devices = [
        Device(device, options)
        for device, options in zip(config.devices, device_options, strict=True)
        if device.enabled
    ]
    return LoadedConfig(config, devices)


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate the configuration file at `path`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    loaded = load_config_text(text, str(path))
    return LoadedConfig(loaded.config, loaded.devices, path)


def json_schema(drivers: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """JSON Schema of the file for editors, each device's options typed by its driver.

    `drivers` maps driver names to their options models (all installed drivers).
    """
    if not drivers:
        return Config.model_json_schema()
    variants = []
    for name, options in sorted(drivers.items()):
        namespace = {
            "__annotations__": {"driver": Literal[name]},  # type: ignore[valid-type]
            "model_config": ConfigDict(extra="forbid", frozen=True),
            "__module__": __name__,
            "__doc__": f"A device polled by the {name} driver.",
        }
        variants.append(type(f"Device_{name}", (DeviceConfig, options), namespace))
    device = Annotated[Union[tuple(variants)], Field(discriminator="driver")]  # noqa: UP007
    schema_model = create_model("Config", __base__=Config, devices=(list[device], []))
    return schema_model.model_json_schema()
