"""TensorBoard event files, written without TensorBoard's writer.

An event file is a sequence of TFRecords, each ``uint64 length | masked CRC32C of the length |
data | masked CRC32C of the data``, whose data is a serialised ``tensorboard.Event`` protobuf. For
scalars only three messages matter, and their encoding is short enough to write by hand:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

Why not ``torch.utils.tensorboard.SummaryWriter``: ``add_scalar`` makes one event (one record,
one protobuf, one queue hand-off) per metric, and TensorBoard's fallback CRC32C is pure Python,
~0.35 us per byte, run on a writer thread that holds the GIL and blocks ``add_scalar`` when its
10-slot queue is full. With ~30-40 metrics per update that was ~1 ms of a 1.6 ms A2C update.
Here an update is one event holding all its scalars (TensorBoard shows them exactly as before),
and the CRCs of a whole batch of records are computed at once with NumPy (``crc32c_many``).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path

import numpy as np

from pgrad import safe_io

# ---- CRC-32C (Castagnoli), vectorised over many messages ----------------------------------------
#
# Byte-wise, CRC-32C updates its state s with s <- A(s) ^ T[b], where T is the usual 256-entry table
# and A(s) = T[s & 0xFF] ^ (s >> 8) is the state pushed through one zero byte. Both are linear over
# GF(2), so for a message m of n bytes
#     s_n = A^n(0xFFFFFFFF) ^ XOR_i P[n-1-i][m_i],   P[k][b] = A^k(T[b]),   crc = s_n ^ 0xFFFFFFFF:
# one table gather per byte and one XOR-reduction per message, for any number of messages at once.
# P grows on demand (to the longest message seen, at most _MAX_ROWS rows of 1 KiB); longer
# messages take the byte-at-a-time loop.

_POLY = 0x82F63B78  # CRC-32C, reflected
_MAX_ROWS = 4096


def _byte_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1).astype(np.uint32)
    return table


_T = _byte_table()
_T_LIST = [int(x) for x in _T]


class _PositionTables:
    """``rows[k] = P[k]`` and ``start[k] = A^k(0xFFFFFFFF)``, k < len(rows) (= len(start))."""

    def __init__(self) -> None:
        rows = [_T]
        start = [0xFFFFFFFF]
        for _ in range(255):  # the first 256 rows one zero byte at a time
            rows.append(_T[rows[-1] & 0xFF] ^ (rows[-1] >> 8))
            start.append(_T_LIST[start[-1] & 0xFF] ^ (start[-1] >> 8))
        self.rows = np.stack(rows)
        self.start = np.array(start, dtype=np.uint32)

    def shift(self, values: np.ndarray, k: int) -> np.ndarray:
        """A^k applied to 32-bit ``values`` (k >= 4): byte t of a state reaches the low byte after t
        shifts, then is a table byte: A^k(x) = XOR_t P[k-1-t][byte_t(x)]."""
        rows = self.rows
        out: np.ndarray = rows[k - 1][values & 0xFF]  # numpy's stub types fancy indexing as Any
        for t in range(1, 4):
            out ^= rows[k - 1 - t][(values >> (8 * t)) & 0xFF]
        return out

    def ensure(self, length: int) -> None:
        while len(self.rows) < length:
            have = len(self.rows)
            extra = min(have, length - have)
            # P[have + k] = A^have(P[k]) and start[have + k] = A^have(start[k]), k < extra
            self.rows = np.concatenate([self.rows, self.shift(self.rows[:extra], have)])
            self.start = np.concatenate([self.start, self.shift(self.start[:extra], have)])


_TABLES: _PositionTables | None = None


def _crc32c_bytewise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _T_LIST[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c_many(messages: list[bytes]) -> list[int]:
    """CRC-32C of each message (as ``crc32c.crc32c`` / TensorBoard's ``crc32c`` compute it)."""
    global _TABLES
    if not messages:
        return []
    lengths = np.fromiter((len(m) for m in messages), dtype=np.int64, count=len(messages))
    fits = (lengths > 0) & (lengths <= _MAX_ROWS)
    result = np.zeros(len(messages), dtype=np.uint32)
    if fits.any():
        if _TABLES is None:
            _TABLES = _PositionTables()
        _TABLES.ensure(int(lengths[fits].max()) + 1)  # start[n] for n-byte messages
        chosen = np.flatnonzero(fits)
        data = np.frombuffer(b"".join(messages[i] for i in chosen), dtype=np.uint8)
        sizes = lengths[chosen]
        starts = np.cumsum(sizes) - sizes
        # The bytes after each byte in its message: n-1 at a message's first byte, then down by one.
        steps = np.full(len(data), -1, dtype=np.int32)
        steps[starts] = sizes - 1
        distance = np.cumsum(steps, dtype=np.int32)
        terms = _TABLES.rows.reshape(-1)[distance * 256 + data]
        state = np.bitwise_xor.reduceat(terms, starts) ^ _TABLES.start[sizes]
        result[chosen] = state ^ np.uint32(0xFFFFFFFF)
    out: list[int] = result.tolist()  # a uint32 array's items are ints
    for i in np.flatnonzero(~fits):
        out[i] = _crc32c_bytewise(messages[i])
    return out


def masked_crc32c_many(messages: list[bytes]) -> list[int]:
    """The TFRecord checksum: the CRC rotated right by 15 bits plus a constant."""
    return [((c >> 15) | (c << 17)) + 0xA282EAD8 & 0xFFFFFFFF for c in crc32c_many(messages)]


# ---- protobuf encoding ---------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64: negatives as their two's complement, 10 bytes
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _value_prefix(tag: str) -> bytes:
    """Summary.value entry for ``tag`` up to its 4 float bytes: 0x0A len(Value) 0x0A len(tag) tag 0x15."""
    encoded = tag.encode()
    inner = _field_bytes(1, encoded) + b"\x15"
    return b"\x0a" + _varint(len(inner) + 4) + inner


def event_bytes(wall_time: float, step: int, summary: bytes | None = None, file_version: str | None = None) -> bytes:
    # proto3 leaves out fields at their default (step 0), as protobuf's own serialiser does
    """One TensorBoard ``Event`` protobuf, serialised by hand (wall time, step, summary or file version)."""
    data = b"\x09" + struct.pack("<d", wall_time) + (b"\x10" + _varint(step) if step else b"")
    if file_version is not None:
        data += _field_bytes(3, file_version.encode())
    if summary is not None:
        data += _field_bytes(5, summary)
    return data


def records(events: list[bytes]) -> bytes:
    """TFRecord framing of serialised events, their checksums computed in one batch."""
    headers = [struct.pack("<Q", len(e)) for e in events]
    crcs = masked_crc32c_many(headers + events)
    n = len(events)
    return b"".join(
        headers[i] + struct.pack("<I", crcs[i]) + events[i] + struct.pack("<I", crcs[n + i]) for i in range(n)
    )


_file_counter = itertools.count()

# Per event of one tag list: its struct layout, the pack arguments (tag prefix bytes and float value,
# alternating; the values are written in place), and the range of tags it holds.
Plan = list[tuple[struct.Struct, list[bytes | float], int, int]]


class ScalarEventFile:
    """An append-only TensorBoard event file of scalars, buffered in memory until ``flush``."""

    MAX_SUMMARY_BYTES = 1024  # longer updates are split into several events at the same step

    def __init__(self, logdir: Path) -> None:
        Path(logdir).mkdir(parents=True, exist_ok=True)
        now = time.time()
        # The name TensorBoard's own writer uses: events.out.tfevents.<time>.<host>.<pid>.<counter>
        name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_counter)}"
        self.path = Path(logdir) / name
        self.handle = safe_io.open_new(self.path)  # a fresh name: a link planted there is refused
        self.pending: list[bytes] = []  # serialised events not yet on disk
        self.plans: dict[tuple[str, ...], Plan] = {}
        self.pending.append(event_bytes(now, 0, file_version="brain.Event:2"))
        self.flush()

    def add_scalars(self, step: int, tags: list[str], values: list[float], wall_time: float) -> None:
        """One update's scalars: an event (several past ``MAX_SUMMARY_BYTES``) at ``step``.

        The same tags come back every update, so each tag list gets a plan: its events' layouts as
        ``struct`` formats (prefix bytes, float, prefix bytes, float, ...), packed in one call per event.
        Values beyond float32's range make ``struct`` refuse; they go through NumPy, which gives +-inf
        (as TensorBoard's writer does)."""
        key = tuple(tags)
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = self.plan(tags)
        try:
            bodies = self.pack(plan, values)
        except (OverflowError, struct.error):
            with np.errstate(over="ignore"):
                bodies = self.pack(plan, np.asarray(values, dtype=np.float64).astype(np.float32).tolist())
        self.pending.extend(event_bytes(wall_time, step, body) for body in bodies)

    def add_restart(self, step: int, wall_time: float) -> None:
        """A ``SessionLog.START`` event at ``step`` (Event field 7, status 1): TensorBoard's readers then
        drop every event they have read with a step >= ``step`` (the purge a resumed run needs; the
        files keep their bytes)."""
        self.pending.append(event_bytes(wall_time, step) + _field_bytes(7, b"\x08\x01"))

    @staticmethod
    def pack(plan: Plan, values: list[float]) -> list[bytes]:
        """The event bodies of one update: the ``values`` put into each event's layout in ``plan``."""
        bodies = []
        for layout, args, first, last in plan:
            args[1::2] = values[first:last]
            bodies.append(layout.pack(*args))
        return bodies

    def plan(self, tags: list[str]) -> Plan:
        """Per event: its struct layout, an argument list with the prefixes in place, its tag range."""
        plan: Plan = []
        formats: list[str] = []
        args: list[bytes | float] = []
        start, size = 0, 0
        for index, tag in enumerate(tags):
            prefix = _value_prefix(tag)
            if size + len(prefix) + 4 > self.MAX_SUMMARY_BYTES and formats:
                plan.append((struct.Struct("<" + "".join(formats)), args, start, index))
                start, size, formats, args = index, 0, [], []
            formats.append(f"{len(prefix)}sf")
            args += [prefix, 0.0]
            size += len(prefix) + 4
        if formats:
            plan.append((struct.Struct("<" + "".join(formats)), args, start, len(tags)))
        return plan

    def flush(self) -> None:
        """Writes the buffered events as records (unless the file is closed)."""
        if self.pending and not self.handle.closed:
            events, self.pending[:] = list(self.pending), []
            self.handle.write(records(events))

    def close(self) -> None:
        """Flushes and closes the file, once."""
        if not self.handle.closed:
            self.flush()
            self.handle.close()
