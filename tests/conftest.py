"""Shared fixtures: paths to the real data in ../shared/data and synthetic phantoms."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctriage.testing.phantom import Phantom, chest_phantom

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
P001_DICOM = DATA / "ct_volumes" / "covidctmd_P001_covid19" / "dicom"
P001_LABELS = DATA / "ct_volumes" / "covidctmd_P001_covid19" / "slice_labels.csv"
A0001_DICOM = DATA / "ct_volumes" / "lungpetctdx_A0001_noncovid_adenocarcinoma"
CAP001 = DATA / "ct_volumes" / "covidctmd_cap001_cap"
NORMAL002_DICOM = DATA / "ct_volumes" / "covidctmd_normal002_normal" / "dicom"
TOTALSEG = DATA / "totalsegmentator_examples"


def require(path: Path) -> Path:
    """Skip the test when a real-data path from ../shared/data is absent."""
    if not path.exists():
        pytest.skip(f"real data not available: {path} (the ../shared/data folder is absent)")
    return path


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    return chest_phantom(peripheral_consolidation=True)


@pytest.fixture(scope="session")
def p001():
    from ctriage.io import load_volume

    return load_volume(require(P001_DICOM))
