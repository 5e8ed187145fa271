"""Options of the QKD-module SNMP driver, as written under a device in the configuration file.

Cross-field rules (version, security level, key lengths) are field validators that read the
fields validated before them, not one model validator: that way every error points at the key
to fix (`devices[3].snmp.auth_key: ...`). Messages never echo a value: keys and communities are
secrets.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from qkdtel.sdk import Duration, Model

AuthProtocol = Literal["md5", "sha", "sha224", "sha256", "sha384", "sha512"]
PrivProtocol = Literal["none", "des", "aes", "aes192", "aes192c", "aes256", "aes256c"]
SecurityLevel = Literal["noAuthNoPriv", "authNoPriv", "authPriv"]
ProfileName = Literal["cerberis3", "toshiba", "hwdu_cv", "ait_cv"]

MIN_KEY_LENGTH = 8
"""RFC 3414 section 11.2: USM passphrases shorter than 8 characters must be refused."""

_ADDRESS = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]\s]+))(?::(?P<port>\d+))?$")


def split_address(address: str, default_port: int = 161) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` -> (host, port); port 0 is "any"."""
    match = _ADDRESS.match(address)
    if not match:
        raise ValueError("expected host[:port] (an IPv6 address in brackets: [2001:db8::1]:161)")
    port = int(match.group("port") or default_port)
    if port > 65535:
        raise ValueError(f"port {port} is out of range 1..65535")
    return match.group("v6") or match.group("host"), port


def join_address(host: str, port: int) -> str:
    """(host, port) -> `host:port`, an IPv6 address in brackets: `split_address` undone."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _v3_only(value: Any, info: ValidationInfo, default: Any = None) -> None:
    if info.data.get("version") == "2c" and value != default:
        raise ValueError(f"{info.field_name} is an SNMPv3 setting; set version: '3' to use it")


def _check_length(value: SecretStr | None) -> None:
    if value is not None and len(value.get_secret_value()) < MIN_KEY_LENGTH:
        raise ValueError(f"keys must be at least {MIN_KEY_LENGTH} characters long (RFC 3414)")


class SnmpSettings(Model):
    """The `snmp:` section of a device: protocol version, credentials and request pacing.

    SNMPv3's security level follows from which protocols are set: no `auth_protocol` is
    noAuthNoPriv, an `auth_protocol` alone authNoPriv, both authPriv.
    Field order matters: each rule only sees the fields declared above it.
    """

    version: Literal["2c", "3"] = "2c"
    community: SecretStr | None = Field(None, validate_default=True)
    user: str | None = Field(None, min_length=1, validate_default=True)
    auth_protocol: AuthProtocol | None = None
    auth_key: SecretStr | None = Field(None, validate_default=True)
    priv_protocol: PrivProtocol = Field("none", validate_default=True)
    priv_key: SecretStr | None = Field(None, validate_default=True)
    context: str = ""
    request_timeout: Duration = Field(1.0, description="wait for one answer before a resend")
    retries: int = Field(1, ge=0, le=10, description="resends after a timeout")
    max_repetitions: int = Field(25, ge=1, le=1000, description="rows asked per GETBULK")

    @field_validator("community")
    @classmethod
    def _community(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if info.data.get("version") == "3":
            if value is not None:
                raise ValueError("community is an SNMPv2c setting; SNMPv3 uses user and keys")
            return None
        return SecretStr("public") if value is None else value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None, info: ValidationInfo) -> str | None:
        _v3_only(value, info)
        if value is None and info.data.get("version") == "3":
            raise ValueError("SNMPv3 needs a user name")
        return value

    @field_validator("auth_protocol")
    @classmethod
    def _auth_protocol(cls, value: str | None, info: ValidationInfo) -> str | None:
        _v3_only(value, info)
        return value

    @field_validator("auth_key")
    @classmethod
    def _auth_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        _v3_only(value, info)
        protocol = info.data.get("auth_protocol")
        if protocol is not None and value is None:
            raise ValueError(f"auth_protocol {protocol} needs an auth_key (or auth_key_file)")
        if protocol is None and value is not None and "auth_protocol" in info.data:
            raise ValueError("auth_key is set but auth_protocol is not (md5, sha, sha256, ...)")
        _check_length(value)
        return value

    @field_validator("priv_protocol")
    @classmethod
    def _priv_protocol(cls, value: str, info: ValidationInfo) -> str:
        _v3_only(value, info, default="none")
        if value != "none" and "auth_protocol" in info.data and not info.data["auth_protocol"]:
            raise ValueError(f"priv_protocol {value} needs authentication too (set auth_protocol)")
        return value

    @field_validator("priv_key")
    @classmethod
    def _priv_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        _v3_only(value, info)
        protocol = info.data.get("priv_protocol")
        if protocol not in (None, "none") and value is None:
            raise ValueError(f"priv_protocol {protocol} needs a priv_key (or priv_key_file)")
        if protocol == "none" and value is not None:
            raise ValueError("priv_key is set but priv_protocol is none (des, aes, aes192, ...)")
        _check_length(value)
        return value

    @property
    def security_level(self) -> SecurityLevel:
        """The USM security level the protocols imply (SNMPv3 only)."""
        if self.auth_protocol is None:
            return "noAuthNoPriv"
        return "authNoPriv" if self.priv_protocol == "none" else "authPriv"


class SnmpAgentOptions(Model):
    """A device polled over SNMP: where its agent is and which credentials (every SNMP family's
    options extend it with their profile)."""

    address: str = Field(description="host[:port] of the device's SNMP agent (port 161 if none)")
    snmp: SnmpSettings = Field(default_factory=SnmpSettings)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if split_address(value)[1] == 0:
            raise ValueError("port 0 cannot be polled")
        return value

    @property
    def host_port(self) -> tuple[str, int]:
        """The agent's host and UDP port."""
        return split_address(self.address)


