"""``serve-drift reference``: build, sample and inspect reference sets.

- ``build``: embeds a folder of images through the deployed model's own preprocessing and
  embedding capture (the model section of a Serve YAML config, or the same options as flags),
  with a progress bar, and saves embeddings, softmax probabilities, labels (``--labels``) and
  lineage in one ``.npz``. By default it also calibrates the reference for the detectors and
  window size of the config's ``drift`` section (or the defaults), so the monitor's
  per-window false-alarm rate holds for this reference
  (:mod:`serve_drift.detectors.calibration`); ``--no-calibration`` skips it.
- ``from-traffic``: saves (and calibrates) the monitor's uniform sample of served traffic.
- ``inspect``: loads a file (verifying its content hashes; nothing is unpickled) and prints
  its calibrated false-alarm rate, a warning when the window is too large for it, and its
  lineage.

    serve-drift reference build --images /data/val --app-config deployments/torchvision.yaml \\
        --data-version val-2026-10 --out /models/reference.npz
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serve_drift.config import CalibrationConfig, DetectorConfig, DriftConfig
from serve_drift.detectors.calibration import (
    CalibrationMap,
    cannot_alarm_warning,
    fit_calibration,
    window_ratio_warning,
)
from serve_drift.monitor.calibration import calibrate_reference
from serve_drift.monitor.traffic_sample import TrafficSnapshot
from serve_drift.reference import BuildProgress, ReferenceSet, build_reference

Calibrate = Callable[[ReferenceSet], ReferenceSet]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="serve-drift reference", description=__doc__)
    commands = root.add_subparsers(dest="action", required=True)
    build = commands.add_parser("build", help="embed a folder of images into a reference set")
    build.add_argument("--images", required=True, type=Path, help="folder (searched recursively)")
    build.add_argument("--out", required=True, type=Path, help="the .npz file to write")
    build.add_argument("--data-version", required=True, help="names the images, e.g. val-2026-10")
    build.add_argument("--app-config", type=Path, help="Serve YAML whose model section to use")
    build.add_argument("--app", help="application name in --app-config (default: the only one)")
    build.add_argument("--source", choices=("digits", "torchvision"), default=None)
    build.add_argument("--arch", help="torchvision.models name (with --source torchvision)")
    build.add_argument("--weights", help="state dict (.pt, weights_only) or .safetensors")
    build.add_argument("--num-classes", type=int, default=None)
    build.add_argument("--image-size", type=int, default=None)
    build.add_argument("--model-version", help="recorded in the lineage (default: the model's)")
    build.add_argument("--embedding-layer", help="capture this layer's output instead")
    build.add_argument("--limit", type=int, help="embed a random sample of this many images")
    build.add_argument("--seed", type=int, default=0, help="for --limit (default 0)")
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.add_argument(
        "--labels", type=Path, help='JSON {"relative/path.png": class index, ...} for every image'
    )
    _calibration_arguments(build)
    traffic = commands.add_parser(
        "from-traffic", help="save the monitor's sample of served traffic (needs the app running)"
    )
    traffic.add_argument("--app", required=True, help="the Serve application name")
    traffic.add_argument("--out", required=True, type=Path)
    traffic.add_argument("--data-version", required=True)
    traffic.add_argument("--monitor", default="DriftMonitor", help="monitor deployment name")
    traffic.add_argument("--model-version", help="default: the version with most traffic")
    traffic.add_argument("--address", default="auto", help="Ray cluster address")
    _calibration_arguments(traffic)
    inspect = commands.add_parser("inspect", help="verify a reference file and print its lineage")
    inspect.add_argument("path", type=Path)
    inspect.add_argument("--alpha", type=float, default=0.05, help="p-value threshold (0.05)")
    return root


def _calibration_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--window-size",
        type=int,
        help="calibrate for windows of this many rows (default: the config's, else 200)",
    )
    command.add_argument(
        "--no-calibration", action="store_true", help="store no calibration (monitors draw it)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.action == "build":
        reference = build_from_args(args)
        _print_lineage(reference, path=args.out)
        return 0
    if args.action == "from-traffic":
        reference = from_traffic(args)
        _print_lineage(reference, path=args.out)
        return 0
    reference = ReferenceSet.load(args.path)
    _print_lineage(reference, path=args.path, alpha=args.alpha)
    return 0


def build_from_args(args: argparse.Namespace) -> ReferenceSet:
    from serve_drift.apps.model_loading import ModelSpec, load_model

    spec_fields, layer, drift = _app_model(args.app_config, app=args.app)
    flags = {
        "source": args.source,
        "arch": args.arch,
        "weights_path": args.weights,
        "num_classes": args.num_classes,
        "image_size": args.image_size,
        "version": args.model_version,
    }
    spec = ModelSpec.model_validate({**spec_fields, **{k: v for k, v in flags.items() if v}})
    loaded = load_model(spec)
    with _progress(enabled=not args.no_progress) as progress:
        reference = build_reference(
            loaded.model.eval(),
            args.images,
            preprocess=loaded.preprocess,
            model_name=spec.arch or spec.source,
            model_version=loaded.version,
            data_version=args.data_version,
            preprocessing=loaded.preprocessing,
            layer=args.embedding_layer or layer,
            limit=args.limit,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=progress,
            labels=None if args.labels is None else _read_labels(args.labels),
        )
    calibrated = calibrator(args, drift=drift)(reference)
    calibrated.save(args.out)
    return calibrated


def calibrator(args: argparse.Namespace, *, drift: dict[str, Any] | None = None) -> Calibrate:
    """What ``--window-size``/``--no-calibration`` and the app's drift section ask for."""
    if args.no_calibration:
        return lambda reference: reference
    config = DriftConfig.model_validate({**(drift or {}), "reference_path": None})
    window_size = args.window_size or config.window.size
    return lambda reference: calibrate_reference(
        reference, detectors=config.detectors, window_size=window_size, plan=config.calibration
    )


