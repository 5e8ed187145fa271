"""How to reach a NETCONF server: the options every NETCONF driver and listener share."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from qkdtel.sdk import Duration, Model


class NetconfConnection(Model):
    """SSH transport and credentials of one NETCONF server (RFC 6242).

    Host keys are verified by default against `known_hosts` (OpenSSH format, `ssh-keyscan -p
    830 host >> file` fills it); turning that off is explicit (`host_key_verify: false`),
    because the session carries commands that move fibres.
    """

    address: str = Field(min_length=1, description="host name or IP address of the server")
    port: int = Field(830, ge=1, le=65535, description="NETCONF over SSH port (IANA: 830)")
    username: str = Field(min_length=1)
    password: SecretStr | None = Field(
        None, description="SSH password, or the passphrase of key_file; never logged"
    )
    key_file: Path | None = Field(None, description="SSH private key (OpenSSH or PEM)")
    known_hosts: Path | None = Field(
        None, description="known_hosts file the server's host key must be in"
    )
    host_key_verify: bool = Field(True, description="false accepts any host key (lab only)")
    connect_timeout: Duration = Field(10.0, le=300, description="TCP and SSH set-up")
    reconnect_backoff: Duration = Field(
        1.0, le=3600, description="wait after a failed connection, doubled up to the maximum"
    )
    reconnect_backoff_max: Duration = Field(60.0, le=3600)

    @model_validator(mode="after")
    def _host_keys_known(self) -> NetconfConnection:
        if self.host_key_verify and self.known_hosts is None:
            raise ValueError(
                "host_key_verify is on: give known_hosts (or set host_key_verify: false)"
            )
        if self.password is None and self.key_file is None:
            raise ValueError("give password or key_file for SSH authentication")
        return self

    @property
    def where(self) -> str:
        """`host:port`, for messages."""
        return f"{self.address}:{self.port}"
