"""Read back an offline W&B run directory (run-*.wandb): the records wandb itself wrote.

The file is a 7-byte header (":W&B", a 2-byte magic, a 1-byte version) followed by LevelDB-log
blocks of 32 KiB; each chunk has a 7-byte header (crc32 4, length 2, type 1: full/first/middle/last)
and the records are wandb_internal_pb2.Record protobufs.
"""

import json
import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _finished(path: Path, wait_s: float) -> list:
    """The records of a run file once its `exit` record is there: wandb's service may still be
    writing it for a moment after run.finish() returned in this process."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            found = list(records(path))
        except Exception:  # noqa: BLE001  (a record cut off mid-write: read again)
            found = []
        if any(r.WhichOneof("record_type") == "exit" for r in found):
            return found
        assert time.monotonic() < deadline, f"{path}: no exit record after {wait_s} s"
        time.sleep(0.2)


def read_run(run_dir: Path, wait_s: float = 60.0) -> dict:
    """name, group, job_type, config, summary and logged history rows of one finished offline
    run (waiting up to wait_s for wandb to write its last record)."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    out = {"config": {}, "summary": {}, "history": [], "artifacts": []}
    for rec in _finished(path, wait_s):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(
                name=rec.run.display_name, group=rec.run.run_group, job_type=rec.run.job_type
            )
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in rec.history.item
                }
            )
        elif kind == "artifact":
            out["artifacts"].append(rec.artifact.name)
    return out
