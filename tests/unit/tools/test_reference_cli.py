"""Reference sets with probabilities, and ``serve-drift reference`` (build, from-traffic, inspect).

No Ray: ``from-traffic`` is exercised through the monitor's ``traffic_sample`` method directly.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_drift import DriftConfig, ReferenceSet
from serve_drift.messages import EventBatch
from serve_drift.monitor.deployment import DriftMonitor
from serve_drift.monitor.state import MonitorState
from serve_drift.monitor.traffic_sample import TrafficSample
from serve_drift.reference import find_images
from serve_drift.reference.embed import embed_outputs
from serve_drift.reference.reference_set import ReferenceIntegrityError
from serve_drift.tools.cli import main as cli_main
from serve_drift.tools.reference_cli import main, save_traffic_sample
from tests.support.batches import event_batch


def with_probabilities(rows: int = 30) -> ReferenceSet:
    rng = np.random.default_rng(0)
    return ReferenceSet.from_embeddings(
        rng.normal(size=(rows, 4)),
        probabilities=rng.dirichlet(np.ones(3), size=rows),
        model_name="m",
        model_version="1",
        data_version="d",
    )


# --- probabilities in reference sets -------------------------------------------------------


def test_probabilities_round_trip_with_their_own_hash(tmp_path: Path) -> None:
    reference = with_probabilities()
    loaded = ReferenceSet.load(reference.save(tmp_path / "ref.npz"))
    assert loaded.probabilities is not None
    np.testing.assert_array_equal(loaded.probabilities, reference.probabilities)
    assert loaded.lineage.num_classes == 3
    assert loaded.lineage.probabilities_hash.startswith("sha256:")
    assert not loaded.probabilities.flags.writeable


def test_tampered_probabilities_are_refused(tmp_path: Path) -> None:
    path = with_probabilities().save(tmp_path / "ref.npz")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["probabilities"] = arrays["probabilities"][::-1].copy()
    np.savez(path, **arrays)
    with pytest.raises(ReferenceIntegrityError, match="probabilities hash") as error:
        ReferenceSet.load(path)
    assert error.value.code == "reference_hash_mismatch"


def test_missing_probabilities_array_is_refused(tmp_path: Path) -> None:
    path = with_probabilities().save(tmp_path / "ref.npz")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "probabilities"}
    np.savez(path, **arrays)
    with pytest.raises(ReferenceIntegrityError) as error:
        ReferenceSet.load(path)
    assert error.value.code == "reference_missing_key"


def test_sets_without_probabilities_still_load(tmp_path: Path) -> None:
    plain = ReferenceSet.from_embeddings(
        np.ones((5, 2)) * np.arange(5)[:, None], model_name="m", model_version="1", data_version="d"
    )
    loaded = ReferenceSet.load(plain.save(tmp_path / "plain.npz"))
    assert loaded.probabilities is None and loaded.lineage.probabilities_hash == ""


def test_probabilities_must_match_the_embeddings() -> None:
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        ReferenceSet.from_embeddings(
            np.ones((5, 2)),
            probabilities=np.ones((4, 3)) / 3,
            model_name="m",
            model_version="1",
            data_version="d",
        )


def test_a_pickled_probabilities_array_is_refused(tmp_path: Path) -> None:
    path = with_probabilities().save(tmp_path / "ref.npz")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["probabilities"] = np.array([{"x": 1}], dtype=object)  # saved with pickle
    np.savez(path, **arrays)
    with pytest.raises(ReferenceIntegrityError) as error:
        ReferenceSet.load(path)
    assert error.value.code == "reference_pickle_refused"


# --- serve-drift reference build -----------------------------------------------------------


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    from serve_drift.models.digits import split_digits

    images = split_digits(seed=0).reference_images[:40]
    folder = tmp_path_factory.mktemp("digits")
    for i, image in enumerate(images):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(image).resize((32, 32)).save(sub / f"{i:03d}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder, images


def test_build_embeds_a_folder_through_the_served_model(
    digit_folder: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = digit_folder
    out = tmp_path / "ref.npz"
    code = cli_main(
        [
            "reference",
            "build",
            "--images",
            str(folder),
            "--out",
            str(out),
            "--data-version",
            "digits-40",
            "--source",
            "digits",
            "--window-size",
            "10",
            "--no-progress",
        ]
    )
    assert code == 0
    reference = ReferenceSet.load(out)
    assert reference.embeddings.shape == (40, 64)
    assert reference.probabilities is not None and reference.probabilities.shape == (40, 10)
    lineage = reference.lineage
    assert lineage.data_version == "digits-40" and lineage.model_name == "digits"
    assert lineage.preprocessing.startswith("grey, resize 8x8")
    assert "40 images in folder" in lineage.source
    assert lineage.model_source == "embedded digits CNN" and lineage.data_hash.startswith("sha256")
    # Exactly what the serving hooks capture for the same decoded images.
    from serve_drift.apps.model_loading import ModelSpec, load_model

    loaded = load_model(ModelSpec(source="digits"))
    paths = find_images(folder)
    images = [Image.open(p) for p in paths]
    expected = embed_outputs(loaded.model.eval(), images, preprocess=loaded.preprocess)
    np.testing.assert_allclose(reference.embeddings, expected.embeddings, rtol=1e-6)
    assert lineage.model_version == loaded.version
    printed = capsys.readouterr().out
    assert "40 x 64 embeddings, 10 classes" in printed
    # Calibrated by default, for the default detector at the window size asked for.
    (stored,) = reference.calibrations
    assert (
        stored.metadata["window_size"] == 10 and stored.metadata["detector"]["kind"] == "combined"
    )
    assert "calibration: combined/native, window 10 (M/N = 0.25)" in printed


APP_WITH_DRIFT = """applications:
  - name: digits
    args:
      model:
        source: digits
      drift:
        window: {size: 30}
        detectors: [{kind: mmd, backend: native}]
        calibration: {references: 10, windows: 10, min_references: 5}
