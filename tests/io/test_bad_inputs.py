"""The bad-input corpus (tests/io/bad_inputs.py): every case gives its expected outcome, never another exception."""

from __future__ import annotations

import numpy as np
import pytest

from ctriage.io import InputError, find_studies, load_study
from ctriage.pipeline import analysis_slices
from tests.conftest import TOTALSEG, require
from tests.io.bad_inputs import CASES_BY_NAME, Case, native_series

TS_DICOM = TOTALSEG / "tests" / "reference_files" / "example_ct_dicom"
TS_NIFTI = TOTALSEG / "example_ct_sm.nii.gz"


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict:
    """The plain studies the cases derive from, and each loaded as the reference outcome."""
    native = native_series(require(TS_DICOM), tmp_path_factory.mktemp("native") / "series")
    paths = {"dicom": native, "dicom_j2k": TS_DICOM, "nifti": require(TS_NIFTI)}
    return {name: (path, _load(path)) for name, path in paths.items()}


def _load(path):
    """Load the one study at ``path`` as the CLI does (thin series: the analysed slices first)."""
    studies = find_studies(path)
    assert len(studies) == 1
    return load_study(studies[0], workers=1, first=analysis_slices)


@pytest.mark.parametrize("name", sorted(CASES_BY_NAME))
def test_case(name, bases, tmp_path):
    case: Case = CASES_BY_NAME[name]
    base, reference = bases[case.base]
    path = case.make(base, tmp_path)
    if case.outcome == "error":
        with pytest.raises(case.error, match=None) as caught:
            _load(path)
        assert case.text in str(caught.value)
        assert str(path) in str(caught.value) or path.name in str(caught.value) or "series" in str(caught.value)
        return
    try:
        volume = _load(path)
    except InputError as exc:
        pytest.fail(f"{name}: expected {case.outcome}, got {type(exc).__name__}: {exc}")
    if case.outcome == "same":
        assert volume.warnings == []
        assert volume.spacing_mm == pytest.approx(reference.spacing_mm, abs=1e-6)
        assert np.array_equal(volume.hu, reference.hu)
        return
    assert any(case.text in warning for warning in volume.warnings), volume.warnings
    if volume.shape == reference.shape:  # not slabs made of several slices: the values are those of the study
        assert np.array_equal(volume.hu, reference.hu)
