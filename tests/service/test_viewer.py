"""The viewer's slice store: lossless for every int16 HU value, labels kept, slice descriptions."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ctriage.io.volume import CTVolume
from ctriage.service.viewer import open_viewer, save_viewer


def test_slices_come_back_exactly(tmp_path: Path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1200, 3000, (3, 64, 48)).astype(np.int16)
    hu[0, 0, :3] = (-32768, -3024, 32767)  # outside the field of view, and the int16 extremes
    lesion = np.zeros(hu.shape, np.uint8)
    lesion[2, 5:9, 5:9] = 2
    lungs = rng.integers(0, 3, hu.shape).astype(np.uint8)
    affine = np.zeros((4, 4))  # (z, y, x) index -> LPS mm: z runs head to feet
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = 0.7, 0.7, -2.5, 1.0
    affine[2, 3] = 100.0  # patient z of the first slice, mm
    volume = CTVolume(hu=hu.copy(), spacing_mm=(2.5, 0.7, 0.7), affine=affine)
    result = SimpleNamespace(volume=volume, lesions=SimpleNamespace(mask=lesion), lungs=SimpleNamespace(labels=lungs))
    save_viewer(result, tmp_path)
    viewer = open_viewer(str(tmp_path))
    assert viewer is not None and viewer.n_slices == 3
    assert [s["position_mm"] for s in viewer.slices] == [100.0, 97.5, 95.0]
    assert [s["lesion_voxels"] for s in viewer.slices] == [0, 0, 16]
    assert [s["instance_number"] for s in viewer.slices] == [None] * 3  # NIfTI-like input: no instances
    for z in range(3):
        got = viewer.slice(z)
        assert got[0].dtype == np.int16
        assert all(np.array_equal(a, b) for a, b in zip(got, (hu[z], lesion[z], lungs[z]), strict=True))
    assert open_viewer(str(tmp_path / "nothing")) is None