"""


def test_build_calibrates_for_the_app_configs_detectors_and_window(
    digit_folder: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = digit_folder
    config = tmp_path / "app.yaml"
    config.write_text(APP_WITH_DRIFT)
    out = tmp_path / "ref.npz"
    args = ["build", "--images", str(folder), "--out", str(out), "--data-version", "v"]
    main([*args, "--app-config", str(config), "--no-progress"])
    (stored,) = ReferenceSet.load(out).calibrations
    assert stored.metadata["window_size"] == 30 and stored.null_p_values.shape == (10, 10)
    assert stored.metadata["detector"]["kind"] == "mmd"
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "calibration: mmd/native, window 30 (M/N = 0.75), 10 x 10 bootstrap draws" in printed
    assert "uncalibrated p < 0.05: false-alarm rate up to" in printed
    assert "calibrated p < 0.05: false-alarm rate at most 0.05" in printed
    # 30 of 40 rows per window: too many for the reference, and inspect says so.
    assert "warning: the window (30 rows) is too large" in printed


def test_build_stores_labels_and_can_skip_calibration(
    digit_folder: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = digit_folder
    paths = find_images(folder)
    labels = {p.relative_to(folder).as_posix(): i % 10 for i, p in enumerate(paths)}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    out = tmp_path / "ref.npz"
    args = ["build", "--images", str(folder), "--out", str(out), "--data-version", "v"]
    args += ["--source", "digits", "--labels", str(tmp_path / "labels.json")]
    main([*args, "--no-calibration", "--no-progress"])
    reference = ReferenceSet.load(out)
    assert reference.labels is not None and list(reference.labels) == [i % 10 for i in range(40)]
    assert reference.calibrations == ()
    assert "calibration: none stored" in capsys.readouterr().out
    del labels[paths[0].relative_to(folder).as_posix()]
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    assert main([*args, "--no-calibration", "--no-progress"]) == 2
    assert "error [missing_label]: 1 images have no label" in capsys.readouterr().err


def test_build_reads_the_model_from_an_app_config_and_samples(
    digit_folder: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    folder, _ = digit_folder
    config = tmp_path / "app.yaml"
    config.write_text(
        "applications:\n  - name: digits\n    args:\n      model:\n        source: digits\n"
    )
    out = tmp_path / "ref.npz"
    main(
        [
            "build",
            "--images",
            str(folder),
            "--out",
            str(out),
            "--data-version",
            "v",
            "--app-config",
            str(config),
            "--limit",
            "12",
            "--seed",
            "3",
            "--no-calibration",
            "--no-progress",
        ]
    )
    reference = ReferenceSet.load(out)
    assert len(reference.embeddings) == 12
    assert "random sample, seed 3" in reference.lineage.source
    with pytest.raises(ValueError, match="pick one application"):
        main(
            [
                "build",
                "--images",
                str(folder),
                "--out",
                str(out),
                "--data-version",
                "v",
                "--app-config",
                str(config),
                "--app",
                "other",
                "--no-progress",
            ]
        )


def test_build_refuses_a_folder_without_images(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no images"):
        find_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_images(tmp_path / "missing")


def test_inspect_verifies_and_prints_the_lineage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = with_probabilities().save(tmp_path / "ref.npz")
    assert main(["inspect", str(path)]) == 0
    printed = capsys.readouterr().out
    lineage = json.loads(printed[printed.index("{") :])
    assert lineage["num_classes"] == 3 and lineage["version"].startswith("d@")


# --- from served traffic -------------------------------------------------------------------


def traffic_batch(n: int, *, start: int, version: str = "1") -> EventBatch:
    rows = np.random.default_rng(start).normal(size=(n, 4)).astype(np.float32)
    probs = np.random.default_rng(start).dirichlet(np.ones(3), size=n).astype(np.float32)
    return event_batch(rows, start=start, version=version, probabilities=probs)


def test_the_traffic_sample_is_uniform_and_bounded() -> None:
    sample = TrafficSample(capacity=100, seed=0)
    for start in range(0, 5000, 50):
        b = traffic_batch(50, start=start)
        sample.add(b, keep=np.ones(50, dtype=bool))
    snapshot = sample.snapshot()
    assert snapshot.embeddings.shape == (100, 4) and snapshot.seen == 5000
    assert snapshot.probabilities is not None
    assert (snapshot.first_timestamp, snapshot.last_timestamp) == (1000.0, 5999.0)
    with pytest.raises(LookupError, match="no traffic sampled for model version '9'"):
        sample.snapshot(model_version="9")


def test_from_traffic_saves_the_monitors_sample(tmp_path: Path) -> None:
    monitor = DriftMonitor.__new__(DriftMonitor)  # the deployment body, without Ray
    monitor._config = DriftConfig(model_name="m", traffic_sample_size=64, events={"enabled": False})
    monitor._state = MonitorState(monitor._config)
    for start in range(0, 300, 30):
        monitor._state.accept(traffic_batch(30, start=start))
    answer = asyncio.run(monitor.traffic_sample())
    reference = save_traffic_sample(answer, out=tmp_path / "t.npz", data_version="live", app="a")
    loaded = ReferenceSet.load(tmp_path / "t.npz")
    assert loaded.embeddings.shape == (64, 4) and loaded.probabilities is not None
    assert "uniform sample of 300 rows served by app 'a'" in loaded.lineage.source
    assert reference.version == loaded.version


def test_from_traffic_finds_the_one_drift_monitor_or_says_which_to_name() -> None:
    from serve_drift.tools.reference_cli import MonitorNotFoundError, find_monitor

    assert find_monitor(["Router", "ClassifierDriftMonitor"], app="a") == "ClassifierDriftMonitor"
    with pytest.raises(MonitorNotFoundError, match="2 drift monitors") as several:
        find_monitor(["ADriftMonitor", "BDriftMonitor", "A", "B"], app="two")
    assert several.value.code == "monitor_not_found" and "--monitor" in str(several.value)
    with pytest.raises(MonitorNotFoundError, match="0 drift monitors"):
        find_monitor(["Classifier"], app="none")
