"""What crosses the network per request when the drift monitor runs on another node (issue 15).

A replica ships each served request's embedding with a small event record to the monitor, in
batches (``shipping.batch_size`` rows, at least every ``shipping.flush_interval_s``), as one
Ray actor call; Ray serialises it with pickle protocol 5, numpy arrays as out-of-band buffers.
This builds realistic batches (the replica's own types: float32 embeddings, the softmax row,
top-5, input statistics, context, trace ids) and measures exactly those bytes, per row, for the
embedding widths of the digits CNN (64), ResNet-18 (512) and ResNet-50 (2048). It then prints
the batches per second a replica sends and the bytes per second the monitor receives at a few
request rates, from the shipping defaults (the monitor's ingest budget of 2000 rows/s caps what
ships; above it replicas send a weighted sample).

The compact row each request gets in the event store, and the sampled full records, go from the
monitor to the store (PostgreSQL on a cluster): ``benchmarks/event_store.py`` measures those.

    python benchmarks/cluster_traffic.py [--batch-size 64] [--replicas 4]
"""

from __future__ import annotations

import argparse
import pickle
import uuid

import numpy as np

from serve_drift.config import ShippingConfig
from serve_drift.messages import EventBatch, InferenceEvent, InputStats

WIDTHS = {"digits CNN": (64, 10), "ResNet-18": (512, 1000), "ResNet-50": (2048, 1000)}
RATES = (10, 100, 1000, 10_000)  # requests per second, all replicas together


def _event(i: int, rng: np.random.Generator) -> InferenceEvent:
    top = rng.dirichlet(np.ones(5))
    return InferenceEvent(
        correlation_id=str(uuid.uuid4()),
        internal_id=uuid.uuid4().hex,
        timestamp=1.79e9 + i,
        model_name="resnet50",
        model_version="2026-11-01",
        predicted_class=int(rng.integers(0, 1000)),
        confidence=float(top.max()),
        trace_id=uuid.uuid4().hex,
        span_id=uuid.uuid4().hex[:16],
        latency_s=0.012,
        top_k=tuple((int(rng.integers(0, 1000)), float(p)) for p in top),
        context={"camera": f"cam-{i % 50}", "site": "berlin-3"},
        input_stats=InputStats(
            width=224, height=224, channels=3, brightness=0.45, contrast=0.21,
            sharpness=0.013, channel_means=(0.48, 0.45, 0.40),
        ),
        replica_id="Replica(id='x1y2z3', deployment='ImageClassifier', app='default')",
    )  # fmt: skip


def wire_bytes(batch: EventBatch) -> int:
    """Bytes Ray sends for one actor-call argument: the pickle plus its out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(batch, protocol=5, buffer_callback=buffers.append)
    return len(body) + sum(memoryview(b).nbytes for b in buffers)


def per_row(width: int, classes: int, rows: int, rng: np.random.Generator) -> float:
    batch = EventBatch(
        embeddings=rng.standard_normal((rows, width)).astype(np.float32),
        events=tuple(_event(i, rng) for i in range(rows)),
        replica_id="Replica(id='x1y2z3', deployment='ImageClassifier', app='default')",
        probabilities=rng.dirichlet(np.ones(classes), size=rows).astype(np.float32),
    )
    return wire_bytes(batch) / rows


def batches_per_s(rate: float, replicas: int, shipping: ShippingConfig) -> float:
    """Batches a second from all replicas: full batches, or one per flush when traffic is low."""
    shipped = min(rate, shipping.monitor_max_rows_per_s or rate)
    per_replica = shipped / replicas
    return replicas * max(
        per_replica / shipping.batch_size, min(per_replica, 1 / shipping.flush_interval_s)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=ShippingConfig().batch_size)
    parser.add_argument("--replicas", type=int, default=4)
    args = parser.parse_args()
    shipping = ShippingConfig(batch_size=args.batch_size)
    rng = np.random.default_rng(0)
    budget = shipping.monitor_max_rows_per_s
    print(f"shipping: batch_size={shipping.batch_size}, ", end="")
    print(f"flush_interval_s={shipping.flush_interval_s}, monitor_max_rows_per_s={budget}")
    print(f"\n{'model':<12}{'width':>6}{'B/row':>9}{'embedding':>11}{'softmax':>9}{'the rest':>10}")
    sizes = {}
    for name, (width, classes) in WIDTHS.items():
        sizes[name] = per_row(width, classes, shipping.batch_size, rng)
        rest = sizes[name] - 4 * width - 4 * classes
        parts = f"{4 * width:>11,}{4 * classes:>9,}{rest:>10,.0f}"
        print(f"{name:<12}{width:>6}{sizes[name]:>9,.0f}{parts}")
    print(f"\n{args.replicas} replicas; what reaches the monitor (capped at the ingest budget):")
    print(f"{'requests/s':>11}{'batches/s':>11}" + "".join(f"{n + ' kB/s':>18}" for n in sizes))
    for rate in RATES:
        shipped = min(rate, shipping.monitor_max_rows_per_s or rate)
        cells = "".join(f"{shipped * size / 1e3:>18,.1f}" for size in sizes.values())
        print(f"{rate:>11,}{batches_per_s(rate, args.replicas, shipping):>11,.1f}{cells}")


if __name__ == "__main__":
    main()