class QkdSnmpOptions(SnmpAgentOptions):
    """A QKD module polled over SNMP: where it is, which vendor profile, which credentials."""

    profile: ProfileName = Field(description="vendor family, i.e. which MIB and normalisation")


class TrapUser(SnmpSettings):
    """An SNMPv3 user the trap receiver accepts notifications from (`traps.users[i]`).

    Same keys as a device's `snmp:` section, version 3 implied. A v3 *trap* is authenticated
    with keys localised to the sender's engine ID: the receiver learns it from the first trap
    of a configured device's address; for any other sender give it as `engine_id` (hex).
    """

    version: Literal["3"] = "3"
    engine_id: str | None = Field(
        None, pattern=r"^(0x)?([0-9A-Fa-f]{2}){5,32}$", description="sender snmpEngineID, hex"
    )

    @property
    def engine_id_bytes(self) -> bytes | None:
        """The configured sender engine ID as bytes."""
        if self.engine_id is None:
            return None
        return bytes.fromhex(self.engine_id.removeprefix("0x"))


_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
"""An IPv4 address or an ASCII host name (letters, digits, dots, hyphens; up to 253)."""


class TrapOptions(Model):
    """Options of the `snmp_traps` listener (the `traps:` section, or an entry of `listeners:`
    with `type: snmp_traps`): where it listens, and whom it accepts notifications from."""

    listen: str = Field(
        "127.0.0.1:10162",
        description="address and port: IPv4 (or a name of one) 0.0.0.0:162, IPv6 in brackets "
        "[2001:db8::5]:162; [::]:162 takes IPv4 senders too (dual-stack)",
    )
    communities: list[SecretStr] = Field(
        default_factory=lambda: [SecretStr("public")],
        description="SNMPv2c communities accepted; when `users` are given and this is not, "
        "none: v2c is refused",
    )
    users: list[TrapUser] = Field(
        default_factory=list, description="SNMPv3 users (same keys as a device's snmp section)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_default_community_beside_users(cls, data: Any) -> Any:
        """A receiver configured for SNMPv3 users must not also take forged v2c notifications
        under the well-known "public": the default community applies only without users."""
        if isinstance(data, dict) and data.get("users") and "communities" not in data:
            return {**data, "communities": []}
        return data

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        """A `host:port` the receiver can bind: an IPv4 address or a name (an IPv4 socket),
        or an IPv6 address in brackets (an IPv6 one), as device addresses are written.
        Whether the host is an address of this machine is `listen_problem`'s business."""
        if value.count(":") > 1 and not value.startswith("["):
            raise ValueError("an IPv6 address goes in brackets: [::1]:162, [::]:162")
        if ":" not in value.rsplit("]", 1)[-1]:
            raise ValueError("expected host:port, e.g. 0.0.0.0:162")
        host, _ = split_address(value)
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"[{host}] is not an IPv6 address") from None
        elif not _HOST_NAME.fullmatch(host):
            raise ValueError("the host is neither an IPv4 address nor a host name")
        return value
