"""TensorBoard event files (`events.out.tfevents.*`) beside metrics.jsonl, written without TensorBoard.

`torch.utils.tensorboard` needs the `tensorboard` package (with protobuf and grpcio), which is not in the
WebUI's pins; the scalar events TensorBoard reads are small enough to write here: TFRecord framing
(length, masked CRC-32C of the length, data, masked CRC-32C of the data) around a hand-encoded
`Event` protobuf (wall_time = 1, step = 2, file_version = 3, summary = 5 holding Value{tag = 1,
simple_value = 2}). Point TensorBoard at the model's `logging/` folder.
"""
from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path

EVENT_PREFIX = "events.out.tfevents."
_FILE_NUMBERS = itertools.count()
_CRC_TABLE = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0x82F63B78 if _crc & 1 else _crc >> 1  # Castagnoli polynomial (reflected)
    _CRC_TABLE.append(_crc)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC: rotated right by 15 bits plus a constant, so CRCs of CRCs stay distinct."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= 0xFFFFFFFFFFFFFFFF  # int64 fields: negatives as two's complement, as protobuf does
    while True:
        low = value & 0x7F
        value >>= 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    """One serialized `Event`: the file-version header or a summary of scalar values."""
    event = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(int(step))
    if file_version is not None:
        return event + _length_delimited(3, file_version.encode())
    values = b"".join(_length_delimited(1, _length_delimited(1, tag.encode()) + _field(2, 5)
                                        + struct.pack("<f", float(value)))
                      for tag, value in (scalars or {}).items())
    return event + _length_delimited(5, values)


def frame(record: bytes) -> bytes:
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", masked_crc(length)) + record + struct.pack("<I", masked_crc(record))


class EventWriter:
    """Appends scalar events to a new events file in `folder` (one per run, as TensorBoard expects)."""

    def __init__(self, folder: Path, fresh: bool = True):
        folder.mkdir(parents=True, exist_ok=True)
        if fresh:  # a new run starts its charts afresh, like metrics.jsonl; a resumed run adds a file
            for old in folder.glob(EVENT_PREFIX + "*"):
                old.unlink(missing_ok=True)
        now = time.time()
        # time first (TensorBoard reads the files in name order), then what keeps two runs apart
        self.path = folder / f"{EVENT_PREFIX}{int(now)}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_NUMBERS)}"
        self._write([encode_event(now, 0, file_version="brain.Event:2")])

    def add(self, points: list[tuple[int, dict[str, float]]]) -> None:
        """Append one event per (step, {tag: value}), in one write."""
        now = time.time()
        self._write([encode_event(now, step, scalars) for step, scalars in points])

    def _write(self, records: list[bytes]) -> None:
        with open(self.path, "ab") as handle:
            handle.write(b"".join(frame(record) for record in records))
