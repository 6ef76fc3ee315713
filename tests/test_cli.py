"""`ctriage analyze` end to end, and bad input: one clear message, exit code 2, no traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ctriage.cli import app
from ctriage.io.nifti import save_nifti
from tests.io.dicom_factory import write_series

runner = CliRunner()
Z_20 = [2.0 * k for k in range(20)]


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory, phantom):
    folder = tmp_path_factory.mktemp("phantom")
    ct = save_nifti(phantom.volume.hu, phantom.volume.affine, folder / "ct.nii.gz")
    mask = save_nifti(phantom.lesion_labels, phantom.volume.affine, folder / "lesions.nii.gz")
    return ct, mask


def test_analyze_with_given_lesion_mask(tmp_path, phantom_files, phantom):
    ct, mask = phantom_files
    result = runner.invoke(app, ["analyze", str(ct), "-o", str(tmp_path / "out"), "--lesion-mask", str(mask)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    voxel_ml = phantom.volume.voxel_volume_ml
    assert report["severity"]["ggo_ml"] == pytest.approx((phantom.lesion_labels == 1).sum() * voxel_ml, rel=1e-6)
    assert report["severity"]["consolidation_ml"] == pytest.approx(
        (phantom.lesion_labels == 2).sum() * voxel_ml, rel=1e-6
    )
    assert report["severity"]["ct_category"] == 1
    assert report["lesion_source"] == "given mask"
    assert set(report["timings_s"]) >= {"load", "lungs", "lesions", "severity"}
    assert report["input"]["spacing_mm_zyx"] == pytest.approx(list(phantom.volume.spacing_mm))
    for name in ("lungs.nii.gz", "lesions.nii.gz", "projection.png", *report["files"]["overlays"]):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert report["files"]["overlays"]


def test_no_lungs_is_a_warning_not_a_crash(tmp_path):
    write_series(tmp_path / "abdomen", Z_20)  # uniform soft tissue: no lung at all
    result = runner.invoke(app, ["analyze", str(tmp_path / "abdomen"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "not a chest CT" in result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["severity"]["ct_category"] == 0 and report["warnings"]


def _bad(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_bad_inputs_exit_2(tmp_path):
    _bad(["analyze", str(tmp_path / "missing"), "-o", str(tmp_path / "o")], "no such file")
    (tmp_path / "empty").mkdir()
    _bad(["analyze", str(tmp_path / "empty"), "-o", str(tmp_path / "o")], "empty")
    write_series(tmp_path / "mr", Z_20, modality="MR")
    _bad(["analyze", str(tmp_path / "mr"), "-o", str(tmp_path / "o")], "modality MR")
    write_series(tmp_path / "few", Z_20[:4])
    _bad(["analyze", str(tmp_path / "few"), "-o", str(tmp_path / "o")], "4 slices")
    write_series(tmp_path / "gap", Z_20[:8] + Z_20[11:])
    _bad(["analyze", str(tmp_path / "gap"), "-o", str(tmp_path / "o")], "missing slices")
    paths = write_series(tmp_path / "corrupt", Z_20)
    paths[0].write_bytes(paths[0].read_bytes()[:300])
    _bad(["analyze", str(tmp_path / "corrupt"), "-o", str(tmp_path / "o")], "corrupt DICOM")
    single = write_series(tmp_path / "single", [0.0])
    _bad(["analyze", str(single[0]), "-o", str(tmp_path / "o")], "2D")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    _bad(["analyze", str(tmp_path / "junk.nii.gz"), "-o", str(tmp_path / "o")], "not a readable NIfTI")


def test_folder_of_studies_continues_past_a_bad_one(tmp_path, phantom_files):
    ct, mask = phantom_files
    studies = tmp_path / "in"
    (studies / "good").mkdir(parents=True)
    (studies / "good" / "ct.nii.gz").write_bytes(ct.read_bytes())
    write_series(studies / "mr", Z_20, modality="MR")
    result = runner.invoke(app, ["analyze", str(studies), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "modality MR" in result.output
    assert (tmp_path / "out" / "good_ct.nii.gz" / "report.json").exists()
