"""``serve-drift reference``: build, sample and inspect reference sets.

- ``build``: embeds a folder, glob, manifest or ``.npy`` of inputs through the user's model
  (``--model pkg.module:make_model --preprocess pkg.module:preprocess``, a torchvision or timm
  name with ``--weights``, or the model section of a Serve YAML config) and its own
  preprocessing and embedding capture, with a progress bar on stderr, and saves embeddings,
  softmax probabilities, labels (``--labels`` or the manifest's) and lineage in one ``.npz``.
  By default it also calibrates the reference for the detectors and window size of the
  config's ``drift`` section (or the defaults), so the monitor's per-window false-alarm rate
  holds for this reference
  (:mod:`serve_drift.detectors.calibration`); ``--no-calibration`` skips it.
- ``from-traffic``: saves (and calibrates) the monitor's uniform sample of served traffic.
- ``inspect``: loads a file (verifying its content hashes; nothing is unpickled) and prints
  its calibrated false-alarm rate, a warning when the window is too large for it, and its
  lineage.

    serve-drift reference build --model my_model:make_model --preprocess my_model:preprocess \\
        --images /data/val --data-version val-2026-10 --model-version 1 --out reference.npz

Errors raised on purpose print one line with their stable code and exit with status 2.
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

from serve_drift.config import CalibrationConfig, DetectorConfig
from serve_drift.detectors.calibration import (
    CalibrationMap,
    cannot_alarm_warning,
    fit_calibration,
    window_ratio_warning,
)
from serve_drift.errors import ServeDriftError
from serve_drift.monitor.traffic_sample import TrafficSnapshot
from serve_drift.reference import BuildProgress, ReferenceSet

MONITOR_SUFFIX = "DriftMonitor"  # monitored_app names each monitor <Deployment>DriftMonitor

Calibrate = Callable[[ReferenceSet], ReferenceSet]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="serve-drift reference", description=__doc__)
    commands = root.add_subparsers(dest="action", required=True)
    build = commands.add_parser(
        "build", help="embed images (folder, glob, manifest or .npy) into a reference set"
    )
    _build_arguments(build)
    traffic = commands.add_parser(
        "from-traffic", help="save the monitor's sample of served traffic (needs the app running)"
    )
    traffic.add_argument("--app", required=True, help="the Serve application name")
    traffic.add_argument("--out", required=True, type=Path)
    traffic.add_argument("--data-version", required=True)
    traffic.add_argument(
        "--monitor",
        help="monitor deployment name (default: the app's only <Deployment>DriftMonitor)",
    )
    traffic.add_argument("--model-version", help="default: the version with most traffic")
    traffic.add_argument("--address", default="auto", help="Ray cluster address")
    _calibration_arguments(traffic)
    inspect = commands.add_parser("inspect", help="verify a reference file and print its lineage")
    inspect.add_argument("path", type=Path)
    inspect.add_argument("--alpha", type=float, default=0.05, help="p-value threshold (0.05)")
    return root


def _build_arguments(build: argparse.ArgumentParser) -> None:
    build.add_argument(
        "--images",
        required=True,
        help="a folder (searched recursively), a quoted glob, a .csv/.jsonl manifest of "
        "path[,label], or an .npy of model inputs",
    )
    build.add_argument("--out", required=True, type=Path, help="the .npz file to write")
    build.add_argument("--data-version", required=True, help="names the images, e.g. val-2026-10")
    build.add_argument(
        "--model",
        help="your model: a factory import path (my_pkg.model:make_model), or "
        "torchvision:<name> / timm:<name> with --weights",
    )
    build.add_argument(
        "--preprocess", help="import path of its preprocessing (PIL images -> batch tensor)"
    )
    build.add_argument(
        "-d",
        "--app-dir",
        default=".",
        help="folder to import --model and --preprocess from, as serve run's (default: .)",
    )
    build.add_argument("--app-config", type=Path, help="Serve YAML whose model section to use")
    build.add_argument("--app", help="application name in --app-config (default: the only one)")
    build.add_argument("--source", choices=("digits", "torchvision", "timm"), default=None)
    build.add_argument("--arch", help="torchvision or timm model name (with --source)")
    build.add_argument("--weights", help="state dict (.pt, weights_only) or .safetensors")
    build.add_argument("--num-classes", type=int, default=None)
    build.add_argument("--image-size", type=int, default=None)
    build.add_argument("--model-name", help="recorded in the lineage (default: the model's)")
    build.add_argument("--model-version", help="recorded in the lineage (default: the model's)")
    build.add_argument("--embedding-layer", help="capture this layer's output instead")
    build.add_argument("--limit", type=int, help="embed a random sample of this many images")
    build.add_argument("--seed", type=int, default=0, help="for --limit (default 0)")
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument("--device", help="where to run the model (default: cuda if available)")
    build.add_argument(
        "-q",
        "--quiet",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no progress bar (there is none either when stderr is not a terminal)",
    )
    build.add_argument(
        "--labels", type=Path, help='JSON {"relative/path.png": class index, ...} for every image'
    )
    _calibration_arguments(build)


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
    try:
        return _run(args)
    except ServeDriftError as exc:  # a clear line with its stable code, no traceback
        print(f"serve-drift reference {args.action}: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
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
    """``reference build``: :func:`serve_drift.build_reference_from` with the app config's
    model and drift sections (when given) under the flags."""
    from serve_drift.apps.reference_build import build_reference_from

    sys.path.insert(0, str(Path(args.app_dir).resolve()))  # as serve run imports the app
    spec_fields, layer, drift = _app_model(args.app_config, app=args.app)
    flags = {
        "source": args.source,
        "arch": args.arch,
        "num_classes": args.num_classes,
        "image_size": args.image_size,
    }
    model: Any = {**spec_fields, **{k: v for k, v in flags.items() if v}}
    if args.model:
        model = args.model
    with _progress(enabled=not args.quiet and sys.stderr.isatty()) as progress:
        return build_reference_from(
            model=model,
            images=args.images,
            data_version=args.data_version,
            preprocess=args.preprocess,
            weights=args.weights,
            num_classes=args.num_classes,
            model_name=args.model_name,
            model_version=args.model_version,
            layer=args.embedding_layer or layer,
            labels=None if args.labels is None else _read_labels(args.labels),
            limit=args.limit,
            seed=args.seed,
            batch_size=args.batch_size,
            drift=drift,
            window_size=args.window_size,
            calibrate=not args.no_calibration,
            device=args.device,
            progress=progress,
            out=args.out,
        )


def calibrator(args: argparse.Namespace, *, drift: dict[str, Any] | None = None) -> Calibrate:
    """What ``--window-size``/``--no-calibration`` and the app's drift section ask for."""
    from serve_drift.apps.reference_build import CalibrationTarget

    if args.no_calibration:
        return lambda reference: reference
    return CalibrationTarget.of(drift, window_size=args.window_size).apply


