"""DICOM SEG / SR / SC from a result on the real example CT: readable back, mapped onto the right pixels."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ctriage.io import load_volume
from ctriage.lungs import LungMasks
from ctriage.preprocess import WorkGrid
from ctriage.report.dicom_out import build_dicom_outputs, to_stored_grid, write_dicom_outputs
from ctriage.result import Lesions, StudyResult
from ctriage.severity import quantify
from tests.conftest import TOTALSEG, require

EXAMPLE_CT = TOTALSEG / "tests" / "reference_files" / "example_ct_dicom"


def _slice_files(volume, folder: Path) -> list[Path]:
    """The file of each canonical z slice, matched by ImagePositionPatient against the volume's affine."""
    positions = {f: np.asarray(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, float)
                 for f in folder.iterdir()}
    out = []
    for k in range(volume.shape[0]):
        corner = volume.affine[:3, :3] @ [k, 0, 0] + volume.affine[:3, 3]
        out.append(min(positions, key=lambda f: np.abs(positions[f][2] - corner[2])))
    return out


@pytest.fixture(scope="module")
def result_and_files():
    """A StudyResult over the real CT with a known GGO box in the right lung and consolidation in the left."""
    volume = load_volume(require(EXAMPLE_CT))
    files = _slice_files(volume, EXAMPLE_CT)
    air = volume.hu < -400
    right, left = air.copy(), air.copy()
    right[:, :, 256:] = False  # x runs from the patient's right to left
    left[:, :, :256] = False
    lesions = np.zeros(volume.shape, np.uint8)
    lesions[5, 100:150, 100:200] = 1
    lesions[6:8, 200:230, 300:400] = 2
    return _result(volume, left, right, lesions), files


def _result(volume, left: np.ndarray, right: np.ndarray, lesions: np.ndarray) -> StudyResult:
    lungs = LungMasks(left, right, WorkGrid.of(volume.spacing_mm))
    return StudyResult(volume, lungs, Lesions(lesions, "given mask"), quantify(left, right, lesions, volume.spacing_mm))


def test_seg_sr_sc_round_trip(result_and_files, tmp_path: Path):
    result, files = result_and_files
    summary = np.full((64, 48, 3), 128, np.uint8)
    paths = write_dicom_outputs(build_dicom_outputs(result, files, summary), tmp_path)
    assert [p.name for p in paths] == ["seg.dcm", "sr.dcm", "sc.dcm"]
    seg_ds, sr_ds, sc_ds = (pydicom.dcmread(p) for p in paths)
    source = pydicom.dcmread(files[5])
    for ds in (seg_ds, sr_ds, sc_ds):
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.SeriesInstanceUID != source.SeriesInstanceUID

    masks = (result.lesions.mask == 1, result.lesions.mask == 2, result.lungs.right, result.lungs.left)
    frames = sum(int(m.reshape(m.shape[0], -1).any(axis=1).sum()) for m in masks)
    assert seg_ds.NumberOfFrames == frames < 4 * len(files)  # only frames where a segment is present
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3, 4)] == [
        "Ground-glass opacity", "Consolidation", "Right lung", "Left lung"]
    ggo = seg.get_pixels_by_source_instance([source.file_meta.MediaStorageSOPInstanceUID], segment_numbers=[1])
    assert ggo.shape == (1, 512, 512, 1)
    np.testing.assert_array_equal(ggo[0, :, :, 0], result.lesions.mask[5] == 1)

    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    by_site = {g.finding_sites[0].value.value: g for g in groups}
    right = by_site["3341006"]  # SCT right lung
    percent = [m for m in right.get_measurements() if m.name.meaning.startswith("Lesion volume")][0]
    assert percent.value == pytest.approx(100 * result.severity.right.ratio, rel=1e-6)
    referenced = {e.value for e in sr_ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
    assert seg_ds.SOPInstanceUID in referenced and source.file_meta.MediaStorageSOPInstanceUID in referenced

    assert (sc_ds.Rows, sc_ds.Columns, sc_ds.PhotometricInterpretation) == (64, 48, "RGB")


def test_seg_references_only_the_slices_holding_segments(result_and_files):
    """Lungs and lesions on slices 5..7 only: the SEG references those three slices, one frame per segment there."""
    result, files = result_and_files
    right, left = np.zeros_like(result.lungs.right), np.zeros_like(result.lungs.left)
    right[5:8], left[5:8] = result.lungs.right[5:8], result.lungs.left[5:8]
    seg = build_dicom_outputs(_result(result.volume, left, right, result.lesions.mask.copy()), files)[0]
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f).file_meta.MediaStorageSOPInstanceUID for f in files[5:8]}
    assert seg.NumberOfFrames == 1 + 2 + 3 + 3  # GGO on 5, consolidation on 6 and 7, both lungs on 5..7


def test_masks_follow_the_source_pixel_grid():
    """A source stored flipped left-right (columns run to the patient's right) gets a flipped mask."""
    mask = np.zeros((1, 4, 6), np.uint8)
    mask[0, 1, 0] = 1  # canonical: anterior row 1, most right-sided column
    affine = np.eye(4)  # columns: z (head->feet = -S), y (+P), x (+L) in LPS
    affine[:3, :3] = [[0.0, 0.0, 0.8], [0.0, 0.8, 0.0], [-2.0, 0.0, 0.0]]
    flipped = pydicom.Dataset()
    flipped.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    assert to_stored_grid(mask, affine, flipped)[0, 1, 5] == 1
    transposed = pydicom.Dataset()
    transposed.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    assert to_stored_grid(mask, affine, transposed)[0, 0, 1] == 1


def test_wrong_number_of_source_files_is_refused(result_and_files):
    result, files = result_and_files
    with pytest.raises(ValueError, match="source files"):
        build_dicom_outputs(result, files[:-1])


def test_sources_missing_type2_attributes_still_work(result_and_files, tmp_path: Path):
    """Anonymisers sometimes delete PatientName / StudyID outright; the outputs carry them empty."""
    result, files = result_and_files
    stripped = []
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        for keyword in ("PatientName", "StudyID", "ReferringPhysicianName"):
            if keyword in ds:
                delattr(ds, keyword)
        stripped.append(tmp_path / f"{index}.dcm")
        ds.save_as(stripped[-1])
    seg, sr = build_dicom_outputs(result, stripped)
    assert not seg.PatientName and not sr.PatientName and "PatientName" in seg
