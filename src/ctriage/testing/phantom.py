"""Synthetic chest phantoms with known lungs and lesions, for exact checks of the maths."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ctriage.io.orientation import CANONICAL_DIRECTIONS_LPS
from ctriage.io.volume import CTVolume, StudyMeta, affine_from_lps
from ctriage.labels import LesionLabel

HU_AIR, HU_FAT, HU_SOFT, HU_LUNG, HU_VESSEL, HU_BONE = -1000, -100, 40, -850, 40, 700
HU_GGO, HU_CONSOLIDATION = -550, 30


@dataclass
class Phantom:
    """A phantom CT with its truth: lungs (bool, z-y-x), lesion labels (0 bg, 1 GGO, 2 consolidation) and the
    soft-tissue organ under the left lung base (bool; empty without one)."""

    volume: CTVolume
    lung_left: np.ndarray
    lung_right: np.ndarray
    lesion_labels: np.ndarray
    basal_organ: np.ndarray


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0


def chest_phantom(
    shape: tuple[int, int, int] = (60, 160, 200),
    spacing_mm: tuple[float, float, float] = (2.5, 1.5, 1.5),
    ggo_blobs: int = 2,
    consolidation_blobs: int = 1,
    peripheral_consolidation: bool = False,
    basal_organ: bool = False,
    seed: int = 0,
) -> Phantom:
    """A chest-like volume: body with fat and muscle, two lungs with vessels, spine, lesion blobs.

    GGO blobs (-550 HU) go in the right lung and consolidation blobs (+30 HU) in the left, well inside the
    lung; with ``peripheral_consolidation`` a dense blob (+30 HU) fills the left lung's lateral edge against
    the chest wall, the hardest case for a threshold lung mask. With ``basal_organ`` a soft-tissue organ (+40 HU,
    spleen-like) domes up under the left lung base and indents it, so that the lowest lung slices are a crescent
    around it, as under a real hemidiaphragm. Lesion truth is clipped to the lungs.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    hu = np.full(shape, HU_AIR, np.int16)
    body = _ellipsoid(shape, (nz / 2, ny / 2, nx / 2), (nz * 2, ny * 0.42, nx * 0.45))
    hu[body] = HU_FAT
    hu[_ellipsoid(shape, (nz / 2, ny / 2, nx / 2), (nz * 2, ny * 0.38, nx * 0.41))] = HU_SOFT
    lung_radii = (nz * 0.42, ny * 0.27, nx * 0.16)
    right = _ellipsoid(shape, (nz / 2, ny * 0.47, nx * 0.30), lung_radii)  # patient right at low x
    left = _ellipsoid(shape, (nz / 2, ny * 0.47, nx * 0.70), lung_radii)
    organ = np.zeros(shape, bool)
    if basal_organ:
        organ = _ellipsoid(shape, (nz * 0.98, ny * 0.47, nx * 0.63), (nz * 0.3, ny * 0.2, nx * 0.13)) & body
        left &= ~organ
    hu[right | left] = HU_LUNG
    hu[organ] = HU_SOFT
    mid_lungs = (right | left)[nz // 2]
    ys, xs = np.nonzero(ndimage.binary_erosion(mid_lungs, iterations=4))
    for pick in rng.choice(len(ys), size=6, replace=False):  # vessels: thin tubes along z inside the lungs
        tube = _ellipsoid(shape[1:], (ys[pick], xs[pick]), (2.0, 2.0))
        hu[(right | left) & tube[None]] = HU_VESSEL
    hu[_ellipsoid(shape, (nz / 2, ny * 0.78, nx / 2), (nz * 2, ny * 0.06, nx * 0.05))] = HU_BONE
    labels = np.zeros(shape, np.uint8)

    def blob(lung: np.ndarray, radius_vox: tuple[float, float, float]) -> np.ndarray:
        # centres whose ellipsoid stays inside the lung: scaled distance to the lung's edge above 1.2
        room = ndimage.distance_transform_edt(lung, sampling=[1.0 / r for r in radius_vox]) > 1.2
        zs, ys, xs = np.nonzero(room)
        pick = rng.integers(len(zs))
        return _ellipsoid(shape, (zs[pick], ys[pick], xs[pick]), radius_vox)

    for _ in range(ggo_blobs):
        region = blob(right, (4, 8, 8)) & (labels == 0)
        labels[region] = LesionLabel.GGO
    for _ in range(consolidation_blobs):
        region = blob(left, (3, 6, 6)) & (labels == 0)
        labels[region] = LesionLabel.CONSOLIDATION
    if peripheral_consolidation:
        edge = _ellipsoid(shape, (nz / 2, ny * 0.47, nx * 0.70 + lung_radii[2]), (nz * 0.25, ny * 0.12, nx * 0.07))
        labels[edge & left] = LesionLabel.CONSOLIDATION
    hu[labels == 1] = HU_GGO
    hu[labels == 2] = HU_CONSOLIDATION
    noise = rng.normal(0, 15, shape).astype(np.int16)
    hu = np.where(body, hu + noise, hu).astype(np.int16)
    affine = affine_from_lps(np.zeros(3), CANONICAL_DIRECTIONS_LPS, spacing_mm)
    volume = CTVolume(
        hu=hu, spacing_mm=spacing_mm, affine=affine, meta=StudyMeta(patient_id="PHANTOM", source_format="phantom")
    )
    return Phantom(volume=volume, lung_left=left, lung_right=right, lesion_labels=labels, basal_organ=organ)
