"""``serve-drift reference``: build, sample and inspect reference sets.

- ``build``: embeds a folder of images through the deployed model's own preprocessing and
  embedding capture (the model section of a Serve YAML config, or the same options as flags),
  with a progress bar, and saves embeddings, softmax probabilities and lineage in one ``.npz``.
- ``from-traffic``: saves the monitor's uniform sample of served traffic (a running app).
- ``inspect``: loads a file (verifying its content hashes; nothing is unpickled) and prints
  its lineage.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serve_drift._reference import ReferenceSet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class BuildOptions:
    """What ``reference build`` needs, whatever the command line looked like."""

    images: Path
    out: Path
    data_version: str
    limit: int | None = None
    seed: int = 0
    batch_size: int = 64
    embedding_layer: str | None = None
    progress: bool = True


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
    traffic = commands.add_parser(
        "from-traffic", help="save the monitor's sample of served traffic (needs the app running)"
    )
    traffic.add_argument("--app", required=True, help="the Serve application name")
    traffic.add_argument("--out", required=True, type=Path)
    traffic.add_argument("--data-version", required=True)
    traffic.add_argument("--monitor", default="DriftMonitor", help="monitor deployment name")
    traffic.add_argument("--model-version", help="default: the version with most traffic")
    traffic.add_argument("--address", default="auto", help="Ray cluster address")
    inspect = commands.add_parser("inspect", help="verify a reference file and print its lineage")
    inspect.add_argument("path", type=Path)
    return root


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
    _print_lineage(reference, path=args.path)
    return 0


def build_from_args(args: argparse.Namespace) -> ReferenceSet:
    from serve_drift.apps._models import ModelSpec, load_model

    spec_fields, layer = _app_model(args.app_config, app=args.app)
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
    options = BuildOptions(
        images=args.images,
        out=args.out,
        data_version=args.data_version,
        limit=args.limit,
        seed=args.seed,
        batch_size=args.batch_size,
        embedding_layer=args.embedding_layer or layer,
        progress=not args.no_progress,
    )
    return build_reference(
        options,
        model=loaded.model.eval(),
        preprocess=loaded.preprocess,
        model_name=spec.arch or spec.source,
        model_version=loaded.version,
        preprocessing=loaded.preprocessing,
    )


def build_reference(
    options: BuildOptions,
    *,
    model: Any,
    preprocess: Callable[[list[Any]], Any],
    model_name: str,
    model_version: str,
    preprocessing: str,
) -> ReferenceSet:
    """Embed the images under ``options.images`` and save the reference set to ``options.out``.

    ``model`` and ``preprocess`` are the served model and its own preprocessing (a list of PIL
    images to a batch tensor); embeddings are captured by the serving hooks.
    """
    from serve_drift._embed import embed_outputs

    paths = find_images(options.images, limit=options.limit, seed=options.seed)
    with _progress(len(paths), enabled=options.progress) as advance:
        outputs = embed_outputs(
            model,
            LazyImages(paths),
            preprocess=preprocess,
            layer=options.embedding_layer,
            batch_size=options.batch_size,
            progress=advance,
        )
    reference = ReferenceSet.from_embeddings(
        outputs.embeddings,
        probabilities=outputs.probabilities,
        model_name=model_name,
        model_version=model_version,
        data_version=options.data_version,
        preprocessing=preprocessing,
        source=f"{len(paths)} images under {options.images}"
        + (f" (random sample, seed {options.seed})" if options.limit else ""),
    )
    reference.save(options.out)
    return reference


def find_images(folder: Path, *, limit: int | None = None, seed: int = 0) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), or a seeded sample of ``limit``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    if limit is not None and limit < len(paths):
        picks = np.random.default_rng(seed).choice(len(paths), size=limit, replace=False)
        paths = [paths[i] for i in sorted(picks)]
    return paths


class LazyImages(Sequence[Any]):
    """Image files opened only when a batch is sliced, so memory holds one batch."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [_open(p) for p in self._paths[index]]
        return _open(self._paths[index])


def _open(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # decode now: the file closes when the block ends
        return image.copy()


def from_traffic(args: argparse.Namespace) -> ReferenceSet:
    import ray
    from ray import serve

    ray.init(address=args.address, ignore_reinit_error=True, logging_level=logging.ERROR)
    handle = serve.get_deployment_handle(args.monitor, app_name=args.app)
    sample = handle.traffic_sample.remote(args.model_version).result()
    return save_traffic_sample(sample, out=args.out, data_version=args.data_version, app=args.app)


def save_traffic_sample(
    sample: dict[str, Any], *, out: Path, data_version: str, app: str
) -> ReferenceSet:
    """Save a monitor's ``traffic_sample()`` answer as a reference set."""
    probabilities = sample.get("probabilities")
    reference = ReferenceSet.from_embeddings(
        np.asarray(sample["embeddings"], dtype=np.float32),
        probabilities=None if probabilities is None else np.asarray(probabilities),
        model_name=str(sample["model_name"]),
        model_version=str(sample["model_version"]),
        data_version=data_version,
        preprocessing="as served",
        source=(
            f"uniform sample of {sample['seen']} rows served by app {app!r} between "
            f"{sample['first_timestamp']:.0f} and {sample['last_timestamp']:.0f} (unix s)"
        ),
    )
    reference.save(out)
    return reference


def _app_model(config: Path | None, *, app: str | None) -> tuple[dict[str, Any], str | None]:
    """The ``model`` section and drift ``embedding_layer`` of one app in a Serve YAML."""
    if config is None:
        return {}, None
    import yaml

    document = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    apps = document.get("applications") or []
    chosen = [a for a in apps if app is None or a.get("name") == app]
    if len(chosen) != 1:
        names = ", ".join(str(a.get("name")) for a in apps) or "none"
        raise ValueError(f"{config}: pick one application with --app (found: {names})")
    args = chosen[0].get("args") or {}
    return dict(args.get("model") or {}), (args.get("drift") or {}).get("embedding_layer")


@contextlib.contextmanager
def _progress(total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over ``total`` images; yields ``advance(done)``."""
    if not enabled:
        yield lambda done: None
        return
    from rich.progress import Progress

    with Progress(transient=False) as bar:
        task = bar.add_task("embedding images", total=total)
        yield lambda done: bar.update(task, completed=done)


def _print_lineage(reference: ReferenceSet, *, path: Path) -> None:
    lineage = reference.lineage_dict()
    print(
        f"{path}: {lineage['count']} x {lineage['dim']} embeddings"
        + (
            f", {lineage['num_classes']} classes of probabilities"
            if lineage["num_classes"]
            else ", no probabilities"
        )
    )
    print(json.dumps(lineage, indent=2, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
