"""The Python API: the README's example runs as written, the public names resolve, models come from a folder
without an environment variable, progress reports the declared stages, and identification says when it is not
reliable."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import ctriage
from ctriage.io import CTVolume
from ctriage.io.nifti import save_nifti
from ctriage.models.registry import PACKAGE_MODEL_DIR
from tests.conftest import REPO


def readme_example() -> str:
    """The Python block of the README's "Python API" section."""
    section = (REPO / "README.md").read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run in a scratch folder, with the sample's path made absolute: the outputs land in out/api there."""
    code = readme_example().replace('Path("src/', f'Path("{REPO}/src/')
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert re.search(r"CT-[1-4], worse lung", printed) and "reliable: True" in printed
    assert [line.split()[-1] for line in printed.splitlines() if line.startswith("...")] == list(ctriage.STAGES[1:])
    assert "not analysed: no/such/study: no such file or folder" in printed
    report = json.loads((tmp_path / "out" / "api" / "report.json").read_text())
    assert report["identification"]["positive"] and "reliable" not in report["identification"]


def test_public_names_resolve():
    """Every public name resolves, every input error is exported, and nothing else is reached."""
    import ctriage as package
    from ctriage.io import errors

    defined = {name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, Exception)}
    assert defined == set(errors.__all__) and defined < set(package.__all__)
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    assert issubclass(ctriage.InputNotFoundError, ctriage.InputError)
    assert ctriage.write_outputs.__module__ == "ctriage.report"
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


def test_analyzer_takes_models_from_a_folder(tmp_path: Path, phantom):
    """A site folder holding both models is searched first: its model cards' versions name the models used."""
    for name in ("lesions", "identification"):
        (tmp_path / "weights").mkdir(exist_ok=True)
        (tmp_path / "cards").mkdir(exist_ok=True)
        shutil.copy(PACKAGE_MODEL_DIR / "weights" / f"{name}.onnx", tmp_path / "weights")
        card = json.loads((PACKAGE_MODEL_DIR / "cards" / f"{name}.json").read_text())
        card["version"] = f"site-{name}"
        (tmp_path / "cards" / f"{name}.json").write_text(json.dumps(card))
    analyzer = ctriage.Analyzer(tmp_path)
    stages: list[str] = []
    result = analyzer.analyze(phantom.volume, progress=stages.append)
    assert result.models == {"lesions": "site-lesions", "identification": "site-identification"}
    assert result.lesions.source == "model site-lesions"
    assert stages == list(ctriage.STAGES[1:])  # a loaded volume: no load stage


def test_identification_is_not_reliable_with_little_lung(phantom):
    """Six slices of the phantom's chest hold far under a litre of lung: identification is marked not reliable
    (in report.json too); a whole chest's is reliable and report.json carries no flag."""
    volume = phantom.volume
    middle = volume.shape[0] // 2
    part = CTVolume(volume.hu[middle - 3 : middle + 3].copy(), volume.spacing_mm, volume.affine)
    analyzer = ctriage.Analyzer()
    result = analyzer.analyze(part)
    assert result.severity.lung_ml < 1000 and not result.identification.reliable
    assert result.to_dict()["identification"]["reliable"] is False
    assert any("mL of lung found" in warning for warning in result.warnings)
    whole = analyzer.analyze(volume)
    assert whole.identification.reliable and "reliable" not in whole.to_dict()["identification"]
    assert whole.projection.dtype == np.uint8 and whole.projection.shape[2] == 3


def test_stages_are_declared_once():
    """The pipeline reports only the stages it declares; the command line's bar counts them plus the report."""
    from ctriage.pipeline import _timed

    with pytest.raises(ValueError, match="not declared"), _timed({}, "no-such-stage", None):
        pass
    assert ctriage.STAGES[0] == "load" and len(set(ctriage.STAGES)) == len(ctriage.STAGES)
    from ctriage.cli import REPORT_STAGE

    assert REPORT_STAGE not in ctriage.STAGES  # the bar's last step is its own


def test_analyze_takes_a_lesion_mask(tmp_path: Path, phantom):
    """``ctriage.analyze`` measures a given lesion mask (NIfTI), as ``Analyzer.analyze`` and the command line do."""
    ct = save_nifti(phantom.volume.hu, phantom.volume.affine, tmp_path / "ct.nii.gz")
    mask = save_nifti(phantom.lesion_labels, phantom.volume.affine, tmp_path / "lesions.nii.gz")
    result = ctriage.analyze(ct, lesion_mask=str(mask))
    assert result.lesions.source == "given mask"
    voxel_ml = phantom.volume.voxel_volume_ml
    assert result.severity.ggo_ml == pytest.approx((phantom.lesion_labels == 1).sum() * voxel_ml, rel=1e-6)
    assert result.severity.consolidation_ml == pytest.approx((phantom.lesion_labels == 2).sum() * voxel_ml, rel=1e-6)
