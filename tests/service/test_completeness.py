"""Complete series only: lungs cut at an edge slice, fewer instances than the PACS reports, re-analysis when the
rest arrives with the earlier result superseded. Real pipeline, real SQLite file, worker driven by ``run_once``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from ctriage.service.completeness import LUNG_CUT_RATIO, instance_count_reason, lung_cut_reason
from ctriage.service.config import DicomNode
from ctriage.service.db import DONE, INCOMPLETE, Study
from ctriage.service.runtime import Service
from tests.service.conftest import free_port, store_series


def _study(service: Service) -> Study:
    with service.sessions() as session:
        (study,) = session.scalars(select(Study)).all()
        _ = study.analyses
        return study


def _chest(n_slices: int, first_area: int, last_area: int) -> np.ndarray:
    """Lung labels: a 40 x 40 section on every slice, and the given areas on the first and last slice."""
    labels = np.zeros((n_slices, 64, 64), np.uint8)
    labels[1:-1, 10:50, 10:50] = 1
    labels[0].flat[:first_area] = 2
    labels[-1].flat[:last_area] = 2
    return labels


def test_lungs_cut_at_the_first_or_last_slice():
    largest = 40 * 40
    assert lung_cut_reason(_chest(10, 0, int(0.11 * largest))) == ""  # a whole chest: little lung at the edges
    at_limit = int(LUNG_CUT_RATIO * largest)
    assert lung_cut_reason(_chest(10, at_limit, 0)) == ""
    first = lung_cut_reason(_chest(10, at_limit + 1, 0))
    assert first.startswith("lungs cut at the edge of the series: first slice holds 30 %") and "last" not in first
    both = lung_cut_reason(_chest(10, largest, largest))
    assert "first slice holds 100 %" in both and "last slice holds 100 %" in both
    assert lung_cut_reason(np.zeros((5, 8, 8), np.uint8)) == ""  # no lung at all: nothing to say here


def test_instance_count_against_the_pacs(tmp_path: Path):
    series = tmp_path / "1.2.3"
    series.mkdir()
    for index in range(3):
        (series / f"{index}.dcm").write_bytes(b"x")
    expected = "received 3 of the 5 instances the PACS reports for the series"
    assert instance_count_reason(series, {"1.2.3": 5}) == expected
    assert instance_count_reason(series, {"1.2.3": 3}) == ""
    assert instance_count_reason(series, {"9.9": 5}) == "" and instance_count_reason(series, None) == ""


@pytest.fixture
def analyze_with_lungs(analyze):
    """The real pipeline, with a lung block on every slice of a partial series: lungs at both edges.

    The example CT holds no lung; the whole study (20 slices) keeps it lung-free, so it reads as complete. A part
    of it is analysed with the lesion model (the fixed lesion mask is on the whole study's grid).
    """
    from ctriage.pipeline import analyze_path

    def run(path: Path, progress=None):
        if len(list(path.rglob("*.dcm"))) == 20:
            return analyze(path, progress)
        result = analyze_path(path, progress=progress)
        result.lungs.right[:, 200:300, 100:200] = True
        return result

    return run


def test_half_a_series_is_incomplete_until_the_rest_arrives(config, ct_series: Path, analyze_with_lungs, tmp_path):
    node = DicomNode("NOBODY", "127.0.0.1", free_port())  # a destination: nothing may be sent for a partial series
    service = Service.create(replace(config, destination=node), analyze_with_lungs)
    files = sorted(ct_series.iterdir())
    store_series(service.store, ct_series, files[:12])
    assert service.worker.run_once()
    study = _study(service)
    assert study.status == INCOMPLETE and study.error.startswith("lungs cut at the edge of the series")
    assert study.report["completeness"] == {"complete": False, "reasons": [study.error]}
    assert study.report["identification"]["reliable"] is False
    assert any(w.startswith("incomplete series: lungs cut") for w in study.report["warnings"])
    assert study.send_status == "" and not (Path(study.result_dir) / "dicom").exists()
    assert service.worker.send_results(study.id).startswith("failed: the series is incomplete")

    store_series(service.store, ct_series, files[12:])  # the rest arrives: analysed again
    assert service.worker.run_once()
    study = _study(service)
    assert study.status == DONE and study.error == "" and study.report["completeness"]["complete"]
    first, second = study.analyses
    assert (first.status, first.n_instances, second.status, second.n_instances) == (INCOMPLETE, 12, DONE, 20)
    assert first.superseded_by == second.id and first.superseded_at is not None
    assert second.superseded_at is None and study.result_dir == second.result_dir != first.result_dir
    assert Path(first.result_dir, "report.json").is_file()  # the earlier result stays readable


def test_fewer_instances_than_the_pacs_reported(config, ct_series: Path, analyze):
    service = Service.create(config, analyze)
    study_uid = store_series(service.store, ct_series)
    series_uid = str(pydicom.dcmread(next(ct_series.iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    service.store.expect_instances(study_uid, {series_uid: 25})
    service.worker.run_once()
    study = _study(service)
    assert study.status == INCOMPLETE
    assert study.error == "received 20 of the 25 instances the PACS reports for the series"