def _read_labels(path: Path) -> dict[str, int]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise ValueError(f'{path}: expected {{"relative/path.png": class index, ...}}')
    return {str(key): int(value) for key, value in data.items()}


def from_traffic(args: argparse.Namespace) -> ReferenceSet:
    import ray
    from ray import serve

    ray.init(address=args.address, ignore_reinit_error=True, logging_level=logging.ERROR)
    name = args.monitor or find_monitor(_deployments_of(args.app), app=args.app)
    handle = serve.get_deployment_handle(name, app_name=args.app)
    sample = handle.traffic_sample.remote(args.model_version).result()
    return save_traffic_sample(
        sample,
        out=args.out,
        data_version=args.data_version,
        app=args.app,
        calibrate=calibrator(args),
    )


class MonitorNotFoundError(ServeDriftError, LookupError):
    """``from-traffic`` cannot tell which drift monitor to ask: none, or several."""

    code = "monitor_not_found"


def find_monitor(deployments: Sequence[str], *, app: str) -> str:
    """The app's drift monitor: the one deployment named ``<Deployment>DriftMonitor``.

    >>> find_monitor(["Classifier", "ClassifierDriftMonitor"], app="a")
    'ClassifierDriftMonitor'
    """
    monitors = sorted(name for name in deployments if name.endswith(MONITOR_SUFFIX))
    if len(monitors) == 1:
        return monitors[0]
    found = ", ".join(monitors) if monitors else "none"
    raise MonitorNotFoundError(
        f"app {app!r} has {len(monitors)} drift monitors ({found}); name one with --monitor "
        f"(its deployments: {', '.join(sorted(deployments)) or 'none'})"
    )


def _deployments_of(app: str) -> list[str]:
    from ray import serve

    applications = serve.status().applications
    if app not in applications:
        raise MonitorNotFoundError(
            f"no Serve application {app!r} (running: {', '.join(applications) or 'none'})"
        )
    return list(applications[app].deployments)


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
    from rich.console import Console
    from rich.progress import Progress

    # On stderr, so stdout keeps only the lineage (for scripts that parse it).
    with Progress(console=Console(stderr=True), transient=False) as bar:
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
