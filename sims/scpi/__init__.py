"""Simulated SCPI instruments: the `ScpiServer` base class and its background runner.

    class PowerMeterSim(ScpiServer):
        identity = "ACME,PM100,0001,1.0"

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.wavelength_nm = 1550.0
            self.add(":SENSe:CORRection:WAVelength", write=self._set_wl, query=self._get_wl)
            self.add(":MEASure:POWer", query=lambda args: "-12.5")

    with ServerThread([PowerMeterSim()], pty=True) as thread:
        sim = thread.servers[0]
        sim.resource          # TCPIP::127.0.0.1::<port>::SOCKET
        sim.serial_resource   # ASRL/dev/pts/<n>::INSTR (with pty=True)
        sim.faults.stall = True                     # stop answering
        sim.faults.errors[":MEASure:POWer"] = (-230, "Data corrupt or stale")
        sim.received()                              # what the driver sent

See `server.py` for the protocol details and the fault knobs.
"""

from qkdtel.sims.scpi.server import (
    Block,
    Faults,
    Received,
    ScpiFailure,
    ScpiServer,
    ServerThread,
    split_arguments,
)

__all__ = [
    "Block",
    "Faults",
    "Received",
    "ScpiFailure",
    "ScpiServer",
    "ServerThread",
    "split_arguments",
]