def _read_labels(path: Path) -> dict[str, int]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise ValueError(f'{path}: expected {{"relative/path.png": class index, ...}}')
    return {str(key): int(value) for key, value in data.items()}


def from_traffic(args: argparse.Namespace) -> ReferenceSet:
    import ray
    from ray import serve

    ray.init(address=args.address, ignore_reinit_error=True, logging_level=logging.ERROR)
    handle = serve.get_deployment_handle(args.monitor, app_name=args.app)
    sample = handle.traffic_sample.remote(args.model_version).result()
    return save_traffic_sample(
        sample,
        out=args.out,
        data_version=args.data_version,
        app=args.app,
        calibrate=calibrator(args),
    )


def _app_model(
    config: Path | None, *, app: str | None
) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """The ``model`` section, drift ``embedding_layer`` and ``drift`` section of one app in a
    Serve YAML."""
    if config is None:
        return {}, None, {}
    import yaml

    document = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    apps = document.get("applications") or []
    chosen = [a for a in apps if app is None or a.get("name") == app]
    if len(chosen) != 1:
        names = ", ".join(str(a.get("name")) for a in apps) or "none"
        raise ValueError(f"{config}: pick one application with --app (found: {names})")
    args = chosen[0].get("args") or {}
    drift = dict(args.get("drift") or {})
    return dict(args.get("model") or {}), drift.get("embedding_layer"), drift


def save_traffic_sample(
    sample: TrafficSnapshot,
    *,
    out: Path,
    data_version: str,
    app: str,
    calibrate: Calibrate | None = None,
) -> ReferenceSet:
    """Save a monitor's ``traffic_sample()`` answer as a reference set, calibrated first by
    ``calibrate`` (see :func:`calibrator`) when given."""
    reference = ReferenceSet.from_embeddings(
        np.asarray(sample.embeddings, dtype=np.float32),
        probabilities=sample.probabilities,
        model_name=sample.model_name,
        model_version=sample.model_version,
        data_version=data_version,
        preprocessing="as served",
        source=(
            f"uniform sample of {sample.seen} rows served by app {app!r} between "
            f"{sample.first_timestamp:.0f} and {sample.last_timestamp:.0f} (unix s)"
        ),
    )
    if calibrate is not None:
        reference = calibrate(reference)
    reference.save(out)
    return reference


@contextlib.contextmanager
def _progress(*, enabled: bool) -> Iterator[BuildProgress | None]:
    """A rich progress bar over the images being embedded; yields ``progress(done, total)``."""
    if not enabled:
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=False) as bar:
        task = bar.add_task("embedding images", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _print_lineage(reference: ReferenceSet, *, path: Path, alpha: float = 0.05) -> None:
    lineage = reference.lineage_dict()
    print(
        f"{path}: {lineage['count']} x {lineage['dim']} embeddings"
        + (
            f", {lineage['num_classes']} classes of probabilities"
            if lineage["num_classes"]
            else ", no probabilities"
        )
        + (", labels" if reference.labels is not None else ", no labels")
    )
    for line in calibration_lines(reference, alpha=alpha):
        print(line)
    print(json.dumps(lineage, indent=2, sort_keys=True))


def calibration_lines(
    reference: ReferenceSet, *, alpha: float = 0.05, plan: CalibrationConfig | None = None
) -> list[str]:
    """What each stored calibration says about false alarms at ``p < alpha``, and warnings."""
    plan = plan or CalibrationConfig()
    if not reference.calibrations:
        return ["calibration: none stored (a monitor draws its own when it starts)"]
    lines = []
    for stored in reference.calibrations:
        window_size = int(stored.metadata.get("window_size", 0))
        calibration = fit_calibration(
            stored.null_p_values,
            quantile=plan.quantile,
            window_size=window_size,
            reference_size=len(reference.embeddings),
        )
        detector = DetectorConfig.model_validate(stored.metadata.get("detector") or {})
        lines.extend(_describe(detector, stored.metadata, calibration, alpha=alpha))
        warnings = (
            window_ratio_warning(
                window_size=window_size,
                reference_size=len(reference.embeddings),
                max_ratio=plan.max_window_ratio,
            ),
            cannot_alarm_warning(detector, calibration, alpha=alpha),
        )
        lines.extend(f"  warning: {warning}" for warning in warnings if warning is not None)
    return lines


def _describe(
    detector: DetectorConfig, metadata: dict[str, Any], calibration: CalibrationMap, *, alpha: float
) -> list[str]:
    share = f"{100 * calibration.quantile:.0f} % of references like this one"
    return [
        f"calibration: {detector.kind}/{detector.resolved_backend}, window "
        f"{calibration.window_size} (M/N = {calibration.window_ratio:.2f}), "
        f"{calibration.references} x {calibration.windows} bootstrap draws "
        f"({metadata.get('seconds', '?')} s)",
        f"  uncalibrated p < {alpha:g}: false-alarm rate up to "
        f"{calibration.false_alarm_rate(alpha):.3f} for {share} "
        f"(typical {calibration.false_alarm_rate(alpha, quantile=0.5):.3f})",
        f"  calibrated p < {alpha:g}: false-alarm rate at most {alpha:g} for {share} "
        f"(alarms at raw p < {calibration.raw_threshold(alpha):.4f})",
    ]


if __name__ == "__main__":
    sys.exit(main())
