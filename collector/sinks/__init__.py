"""Sink writers: where the delivery sends the spooled line protocol.

One writer per configured sink; `make_writer` picks the class by the sink's `type`.
"""

from __future__ import annotations

from qkdtel.config import FileSink, InfluxV1Sink, InfluxV2Sink
from qkdtel.sinks.base import (
    RejectedWriteError,
    RetryableWriteError,
    SinkWriter,
    WriteError,
)
from qkdtel.sinks.file import FileWriter
from qkdtel.sinks.influx_v1 import InfluxV1Writer
from qkdtel.sinks.influx_v2 import InfluxV2Writer
from qkdtel.sinks.isolate import write_batch

__all__ = [
    "FileWriter",
    "InfluxV1Writer",
    "InfluxV2Writer",
    "RejectedWriteError",
    "RetryableWriteError",
    "SinkWriter",
    "WriteError",
    "make_writer",
    "write_batch",
]


def make_writer(sink: InfluxV2Sink | InfluxV1Sink | FileSink) -> SinkWriter:
    """The writer for one configured sink."""
    if isinstance(sink, InfluxV2Sink):
        return InfluxV2Writer(sink)
    if isinstance(sink, InfluxV1Sink):
        return InfluxV1Writer(sink)
    return FileWriter(sink)
