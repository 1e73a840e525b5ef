"""What each corruption of ``serve_drift.corruptions`` does to the embedded digits model, and
how often the default detector sees it, per severity.

For every corruption and severity 1..5, on the digits traffic pool (449 images, 8x8, as the
drill serves them): the CNN's accuracy on the whole corrupted pool, and the share of
``--runs`` windows of ``--window`` corrupted images (drawn without replacement, fresh seed per
window) in which the default detector (``combined``, 500 permutations, the shipped reference)
gives p <= 0.05 (its default threshold) and p <= 0.01 (the default alert rule's alpha). Clean
windows give the baseline rate. The built-in drill scenarios pick severities from this table.

    python benchmarks/corruptions.py [--window 50] [--runs 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from serve_drift.corruptions import CORRUPTIONS, SEVERITIES, corrupt_batch


class _Bench:
    def __init__(self, *, window: int) -> None:
        from serve_drift.config import default_detectors
        from serve_drift.detectors import build_detector
        from serve_drift.models import digits
        from serve_drift.models.default_reference import ensure_digits_reference
        from serve_drift.reference.embed import embed_outputs
        from serve_drift.reference.reference_set import ReferenceSet

        self.model, _ = digits.load_or_train_digits_model()
        self.model.eval()
        split = digits.split_digits(seed=0)
        self.images, self.labels = split.test_images, split.test_labels
        reference = ReferenceSet.load(ensure_digits_reference()[0])
        config = default_detectors()[0].model_copy(update={"device": "cpu"})
        self.detector = build_detector(
            config, reference=reference.embeddings, reference_probabilities=reference.probabilities
        )
        self.window = window
        self._embed = lambda batch: embed_outputs(
            self.model, batch, preprocess=digits.preprocess_digits
        )

    def accuracy(self, images: np.ndarray) -> float:
        out = self._embed(images)
        assert out.probabilities is not None
        return float((out.probabilities.argmax(axis=1) == self.labels).mean())

    def p_values(self, name: str | None, severity: int, *, runs: int) -> np.ndarray:
        found = []
        for run in range(runs):
            rng = np.random.default_rng(run)
            rows = rng.choice(len(self.images), size=self.window, replace=False)
            batch = self.images[rows]
            if name is not None:
                batch = corrupt_batch(batch, name, severity=severity, seed=1000 + run)
            out = self._embed(batch)
            found.append(
                self.detector.test(out.embeddings, probabilities=out.probabilities).p_value
            )
        return np.asarray(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=int, default=50, help="images per window")
    parser.add_argument("--runs", type=int, default=20, help="windows per cell")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    bench = _Bench(window=args.window)
    clean = bench.p_values(None, 1, runs=args.runs)
    print(
        f"window {args.window}, {args.runs} windows per cell; clean: accuracy "
        f"{bench.accuracy(bench.images):.3f}, share p<=0.05 {np.mean(clean <= 0.05):.2f}, "
        f"p<=0.01 {np.mean(clean <= 0.01):.2f}\n"
    )
    print("| corruption | " + " | ".join(f"s{s}" for s in SEVERITIES) + " |")
    print("|---|" + "---|" * len(SEVERITIES))
    for name in CORRUPTIONS:
        cells = []
        for severity in SEVERITIES:
            accuracy = bench.accuracy(corrupt_batch(bench.images, name, severity=severity, seed=0))
            p = bench.p_values(name, severity, runs=args.runs)
            cells.append(f"{accuracy:.2f} / {np.mean(p <= 0.05):.2f} / {np.mean(p <= 0.01):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\ncells: accuracy / share of windows with p <= 0.05 / with p <= 0.01")
    print(f"took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
