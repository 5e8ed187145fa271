"""Optical spectrum analysers over VISA/SCPI (see README.md): Yokogawa AQ6370 and Anritsu
MS9740A command sets behind one API (`OsaControl`), ITU-grid analysis, the `osa` driver."""

from qkdtel.drivers.osa.analysis import Analysis, ChannelResult, NotchResult, SpectrumTrace, analyse
from qkdtel.drivers.osa.driver import OsaDriver
from qkdtel.drivers.osa.osa import OsaControl, SweepSettings
from qkdtel.drivers.osa.profiles import ANRITSU, PROFILES, YOKOGAWA, OsaProfile

__all__ = [
    "ANRITSU",
    "PROFILES",
    "YOKOGAWA",
    "Analysis",
    "ChannelResult",
    "NotchResult",
    "OsaControl",
    "OsaDriver",
    "OsaProfile",
    "SpectrumTrace",
    "SweepSettings",
    "analyse",
]
