"""DICOM loading: slice order by position, HU, orientation, series choice, and every kind of bad input."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest

from ctriage.io import (
    CorruptFileError,
    EmptyInputError,
    IncompleteSeriesError,
    InputNotFoundError,
    NotCTError,
    NotVolumeError,
    find_studies,
    load_study,
    load_volume,
)
from tests.conftest import A0001_DICOM, P001_LABELS, require
from tests.io.dicom_factory import write_multiframe, write_series

Z_20 = [float(z) for z in np.arange(20) * 2.0]


def test_synthetic_series_sorted_by_position_not_file_name(tmp_path):
    write_series(tmp_path / "s", Z_20)
    volume = load_volume(tmp_path / "s")
    assert volume.shape == (20, 32, 32)
    assert volume.spacing_mm == pytest.approx((2.0, 1.0, 1.0))
    # slice k has HU -24 + 10 k; canonical z runs head (highest z) to feet
    assert volume.hu[:, 0, 0].tolist() == [-24 + 10 * k for k in range(19, -1, -1)]
    assert volume.meta.patient_id == "SYN001"
    assert volume.affine[2, 3] == pytest.approx(38.0)  # LPS z of the first (most superior) slice


def test_localizer_and_other_series_are_skipped(tmp_path):
    write_series(tmp_path / "axial", Z_20, study_uid="1.2.3.4")
    write_series(tmp_path / "scout", Z_20[:3], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), study_uid="1.2.3.4")
    volume = load_volume(tmp_path)
    assert volume.shape[0] == 20


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(InputNotFoundError, match="no such file"):
        load_volume(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyInputError, match="empty"):
        load_volume(tmp_path / "empty")


def test_corrupt_dicom_is_named(tmp_path):
    paths = write_series(tmp_path / "s", Z_20)
    paths[3].write_bytes(paths[3].read_bytes()[:200])
    with pytest.raises(CorruptFileError, match=paths[3].name):
        load_volume(tmp_path / "s")


def test_corrupt_pixel_data_is_named(tmp_path):
    paths = write_series(tmp_path / "s", Z_20)
    ds = pydicom.dcmread(paths[5])
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(paths[5])
    with pytest.raises(CorruptFileError, match="pixel data"):
        load_volume(tmp_path / "s")


def test_non_ct_modality(tmp_path):
    write_series(tmp_path / "mr", Z_20, modality="MR")
    with pytest.raises(NotCTError, match="modality MR"):
        load_volume(tmp_path / "mr")


def test_too_few_slices_and_gaps(tmp_path):
    write_series(tmp_path / "few", Z_20[:5])
    with pytest.raises(IncompleteSeriesError, match="5 slices"):
        load_volume(tmp_path / "few")
    write_series(tmp_path / "gap", Z_20[:8] + Z_20[10:])
    with pytest.raises(IncompleteSeriesError, match="missing slices"):
        load_volume(tmp_path / "gap")
    uneven = [0.0, 2.0, 4.0, 5.0, 7.0, 9.0, 11.0, 12.5, 14.5, 16.5, 18.5, 20.5]
    write_series(tmp_path / "uneven", uneven)
    with pytest.raises(IncompleteSeriesError, match="non-uniform"):
        load_volume(tmp_path / "uneven")


def test_single_2d_image(tmp_path):
    paths = write_series(tmp_path / "one", [0.0])
    with pytest.raises(NotVolumeError, match="single 2D"):
        load_volume(paths[0])


def test_folder_of_several_studies(tmp_path):
    write_series(tmp_path / "a", Z_20)
    write_series(tmp_path / "b", Z_20)
    (tmp_path / "README.md").write_text("notes beside the studies, as in a data export\n")
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")  # an index, not an image
    (tmp_path / "b_labels").mkdir()
    (tmp_path / "b_labels" / "slice_labels.csv").write_text("file,infection\n")
    studies = find_studies(tmp_path)
    assert sorted(s.label for s in studies) == ["a", "b"]  # files that are not DICOM are no studies


def test_damaged_dicom_without_study_is_its_own_failing_study(tmp_path):
    write_series(tmp_path / "a", Z_20)
    (tmp_path / "lone").mkdir()
    (tmp_path / "lone" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    studies = find_studies(tmp_path)
    assert sorted(s.label for s in studies) == ["a", "lone"]
    with pytest.raises(CorruptFileError, match="broken.dcm"):
        load_study(next(s for s in studies if s.label == "lone"))


def test_p001_jpegls_in_slice_order(p001):
    """P001: JPEG-LS lossless, file names out of order; canonical z must follow the radiologists' rows."""
    assert p001.shape == (148, 512, 512)
    assert p001.spacing_mm == pytest.approx((2.0, 0.748046875, 0.748046875))
    stored = [pydicom.dcmread(f) for f in p001.slice_files[::10]]  # every tenth slice, decoded by pydicom alone
    expected = [np.clip(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept), -1024, 3071)
                for ds in stored]
    assert np.array_equal(p001.hu[::10], np.stack(expected).astype(np.int16))
    with open(require(P001_LABELS)) as handle:
        rows = list(csv.DictReader(handle))
    assert [f.name for f in p001.slice_files] == [row["file"] for row in rows]


def test_a0001_whole_chest():
    volume = load_volume(require(A0001_DICOM))
    assert volume.shape == (64, 512, 512)
    assert volume.spacing_mm == pytest.approx((5.0, 0.841796875, 0.841796875))
    assert volume.meta.patient_id == "Lung_Dx-A0001"


def test_enhanced_multiframe_ct(tmp_path):
    positions = [1.5 * k for k in (3, 0, 1, 2, 5, 4, 6, 7, 9, 8, 10, 11)]
    write_multiframe(tmp_path / "enhanced.dcm", positions)
    volume = load_volume(tmp_path / "enhanced.dcm")
    assert volume.shape == (12, 24, 24)
    assert volume.spacing_mm == pytest.approx((1.5, 0.5, 0.5))
    # head first: the frame at the highest z (16.5 mm, stored 12th) comes first
    by_position = sorted(range(12), key=lambda k: -positions[k])
    assert volume.hu[:, 0, 0].tolist() == [-24 + 10 * k for k in by_position]


def test_nifti_orientation_matches_dicom(tmp_path):
    """A volume written as NIfTI and read back keeps values, spacing and LPS affine."""
    from ctriage.io.nifti import save_nifti

    write_series(tmp_path / "s", Z_20)
    volume = load_volume(tmp_path / "s")
    back = load_volume(save_nifti(volume.hu, volume.affine, tmp_path / "v.nii.gz"))
    assert np.array_equal(back.hu, volume.hu)
    assert back.spacing_mm == pytest.approx(volume.spacing_mm)
    assert np.allclose(back.affine, volume.affine)
