"""The drift report a drill writes, opened in a real headless Chromium (Debian's ``chromium``):
every figure is there, decodes, and is shown by the page; the page fetches nothing.

``SERVE_DRIFT_REPORT_SCREENSHOT=<file.png>`` also keeps the full-page screenshot there (the
one in ``docs/`` was taken this way).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_drift.tools.drill import DrillOptions, run_drill
from serve_drift.tools.drill_scenario import load_scenario
from tests.support.chromium import PageVisit, chromium_binary, visit
from tests.support.drill_app import digits_app
from tests.support.serve import ADMIN_TOKEN, ServeInstance

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(
    serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    chromium_binary()  # fail first, naming the package, if the browser is missing
    folder = tmp_path_factory.mktemp("report")
    with digits_app(serve_instance, name="reported", db=folder / "events.sqlite") as app:
        result = run_drill(
            load_scenario("digits-occlusion"),
            DrillOptions(
                url=app.url, admin_token=ADMIN_TOKEN, db=app.db, report_dir=folder / "out"
            ),
        )
    assert result.ok and result.report is not None
    yield result.report


@pytest.fixture(scope="module")
def page(report: Path) -> PageVisit:
    return visit(report)


def test_every_figure_is_present_non_empty_and_shown(report: Path, page: PageVisit) -> None:
    files = sorted(p.name for p in report.parent.glob("*.png"))
    # Everything but the shadow comparison: this app has no shadow arm.
    assert files == sorted(
        [
            "drift.png",
            "alerts.png",
            "accuracy.png",
            "per_class.png",
            "calibration.png",
            "inputs.png",
            "drops.png",
        ]
    )
    shown = {image["figure"]: image for image in page.images}
    assert sorted(shown) == files and len(page.images) == len(files)
    for name in files:
        image = shown[name]
        on_disk = Image.open(report.parent / name)
        assert image["complete"] and (image["width"], image["height"]) == on_disk.size
        assert np.asarray(on_disk.convert("L"), dtype=float).std() > 10  # not a blank canvas


def test_the_page_loads_no_external_resource(page: PageVisit) -> None:
    assert page.requests and page.requests[0].startswith("file://")
    outside = [url for url in page.requests if not url.startswith(("file://", "data:"))]
    assert outside == [] and page.resources == []


def test_the_screenshot_shows_the_report(page: PageVisit, tmp_path: Path) -> None:
    shot = Image.open(io.BytesIO(page.screenshot))
    assert shot.width == 1200 and shot.height > 2000  # the whole page, figures included
    assert np.asarray(shot.convert("L"), dtype=float).std() > 20
    assert page.title.startswith("Drill digits-occlusion")
    path = tmp_path / "report.png"
    path.write_bytes(page.screenshot)
    keep = os.environ.get("SERVE_DRIFT_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(path, keep)
