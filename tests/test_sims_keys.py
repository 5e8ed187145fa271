"""`qkdtel sims keys` as an operator runs it: a KME, a QRNG and two encryptors on loopback,
their certificates and a collector configuration written out, every device pollable."""

from __future__ import annotations

import asyncio

from qkdtel.config import load_config
from qkdtel.poller import DevicePoller
from tests.sims_cli import refused, start, stop


def poll_all(config_path):
    loaded = load_config(config_path)

    async def main():
        pollers = [DevicePoller.create(d, max_backoff=60.0) for d in loaded.devices]
        try:
            return await asyncio.gather(*(p.poll() for p in pollers))
        finally:
            await asyncio.gather(*(p.driver.aclose() for p in pollers))

    return asyncio.run(main())


def test_sims_keys_serves_the_key_delivery_chain(tmp_path):
    config = tmp_path / "keys.yaml"
    args = ["keys", "--pki-dir", str(tmp_path / "pki"), "--config-out", str(config)]
    process = start([*args, "--speed", "50"], config, tmp_path / "log")
    try:
        results = poll_all(config)
    finally:
        code = stop(process)
    assert code == 0
    assert [(r.device, r.ok, r.error) for r in results] == [
        ("kme-quevedo", True, ""),
        ("qrng-quevedo", True, ""),
        ("sitline-quevedo", True, ""),
        ("adva-quevedo", True, ""),
    ]
    measurements = {s.measurement for r in results for s in r.samples}
    assert measurements >= {"kme_key_store", "qrng", "encryptor_association", "encryptor_port"}
    assert (tmp_path / "pki" / "client-key.pem").stat().st_mode & 0o077 == 0


def test_sims_keys_refuses_bad_arguments_in_one_line(tmp_path):
    result = refused(["keys", "--pki-dir", str(tmp_path), "--speed", "0"])
    assert result.returncode == 2
    assert "--speed" in result.stderr and "must be > 0" in result.stderr
    assert "Traceback" not in result.stderr
