"""TensorBoard event files written directly: scalars only, no ``tensorboard`` package needed.

Why not ``torch.utils.tensorboard.SummaryWriter``: it needs the ``tensorboard`` package (and
through it grpcio, protobuf, werkzeug, ...) on every cluster node, for a file format that
is 60 lines: TFRecord framing (length, masked CRC-32C of the length, payload, masked CRC-32C
of the payload) around ``Event`` protocol buffers, of which scalars need four fields
(``wall_time``, ``step``, ``file_version``, ``summary.value[tag, simple_value]``). The tests
read the files back with tensorboard's own ``EventAccumulator`` (a test dependency).
"""
from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # CRC-32C (Castagnoli), reflected
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # int64 as two's complement, as protobuf writes negative numbers
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited (wire type 2)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int, *, version: str | None = None,
          scalars: dict[str, float] | None = None) -> bytes:
    """One serialized ``tensorflow.Event``."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(int(step))
    if version is not None:
        out += _field(3, version.encode())
    if scalars:
        values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", float(v)))
                          for tag, v in scalars.items())
        out += _field(5, values)
    return out


def record(payload: bytes) -> bytes:
    """``payload`` framed as one TFRecord."""
    n = struct.pack("<Q", len(payload))
    return n + struct.pack("<I", _masked(n)) + payload + struct.pack("<I", _masked(payload))


class EventWriter:
    """Scalars into ``logdir/events.out.tfevents.<time>.<host>.<pid>``, flushed after every
    :meth:`scalars` call, so TensorBoard (and a killed run) sees what was written."""

    def __init__(self, logdir: str | os.PathLike):
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.harness"
        self.path = logdir / name
        self._f = open(self.path, "ab")
        self._f.write(record(event(time.time(), 0, version="brain.Event:2")))
        self._f.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if values:
            self._f.write(record(event(time.time(), step, scalars=values)))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
