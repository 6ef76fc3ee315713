"""Study store: files by UID, one row per study, which arrivals restart the analysis."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select

from ctriage.service.db import DONE, RECEIVING, Study, open_db
from ctriage.service.store import StudyStore, age_text, safe_name
from tests.service.conftest import store_series


def _only_study(store: StudyStore) -> Study:
    with store.sessions() as session:
        (study,) = session.scalars(select(Study)).all()
        return study


def _set_done(store: StudyStore) -> None:
    with store.sessions.begin() as session:
        session.scalars(select(Study)).one().status = DONE


def test_own_results_routed_back_do_not_restart_the_analysis(config, ct_series: Path):
    config.data_dir.mkdir(parents=True)
    store = StudyStore(config.studies_dir, open_db(config.db_url))
    store_series(store, ct_series)
    _set_done(store)
    seg_like = pydicom.dcmread(next(ct_series.iterdir()), stop_before_pixels=True)
    seg_like.Modality, seg_like.SOPInstanceUID, seg_like.SeriesInstanceUID = "SEG", generate_uid(), generate_uid()
    store.add_instance(b"DICM-bytes-of-a-seg", seg_like, "PACS1", "push")
    study = _only_study(store)
    assert (study.status, study.n_instances) == (DONE, 21)
    late_ct = pydicom.dcmread(next(ct_series.iterdir()), stop_before_pixels=True)
    late_ct.SOPInstanceUID = generate_uid()
    store.add_instance(b"DICM-bytes-of-a-ct", late_ct, "PACS1", "push")
    assert _only_study(store).status == RECEIVING


def test_unsafe_uids_do_not_escape_the_study_folder():
    assert safe_name("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    assert "/" not in safe_name("../../etc/passwd") and safe_name("../../etc/passwd").startswith("x")


def test_worklist_columns_from_the_header(config, ct_series: Path):
    config.data_dir.mkdir(parents=True)
    store = StudyStore(config.studies_dir, open_db(config.db_url))
    store_series(store, ct_series)
    with store.sessions() as session:
        row = session.scalars(select(Study)).one().summary()
    assert (row["patient_sex"], row["patient_age"], row["accession_number"], row["series_description"]) == (
        "female", "64 y", "ACC001", "CT Body 3.0")
    assert age_text("045Y") == "45 y" and age_text("006M") == "6 mo" and age_text("012D") == "12 d"
    assert age_text("", "19600815", "20260814") == "65 y" and age_text("", "19600815", "20260815") == "66 y"
    assert age_text("") == "" and age_text("", "1960", "20260101") == ""
