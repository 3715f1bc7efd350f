import io
import json

from phasegate_runtime.events import EventStream


class CountingStream(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_one_flushed_json_object_per_line() -> None:
    stream = CountingStream()
    events = EventStream(stream)
    events.emit("unit_started", unit="hooks/r0", done=1, total=7)
    events.emit("run_finished", result="x", done=7, total=7)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["unit_started", "run_finished"]
    assert json.loads(lines[0]) == {"event": "unit_started", "unit": "hooks/r0", "done": 1, "total": 7}
    assert stream.flushes == 2
