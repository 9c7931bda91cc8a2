"""The generation worker: `<python> -m pipeline.generation.worker worker <request.json>
<response.json>`, run in the engine's own Python environment (e.g. a venv with vLLM).

It needs only the standard library and this project's source at import time (the engine
imports its library when it runs); the protocol is in pipeline/generation/engines.py.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from pipeline.generation.engines import PROTOCOL, engine, engine_names, write_json


def run_worker(request_path: str, response_path: str) -> int:
    """Worker entry: answer the request, write the response; exit status 0 only on success."""
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    try:
        if request.get("protocol") != PROTOCOL:
            raise ValueError(
                f"request protocol {request.get('protocol')!r}, worker speaks "
                f"{PROTOCOL}: the worker's project copy is out of date"
            )
        if request.get("engine") not in engine_names():
            raise ValueError(
                f"engine {request.get('engine')!r} is unknown; registered: "
                f"{', '.join(engine_names())}"
            )
        answer = engine(request["engine"]).run(request)
    except Exception as err:  # noqa: BLE001 (any failure goes to the parent, traceback to the log)
        traceback.print_exc()
        write_json(
            Path(response_path), {"protocol": PROTOCOL, "error": f"{type(err).__name__}: {err}"}
        )
        return 1
    answer["new_tokens"] = [int(c) for c in answer["new_tokens"]]
    write_json(Path(response_path), {"protocol": PROTOCOL, "engine": request["engine"], **answer})
    return 0


def main(argv: list[str]) -> int:
    """Command line: `worker <request.json> <response.json>`."""
    if len(argv) != 3 or argv[0] != "worker":
        print(
            "usage: python -m pipeline.generation.worker worker <request.json> <response.json>",
            file=sys.stderr,
        )
        return 2
    return run_worker(argv[1], argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
