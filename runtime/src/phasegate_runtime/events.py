"""Progress events: newline-delimited JSON on stdout, one object per line, flushed at once.

stdout is reserved for these events (the TypeScript activity parses every line); human logs go to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO


class EventStream:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout

    def emit(self, event: str, **fields: Any) -> None:
        self._stream.write(json.dumps({"event": event, **fields}) + "\n")
        self._stream.flush()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
