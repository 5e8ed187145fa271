"""Simulated optical spectrum analysers on links of the simulated network (`qkdtel sims osa`).

`OsaSimulator(dialect, link)` is a SCPI server (Yokogawa AQ6370-class or Anritsu MS9740A-class
command set) whose sweeps show the link's spectrum (`spectrum.py`): classical data and service
channels as published, the CV quantum channels' notch, the link's loss from the topology.
"""

from qkdtel.sims.osa.server import DIALECTS, OsaFaults, OsaSimulator, Sweep
from qkdtel.sims.osa.spectrum import PUBLISHED_PLANS, Carrier, LinkSpectrum, link_spectrum

__all__ = [
    "DIALECTS",
    "PUBLISHED_PLANS",
    "Carrier",
    "LinkSpectrum",
    "OsaFaults",
    "OsaSimulator",
    "Sweep",
    "link_spectrum",
]
