"""The metric sinks buffer; these tests check that nothing written is lost or reordered, and that the
hand-written TensorBoard files read back as TensorBoard's own writer would have made them."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pgrad.monitor import tfevents
from pgrad.monitor.sinks import JsonlSink, TensorBoardSink, read_jsonl, tensorboard_sink

SRC = str(Path(__file__).resolve().parents[1] / "src")


def rows(n: int) -> list[dict]:
    return [
        {"step": 40 * (i + 1), "update": i + 1, "train/loss": 0.5 / (i + 1), "perf/steps_per_second": 1e4 + i}
        for i in range(n)
    ]


def test_jsonl_rows_are_buffered_then_all_on_disk_in_order_after_flush(tmp_path):
    path = tmp_path / "metrics.jsonl"
    sink = JsonlSink(path, flush_seconds=3600.0)
    written = rows(500)
    for row in written[:200]:
        sink.write(row)
    sink.flush()
    assert read_jsonl(path) == written[:200]
    for row in written[200:]:
        sink.write(row)
    sink.close()
    assert read_jsonl(path) == written
    sink.close()  # twice is harmless, and so is a flush after close (the runner's train() may do both)
    sink.flush()


def test_jsonl_flushes_by_itself_every_flush_seconds(tmp_path):
    path = tmp_path / "metrics.jsonl"
    sink = JsonlSink(path, flush_seconds=0.0)  # due at every write
    sink.write({"step": 1, "a/b": 1.0})
    assert read_jsonl(path) == [{"step": 1, "a/b": 1.0}]
    sink.close()


def test_jsonl_format_is_unchanged_nonfinite_as_strings(tmp_path):
    path = tmp_path / "metrics.jsonl"
    sink = JsonlSink(path)
    sink.write({"step": 1, "train/loss": math.nan, "train/x": math.inf, "train/y": -math.inf, "n": "NaN-free"})
    sink.write({"step": 2, "train/loss": 1.25, "flag": True, "none": None})
    sink.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {
        "step": 1,
        "train/loss": "nan",
        "train/x": "inf",
        "train/y": "-inf",
        "n": "NaN-free",
    }
    assert lines[1] == json.dumps({"step": 2, "train/loss": 1.25, "flag": True, "none": None})
    assert "NaN" not in lines[0].replace("NaN-free", "")


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )


def test_rows_survive_an_uncaught_keyboard_interrupt(tmp_path):
    # A second Ctrl-C raises KeyboardInterrupt out of the training loop; nothing calls close(), yet
    # every row written before it must be in the file when the process has exited.
    result = _run_python(f"""
        from pathlib import Path
        from pgrad.monitor.sinks import JsonlSink, TensorBoardSink
        sink = JsonlSink(Path({str(tmp_path / "metrics.jsonl")!r}), flush_seconds=3600.0)
        board = TensorBoardSink(Path({str(tmp_path / "tb")!r}), flush_seconds=3600.0)
        for i in range(1000):
            sink.write({{"step": i, "train/loss": float(i)}})
            board.write({{"step": i, "train/loss": float(i)}})
        raise KeyboardInterrupt
    """)
    assert "KeyboardInterrupt" in result.stderr
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == list(range(1000))
    (event_file,) = (tmp_path / "tb").iterdir()
    assert len(list(_read_records(event_file))) == 1 + 1000  # file version + one event per row


def test_a_hard_kill_keeps_the_flushed_rows(tmp_path):
    # SIGKILL: no Python code runs any more. What flush() wrote (the runner flushes before every
    # checkpoint) is in the file; the partial tail, if any, is what read_jsonl skips.
    result = _run_python(f"""
        import os, signal
        from pathlib import Path
        from pgrad.monitor.sinks import JsonlSink
        sink = JsonlSink(Path({str(tmp_path / "metrics.jsonl")!r}), flush_seconds=3600.0)
        for i in range(300):
            sink.write({{"step": i}})
        sink.flush()
        for i in range(300, 310):
            sink.write({{"step": i}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert result.returncode == -9
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == list(range(300))


# ---- TensorBoard ----------------------------------------------------------------------------------


def _read_records(path: Path):
    """TFRecords of an event file, checking both checksums with an independent (bytewise) CRC."""
    import struct

    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        payload = data[offset + 12 : offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert header_crc == _masked(tfevents._crc32c_bytewise(header))
        assert payload_crc == _masked(tfevents._crc32c_bytewise(payload))
        yield payload
        offset += 16 + length


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_of_many_messages_matches_the_bytewise_definition():
    rng = random.Random(0)
    lengths = [1, 2, 3, 4, 5, 8, 255, 256, 257, 1023, 1024, 1025, 4095, 4096, 4097, 6000]
    lengths += [rng.randint(1, 3000) for _ in range(40)]
    messages = [bytes(rng.getrandbits(8) for _ in range(n)) for n in lengths]
    assert tfevents.crc32c_many(messages) == [tfevents._crc32c_bytewise(m) for m in messages]
    assert tfevents.crc32c_many([b"123456789"]) == [0xE3069283]  # the CRC-32C check value (RFC 3720)


def test_crc32c_agrees_with_tensorboard():
    pytest.importorskip("tensorboard")
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    rng = random.Random(1)
    messages = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2500))) for _ in range(30)]
    assert tfevents.masked_crc32c_many(messages) == [masked_crc32c(m) for m in messages]


