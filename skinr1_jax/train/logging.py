"""Progress bar, metrics.jsonl and TensorBoard event files (written without TensorFlow).

The TensorBoard writer encodes the two protobufs it needs (Event, Summary with scalar values)
and the TFRecord framing (length, masked CRC32C) by hand: about 60 lines instead of a
TensorFlow or tensorboardX dependency.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from tqdm import tqdm

# ---- CRC32C (Castagnoli), table-driven -------------------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


# ---- protobuf wire format for tensorboard's Event / Summary -----------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    return _varint((num << 3) | wire) + payload


def _bytes_field(num: int, data: bytes) -> bytes:
    return _field(num, 2, _varint(len(data)) + data)


def event_bytes(wall_time: float, step: int, *, file_version: str | None = None,
                scalars: Mapping[str, float] | None = None) -> bytes:
    """Serialized tensorboard Event: wall_time=1 (double), step=2 (int64), file_version=3,
    summary=5 (Summary.value=1: Value.tag=1, Value.simple_value=2 (float))."""
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", v)))
            for tag, v in scalars.items())
        out += _bytes_field(5, summary)
    return out


class TensorBoardWriter:
    """Scalars into `<logdir>/events.out.tfevents.<time>.<host>`."""

    def __init__(self, logdir: str | os.PathLike):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self.path = os.path.join(os.fspath(logdir), name)
        self._f = open(self.path, "ab")
        self._f.write(tfrecord(event_bytes(time.time(), 0, file_version="brain.Event:2")))
        self._f.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._f.write(tfrecord(event_bytes(time.time(), step, scalars=values)))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _to_float(v: Any) -> float:
    return float(np.asarray(v))


class MetricsWriter:
    """Appends one JSON object per logged step to `<workdir>/metrics.jsonl` (keys: stage, step,
    the metrics, time) and mirrors the scalars to TensorBoard under `<workdir>/tb/<stage>`."""

    def __init__(self, workdir: str | os.PathLike, stage: str, *, tensorboard: bool = True,
                 is_main_process: bool = True):
        self.stage = stage
        self.enabled = is_main_process
        self.path = os.path.join(os.fspath(workdir), "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(os.fspath(workdir), exist_ok=True)
            if tensorboard:
                self._tb = TensorBoardWriter(os.path.join(os.fspath(workdir), "tb", stage))

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Log `metrics` (device or host scalars); returns the row written. Non-finite values
        are written as null in JSON and skipped in TensorBoard."""
        values = {k: _to_float(v) for k, v in metrics.items()}
        row = {"stage": self.stage, "step": int(step), "time": time.time()}
        row.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if self._tb is not None:
                self._tb.scalars(int(step), {k: v for k, v in values.items() if math.isfinite(v)})
        return row

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | os.PathLike, stage: str | None = None) -> list[dict[str, Any]]:
    """Rows of `<workdir>/metrics.jsonl` (optionally of one stage)."""
    path = os.path.join(os.fspath(workdir), "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if stage is None or r.get("stage") == stage]


class ProgressBar:
    """tqdm bar over training steps showing steps/s, loss, reward and ETA."""

    def __init__(self, total: int, stage: str, *, initial: int = 0, disable: bool = False):
        self._bar = tqdm(total=total, initial=initial, desc=stage, unit="step", disable=disable,
                         dynamic_ncols=True,
                         bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
                                    "{rate_fmt}] {postfix}")

    def update(self, n: int = 1, metrics: Mapping[str, Any] | None = None) -> None:
        if metrics:
            shown = {k: f"{_to_float(metrics[k]):.4g}" for k in ("loss", "reward/total")
                     if k in metrics}
            self._bar.set_postfix({k.replace("reward/total", "reward"): v
                                   for k, v in shown.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()
