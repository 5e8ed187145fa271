"""Shared SCPI/VISA layer: transport, command tables, error queue, `*OPC?`, binary blocks.

Every SCPI instrument driver (OSA, OTDR, power meters) is built from the same four pieces:

1. **Settings** -- `VisaSettings` is the `visa:` section of a device in the configuration file
   (resource name, per-operation timeout, terminations, chunk size, serial line settings);
   put it in the driver's options model as `visa: VisaSettings`.
2. **A command table per dialect** -- `CommandTable` maps our names to the instrument's
   commands, declared once like PyMeasure's `Instrument.control`; start from `ieee488_table()`
   (`*IDN?`, `*CLS`, `*OPC?`, `*RST`, `:SYSTem:ERRor?`) and add `control()`, `setting()`,
   `action()`, `measurement()` entries. An `abort` entry is sent when the instrument is
   recovered after a timeout. Say in the table which manual each command comes from.
3. **An instrument** -- `ScpiInstrument(settings, table)`, one per driver instance. Instances
   for the same resource (in any spelling) share one lock and one connection.
4. **Jobs** -- all I/O happens in `with instrument.job(budget) as job:` (blocking: call it from
   `BlockingDriver.poll_blocking`, i.e. a worker thread). In a job:

       job.set("center_nm", 1550.0)        # write, then read SYST:ERR? to its end
       job.run("single_sweep")              # an action; same checks
       job.wait_complete(limit=60)          # *OPC?, however long the sweep, within the budget
       job.wait_until("sweep_status", lambda v: v & 1, limit=60)   # or poll a status register
       n = job.get("points")                # query + parse
       y = job.query_block("trace_y", "<f8", expected=n)   # IEEE 488.2 #<n><len> block
       y = job.query_values("trace_y", expected=n)         # ASCII fallback

Errors are the SDK's `PollError` classes and always name the resource and the command:
`ScpiError` (an `InstrumentError`, kind `instrument_error`: the instrument's own error-queue
entries, `.command`, `.errors`), `DeviceTimeout` (no answer within the operation's limit or the
job's budget; also a busy instrument), `Malformed` (unparsable answer, truncated block, wrong
point count), `Refused` (cannot connect / no such serial port), `ConnectionLost` (an open
connection reset or closed by the instrument). After a timeout or garbled answer the instrument is
recovered (fresh connection, device clear, `abort`, `*CLS`, `*OPC?`) before it is used again.

The simulator side of the same protocol (TCP and pty servers, dispatch table, error queue,
blocks, fault knobs) is `qkdtel.sims.scpi`.
"""

from qkdtel.drivers.scpi.blocks import ascii_values, block_values, decode_block, encode_block
from qkdtel.drivers.scpi.commands import (
    Command,
    CommandTable,
    action,
    control,
    error_entry,
    in_range,
    integer,
    measurement,
    one_of,
    scaled,
    setting,
)
from qkdtel.drivers.scpi.instrument import (
    ScpiInstrument,
    ieee488_table,
    operation_budget,
    poll_budget,
)
from qkdtel.drivers.scpi.job import Job, ScpiError
from qkdtel.drivers.scpi.transport import VisaSettings, canonical_resource, visa_errors

__all__ = [
    "Command",
    "CommandTable",
    "Job",
    "ScpiError",
    "ScpiInstrument",
    "VisaSettings",
    "action",
    "ascii_values",
    "block_values",
    "canonical_resource",
    "control",
    "decode_block",
    "encode_block",
    "error_entry",
    "ieee488_table",
    "in_range",
    "integer",
    "measurement",
    "one_of",
    "operation_budget",
    "poll_budget",
    "scaled",
    "setting",
    "visa_errors",
]