def test_events_encode_as_tensorboards_protobuf():
    pytest.importorskip("tensorboard")
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    file = tfevents.ScalarEventFile.__new__(tfevents.ScalarEventFile)
    file.pending, file.plans = [], {}
    tags = ["train/loss", "x" * 200, "perf/é"]
    file.add_scalars(123456789, tags, [0.25, -3.0, 1e40], wall_time=1700000000.5)
    expected = Event(
        wall_time=1700000000.5,
        step=123456789,
        summary=Summary(
            value=[Summary.Value(tag=t, simple_value=v) for t, v in zip(tags, [0.25, -3.0, math.inf], strict=True)]
        ),
    )
    assert file.pending == [expected.SerializeToString()]
    file.pending.clear()
    file.add_scalars(7, tags, [1.5, math.nan, -2], wall_time=2.0)  # the same tags again: the cached layout
    (again,) = file.pending
    decoded = Event.FromString(again)
    assert decoded.step == 7 and decoded.wall_time == 2.0
    assert [v.tag for v in decoded.summary.value] == tags
    values = [v.simple_value for v in decoded.summary.value]
    assert values[0] == 1.5 and math.isnan(values[1]) and values[2] == -2.0
    version = Event(wall_time=1.5, step=0, file_version="brain.Event:2").SerializeToString()
    assert tfevents.event_bytes(1.5, 0, file_version="brain.Event:2") == version
    assert tfevents.event_bytes(1.5, -3) == Event(wall_time=1.5, step=-3).SerializeToString()


def test_tensorboard_reads_every_scalar_after_close(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = tensorboard_sink(tmp_path / "tb")
    assert isinstance(sink, TensorBoardSink)
    names = [f"group{g}/metric_with_a_long_name_{k}" for g in range(3) for k in range(20)]  # split over events
    written = []
    for i in range(300):
        row = {
            "step": 40 * (i + 1),
            "update": i + 1,
            "note": "text is skipped",
            **{n: i + k / 7 for k, n in enumerate(names)},
        }
        if i % 50 == 0:
            row["eval/return_mean"] = float(i)  # present in some rows only
        written.append(row)
        sink.write(row)
        if i == 150:
            sink.flush()
    sink.close()
    sink.flush()
    sink.close()
    accumulator = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert sorted(accumulator.Tags()["scalars"]) == sorted([*names, "eval/return_mean"])
    for name in names:
        events = accumulator.Scalars(name)
        assert [e.step for e in events] == [r["step"] for r in written]
        assert [e.value for e in events] == pytest.approx([r[name] for r in written], rel=1e-6)
    assert [e.step for e in accumulator.Scalars("eval/return_mean")] == [40 * (i + 1) for i in range(0, 300, 50)]
