"""Quantum random number generators over HTTPS (see README.md)."""

from qkdtel.drivers.qrng.driver import QrngDriver

__all__ = ["QrngDriver"]
