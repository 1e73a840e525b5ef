"""Labelled sets of the user's own: layouts, labels, lineage hashes, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serve_drift.tools.imageio import encode_jpeg, encode_png
from serve_drift.tools.sentinel import sentinel_command
from serve_drift.tools.sentinel_sets import ImageSetError, embedded_set, load_image_set


def _image(value: int) -> bytes:
    return encode_png(np.full((8, 8), value, dtype=np.uint8))


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    root = tmp_path / "cams"
    for label, values in ((0, (10, 20)), (7, (200,))):
        (root / str(label)).mkdir(parents=True)
        for v in values:
            (root / str(label) / f"img-{v}.png").write_bytes(_image(v))
    (root / "7" / "photo.jpg").write_bytes(encode_jpeg(np.full((8, 8, 3), 90, dtype=np.uint8)))
    return root


def test_class_folders_give_labels_and_a_lineage(class_folders: Path) -> None:
    found = load_image_set(class_folders)
    assert [(i.name, i.label) for i in found.items] == [
        ("0/img-10.png", 0),
        ("0/img-20.png", 0),
        ("7/img-200.png", 7),
        ("7/photo.jpg", 7),
    ]
    assert found.items[-1].content_type == "image/jpeg"
    lineage = found.lineage
    assert lineage.count == 4 and lineage.classes == {0: 2, 7: 2} and lineage.name == "cams"
    assert lineage.version == lineage.sha256[:12] and len(lineage.sha256) == 64


def test_a_manifest_gives_the_same_set_and_the_same_hash(class_folders: Path) -> None:
    rows = [
        {"path": f"cams/{i.name}", "label": i.label} for i in load_image_set(class_folders).items
    ]
    jsonl = class_folders.parent / "set.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in reversed(rows)))  # order does not matter
    csv = class_folders.parent / "set.csv"
    csv.write_text("path,label\n" + "\n".join(f"{r['path']},{r['label']}" for r in rows))
    hashes = {load_image_set(p).lineage.sha256 for p in (jsonl, csv)}
    assert len(hashes) == 1


def test_the_hash_changes_with_any_pixel_or_label(class_folders: Path) -> None:
    before = load_image_set(class_folders).lineage.sha256
    (class_folders / "0" / "img-10.png").write_bytes(_image(11))
    changed_pixels = load_image_set(class_folders).lineage.sha256
    (class_folders / "0" / "img-10.png").rename(class_folders / "7" / "img-10.png")
    changed_label = load_image_set(class_folders).lineage.sha256
    assert len({before, changed_pixels, changed_label}) == 3


def test_a_flat_folder_is_an_unlabelled_set_for_drills_only(tmp_path: Path) -> None:
    for v in (1, 2):
        (tmp_path / f"{v}.png").write_bytes(_image(v))
    found = load_image_set(tmp_path, require_labels=False)
    assert not found.labelled and found.lineage.classes == {}
    with pytest.raises(ImageSetError, match="needs a label"):
        load_image_set(tmp_path)


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        ({"cat/a.png": _image(1)}, "not a class index"),
        ({"0/a.png": b"not an image"}, "not a readable PNG"),
        ({"0/a.png": _image(1), "b.png": _image(2)}, "one layout"),
        ({"0/notes.txt": b"x"}, "no images"),
    ],
)
def test_a_bad_set_is_refused_with_its_reason(
    tmp_path: Path, layout: dict[str, bytes], reason: str
) -> None:
    for name, data in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ImageSetError, match=reason) as caught:
        load_image_set(tmp_path)
    assert caught.value.code == "invalid_image_set"


def test_versions_must_fit_in_a_correlation_id(class_folders: Path) -> None:
    assert load_image_set(class_folders, version="v2.1").lineage.version == "v2.1"
    with pytest.raises(ImageSetError, match="letters, digits"):
        load_image_set(class_folders, version="v2 final")


def test_the_embedded_set_is_the_digits_pool() -> None:
    first = embedded_set(10)
    assert first.lineage.source == "embedded" and first.labelled and first.lineage.count == 10
    assert embedded_set(None).lineage.count > 400
    assert embedded_set(10).lineage.sha256 == first.lineage.sha256  # deterministic


def test_the_command_prints_the_lineage_and_needs_a_token(
    class_folders: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    common = {
        "url": "http://127.0.0.1:9",
        "count": None,
        "every_s": 0,
        "runs": 1,
        "token_file": None,
        "token_env": "NO_SUCH_TOKEN",
    }
    assert sentinel_command(**common, set_path=str(class_folders), inspect_only=True) == 0
    printed = json.loads(capsys.readouterr().out.removeprefix("sentinel set "))
    assert printed["count"] == 4 and printed["classes"] == {"0": 2, "7": 2}
    assert sentinel_command(**common, set_path=str(class_folders)) == 2
    assert "no admin token" in capsys.readouterr().out
    assert sentinel_command(**common, set_path=str(class_folders / "missing")) == 2
