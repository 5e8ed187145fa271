"""The qkdtel OTDR dialect: the SCPI commands the driver sends, in one table.

Modelled on the remote interfaces of rack and bench OTDRs (EXFO FTB/IQS OTDR modules' SCPI,
the HP/Agilent E60xx OTDR programming guide): settings under SENSe in SI units with unit
suffixes, INITiate/ABORt, bit 4 of the operation status condition register while measuring,
the trace as a REAL,32 block (or ASCII), the event table one event at a time as
`distance,type,loss,reflectance,cumulative` with EXFO's type codes. No two vendors agree on
these commands: a real instrument gets its own table (`OTDR_TABLE.extend(...)`), the driver
only speaks the names on the left. `sims/otdr/instrument.py` serves this dialect.
"""

from __future__ import annotations

from qkdtel.drivers.otdr.trace import EventType
from qkdtel.drivers.scpi import (
    action,
    control,
    ieee488_table,
    integer,
    measurement,
    scaled,
    setting,
)

MEASURING = 16
"""Bit 4 of the operation status condition register: an acquisition is running."""

SCPI_NAN = 9.91e37
"""What SCPI instruments answer for "not a number" (a loss they could not measure)."""

EVENT_TYPES = {
    1: EventType.NON_REFLECTIVE,
    2: EventType.NON_REFLECTIVE,
    3: EventType.REFLECTIVE,
    4: EventType.END,
}
"""Event type codes: 1 splice (loss), 2 gainer, 3 reflection, 4 end of fibre."""

OTDR_TABLE = ieee488_table(
    "qkdtel OTDR dialect",
    wavelength_nm=control(
        ":SENSe:WAVelength?",
        ":SENSe:WAVelength {value:d}NM",
        parse=scaled(1e9),
        doc="laser wavelength (answer in m)",
    ),
    pulse_width_ns=control(
        ":SENSe:PULSe:WIDTh?",
        ":SENSe:PULSe:WIDTh {value:g}NS",
        parse=scaled(1e9),
        doc="pulse width (answer in s)",
    ),
    range_m=control(":SENSe:RANGe?", ":SENSe:RANGe {value:g}M", doc="acquisition range"),
    averaging_s=control(
        ":SENSe:AVERage:TIME?", ":SENSe:AVERage:TIME {value:g}S", doc="averaging time"
    ),
    data_format=setting(":FORMat:DATA {value}", doc="REAL,32 or ASCii"),
    byte_order=setting(":FORMat:BORDer {value}", doc="NORMal (big-endian) or SWAPped"),
    start=action(":INITiate:IMMediate", doc="start one acquisition"),
    abort=action(":ABORt", check=False, doc="stop the acquisition (sent on recovery too)"),
    condition=measurement(":STATus:OPERation:CONDition?", parse=integer, doc="bit 4: measuring"),
    progress=measurement(":SENSe:AVERage:PROGress?", parse=float, doc="percent done"),
    points=measurement(":TRACe:POINts?", parse=integer),
    spacing_m=measurement(":TRACe:SPACing?", parse=float, doc="metres between samples"),
    offset_m=measurement(":TRACe:OFFSet?", parse=float, doc="distance of the first sample"),
    trace=measurement(":TRACe:DATA?", doc="samples in dB (5 log scale)"),
    event_count=measurement(":CALCulate:EVENt:COUNt?", parse=integer),
    event=measurement(":CALCulate:EVENt? {index}", doc="distance,type,loss,reflectance,cumul."),
    fibre_length_m=measurement(":CALCulate:FLENgth?", parse=float),
    total_loss_db=measurement(":CALCulate:TLOSs?", parse=float),
)
