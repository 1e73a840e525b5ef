"""The OTLP receiver process the serving benchmarks export to (``_harness.OtlpSink``).

A real gRPC OTLP receiver (the test suite's) that counts spans by name and metric export
requests, writes the counts to the file named on the command line once a second, and keeps
nothing else: a load test exports for minutes. Prints its endpoint on the first line.

    python benchmarks/_otlp_sink.py /tmp/counts.json
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.otlp_receiver import OtlpReceiver


class CountingReceiver(OtlpReceiver):
    """Counts export requests as they arrive instead of storing them."""

    def __init__(self) -> None:
        super().__init__(http=False)
        self.counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    def _record(self, signal: str, transport: str, request: Any) -> None:
        with self._count_lock:
            self.counts[f"{signal}_exports"] += 1
            if signal == "traces":
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            self.counts[f"span:{span.name}"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self.counts)


def main() -> None:
    receiver = CountingReceiver().start()
    print(receiver.endpoint, flush=True)
    out = Path(sys.argv[1])
    while True:
        time.sleep(1.0)
        out.write_text(json.dumps(receiver.snapshot()))


if __name__ == "__main__":
    main()
