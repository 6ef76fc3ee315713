"""The bad-input corpus (tests/io/bad_inputs.py): every case gives its expected outcome, never another exception."""

from __future__ import annotations

import numpy as np
import pytest

from ctriage.io import CorruptFileError, InputError, find_studies, load_study
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


def test_thin_series_cut_slice_not_analysed_is_found(bases, tmp_path):
    """A thin series decodes only the analysed slices at load; a slice among the others that is cut short is
    still found at load (headers and pixel data framing of every slice are checked), naming its file."""
    from tests.io.bad_inputs import _edit, _scale_z

    folder = _edit(_scale_z(0.5), "all")(bases["dicom"][0], tmp_path)  # 1 mm apart: every other slice analysed
    volume = _load(folder)
    assert analysis_slices(volume.spacing_mm) == slice(1, None, 2)
    skipped = volume.slice_files[0]  # z 0: not analysed, not decoded at load
    skipped.write_bytes(skipped.read_bytes()[:-1000])
    with pytest.raises(CorruptFileError, match=f"{skipped.name}: pixel data cut short"):
        _load(folder)
