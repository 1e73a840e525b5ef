"""A reference set for the user's own model: a factory import path (or a torchvision/timm
name plus weights), a preprocess import path, and a folder, glob, manifest or ``.npy``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serve_drift import ReferenceSet, ServeDriftError, build_reference_from
from serve_drift.apps.model_loading import ModelSpec, load_model
from serve_drift.reference import embed_outputs
from serve_drift.tools.reference_cli import main as reference_main

MODULE = "byom_factory_for_tests"
FACTORY_SOURCE = """
import numpy as np, torch
from torch import nn

def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)
    ).eval()

def preprocess(images):
    grey = [np.asarray(im.convert("L").resize((8, 8)), dtype=np.float32) / 255 for im in images]
    return torch.from_numpy(np.stack(grey))[:, None]

not_a_factory = 3

def returns_a_string():
    return "model"
"""


@pytest.fixture(scope="module")
def factory_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("factory")
    (folder / f"{MODULE}.py").write_text(FACTORY_SOURCE)
    sys.path.insert(0, str(folder))
    yield MODULE
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(12):
        sub = folder / ("cats" if i % 2 else "dogs")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(16, 16), dtype=np.uint8)).save(
            sub / f"{i:02d}.png"
        )
    return folder


def _build(factory_module: str, images: str | Path, **options: object) -> ReferenceSet:
    return build_reference_from(
        model=f"{factory_module}:make_model",
        preprocess=f"{factory_module}:preprocess",
        images=images,
        data_version="val-1",
        model_version="m-1",
        calibrate=False,
        **options,  # type: ignore[arg-type]
    )


def test_a_factory_and_a_folder_give_the_served_embeddings_and_their_lineage(
    factory_module: str, images: Path
) -> None:
    reference = _build(factory_module, images, num_classes=3)
    spec = ModelSpec(
        source="factory",
        factory=f"{factory_module}:make_model",
        preprocess=f"{factory_module}:preprocess",
        num_classes=3,
    )
    loaded = load_model(spec)
    paths = sorted(images.rglob("*.png"))
    expected = embed_outputs(
        loaded.model, [Image.open(p) for p in paths], preprocess=loaded.preprocess
    )
    np.testing.assert_allclose(reference.embeddings, expected.embeddings, rtol=1e-6)
    assert reference.probabilities is not None and reference.probabilities.shape == (12, 3)
    lineage = reference.lineage
    assert (lineage.model_version, lineage.data_version) == ("m-1", "val-1")
    assert lineage.preprocessing == f"{factory_module}:preprocess"
    assert lineage.model_source == f"factory {factory_module}:make_model"
    assert lineage.model_name == "make_model" and lineage.data_hash.startswith("sha256:")
    assert "12 images in folder" in lineage.source


def test_the_data_hash_follows_the_images_not_where_they_are(
    factory_module: str, images: Path, tmp_path: Path
) -> None:
    first = _build(factory_module, images).lineage.data_hash
    copy = tmp_path / "copy"
    for path in images.rglob("*.png"):
        target = copy / path.relative_to(images)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    assert _build(factory_module, copy).lineage.data_hash == first
    changed = next(copy.rglob("*.png"))
    Image.new("L", (16, 16), 7).save(changed)
    assert _build(factory_module, copy).lineage.data_hash != first


def test_a_glob_a_labelled_manifest_and_an_npy(
    factory_module: str, images: Path, tmp_path: Path
) -> None:
    by_glob = _build(factory_module, f"{images}/cats/*.png")
    assert len(by_glob.embeddings) == 6 and "glob" in by_glob.lineage.source
    manifest = images / "manifest.jsonl"
    rows = [
        {"path": p.relative_to(images).as_posix(), "label": i % 3}
        for i, p in enumerate(sorted(images.rglob("*.png")))
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    labelled = _build(factory_module, manifest)
    assert labelled.labels is not None and list(labelled.labels) == [i % 3 for i in range(12)]
    np.save(tmp_path / "inputs.npy", np.zeros((5, 1, 8, 8), np.float32))
    from_array = _build(factory_module, tmp_path / "inputs.npy", limit=3)
    assert len(from_array.embeddings) == 3
    assert from_array.lineage.preprocessing.startswith("none: model inputs")


def test_a_named_architecture_with_a_weights_file_records_the_weights_hash(
    tmp_path: Path,
) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=4)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(6, 3, 32, 32)))
    reference = build_reference_from(
        model="timm:resnet18",
        weights=str(tmp_path / "w.pt"),
        num_classes=4,
        images=tmp_path / "x.npy",
        data_version="d",
        calibrate=False,
    )
    with torch.no_grad():
        features = model.eval().forward_head(
            model.forward_features(torch.from_numpy(np.load(tmp_path / "x.npy")).float()),
            pre_logits=True,
        )
    np.testing.assert_allclose(reference.embeddings, features.numpy(), rtol=1e-4, atol=1e-5)
    assert reference.lineage.model_source == "timm resnet18"
    assert reference.lineage.weights_hash.startswith("sha256:")
    assert reference.lineage.model_version.startswith("resnet18-")  # arch + weights digest


@pytest.mark.parametrize(
    ("model", "preprocess", "code"),
    [
        ("not an import path", "m:p", "bad_import_path"),
        ("no_such_module_anywhere:make", "m:p", "import_failed"),
        (f"{MODULE}:missing", f"{MODULE}:preprocess", "import_failed"),
        (f"{MODULE}:not_a_factory", f"{MODULE}:preprocess", "not_callable"),
        (f"{MODULE}:returns_a_string", f"{MODULE}:preprocess", "not_a_model"),
    ],
)
def test_bad_model_import_paths_fail_with_stable_codes(
    factory_module: str, images: Path, model: str, preprocess: str, code: str
) -> None:
    with pytest.raises(ServeDriftError) as error:
        build_reference_from(
            model=model, preprocess=preprocess, images=images, data_version="d", calibrate=False
        )
    assert error.value.code == code


def test_a_factory_without_preprocess_is_refused() -> None:
    with pytest.raises(ServeDriftError) as error:
        build_reference_from(model="pkg:make", images=".", data_version="d", calibrate=False)
    assert error.value.code == "invalid_model_spec" and "preprocess" in str(error.value)


def test_bad_inputs_fail_with_stable_codes(
    factory_module: str, images: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "half.csv").write_text(
        f"path,label\n{images}/cats/01.png,1\n{images}/dogs/00.png,\n"
    )
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = {
        tmp_path / "empty": "no_images",
        tmp_path / "missing": "no_images",
        tmp_path / "broken": "unreadable_image",
        tmp_path / "half.csv": "missing_label",
        tmp_path / "objects.npy": "bad_npy",
    }
    for source, code in cases.items():
        with pytest.raises(ServeDriftError) as error:
            _build(factory_module, source)
        assert error.value.code == code, source


def test_the_cli_builds_from_a_factory_quietly_and_reports_errors_by_code(
    factory_module: str, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ref.npz"
    args = ["build", "--model", f"{factory_module}:make_model"]
    args += ["--preprocess", f"{factory_module}:preprocess", "--images", str(images)]
    args += ["--data-version", "v", "--model-version", "7", "--out", str(out)]
    assert reference_main([*args, "--no-calibration"]) == 0
    printed = capsys.readouterr()
    assert "12 x 8 embeddings" in printed.out
    assert printed.err == ""  # stderr is no terminal here: no progress bar
    assert ReferenceSet.load(out).lineage.model_version == "7"
    bad = [*args[:2], "nope:make_model", *args[3:]]
    assert reference_main([*bad, "--no-calibration"]) == 2
    assert "error [import_failed]: model factory 'nope:make_model'" in capsys.readouterr().err
