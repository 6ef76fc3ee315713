"""`ctriage analyze` end to end, and bad input: one clear message, exit code 2, no traceback."""

from __future__ import annotations

import json
import time

import numpy as np
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


# Input safety (issue 15): outputs per study, output folder checked first, atomic outputs, no stale report.


def test_two_studies_in_one_flat_folder_get_their_own_outputs(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    uids = []
    for name in ("a", "b"):
        uids.append(f"1.2.826.0.1.3680043.9.{len(uids) + 1}")
        for path in write_series(tmp_path / name, Z_20, study_uid=uids[-1]):
            path.rename(flat / f"{name}_{path.name}")
    result = runner.invoke(app, ["analyze", str(flat), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    reports = sorted((tmp_path / "out").glob("*/report.json"))
    assert len(reports) == 2
    assert sorted(json.loads(r.read_text())["study"]["study_instance_uid"] for r in reports) == sorted(uids)
    assert all(r.parent.name.startswith("flat_SYN001_20260101_") for r in reports)


def test_output_folder_not_writable_fails_before_analysis(tmp_path, phantom_files):
    ct, mask = phantom_files
    (tmp_path / "file").write_text("a file, not a folder")
    result = runner.invoke(app, ["analyze", str(ct), "-o", str(tmp_path / "file" / "out")])
    assert result.exit_code == 2, result.output
    assert "cannot write the outputs there" in result.output and "Traceback" not in result.output
    assert "load" not in result.output  # no stage started


def test_disk_too_full_fails_before_analysis(tmp_path, phantom_files, monkeypatch):
    import shutil

    ct, mask = phantom_files
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    result = runner.invoke(app, ["analyze", str(ct), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "only 1 MiB free" in result.output


def test_disk_full_while_writing_leaves_no_report(tmp_path, phantom_files, monkeypatch):
    import errno
    import os

    ct, mask = phantom_files
    replace = os.replace

    def full(source, target):
        if str(target).endswith("report.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        replace(source, target)

    monkeypatch.setattr(os, "replace", full)
    result = runner.invoke(app, ["analyze", str(ct), "-o", str(tmp_path / "out"), "--lesion-mask", str(mask)])
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "report.json").exists()
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_failed_rerun_leaves_no_stale_report(tmp_path, phantom_files, phantom):
    ct, mask = phantom_files
    out = tmp_path / "out"
    assert runner.invoke(app, ["analyze", str(ct), "-o", str(out), "--lesion-mask", str(mask)]).exit_code == 0
    outputs = json.loads((out / "report.json").read_text())["files"]
    (out / "notes.txt").write_text("the user's own file")
    raw = save_nifti(phantom.volume.hu + 1100, phantom.volume.affine, tmp_path / "raw.nii.gz")  # no air left
    started = time.monotonic()
    result = runner.invoke(app, ["analyze", str(raw), "-o", str(out)])
    assert time.monotonic() - started < 30  # refused at load, not after a long analysis
    assert result.exit_code == 2 and "no air" in result.output, result.output
    assert not (out / "report.json").exists()
    assert not any((out / name).exists() for name in [outputs["lungs"], outputs["projection"], *outputs["overlays"]])
    assert (out / "notes.txt").exists()


def test_nan_voxels_and_thick_slices(tmp_path, phantom_files, phantom):
    ct, mask = phantom_files
    hu = phantom.volume.hu.astype("float32")
    hu[20:23] = float("nan")
    _bad(["analyze", str(save_nifti(hu, phantom.volume.affine, tmp_path / "nan.nii.gz")), "-o", str(tmp_path / "o")],
         "are NaN or infinite, in 3 of 60 slices")
    thick_affine = phantom.volume.affine @ np.diag([2.4, 1, 1, 1])  # 6 mm slices
    thick = save_nifti(phantom.volume.hu, thick_affine, tmp_path / "thick.nii.gz")
    thick_mask = save_nifti(phantom.lesion_labels, thick_affine, tmp_path / "thick_mask.nii.gz")
    result = runner.invoke(app, ["analyze", str(thick), "-o", str(tmp_path / "t"), "--lesion-mask", str(thick_mask)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "slices of 6.0 mm" in result.output
    assert any("slices of 6.0 mm" in w for w in json.loads((tmp_path / "t" / "report.json").read_text())["warnings"])
