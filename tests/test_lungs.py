"""Lung segmentation against TotalSegmentator lobe labels, phantoms, and dense lung at the chest wall."""

from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage

from ctriage.evaluate.metrics import dice
from ctriage.io import load_volume
from ctriage.io.nifti import mask_to_canonical
from ctriage.lungs import AIR_HU, add_dense_lung, segment_lungs
from ctriage.preprocess import WorkGrid
from ctriage.testing.phantom import chest_phantom
from tests.conftest import TOTALSEG, require

LEFT_LOBES, RIGHT_LOBES = (10, 11), (13, 14)  # labels present on example_ct_sm (TotalSegmentator v2)


def test_lungs_match_totalsegmentator_lobes():
    volume = load_volume(require(TOTALSEG / "example_ct_sm.nii.gz"))
    labels = mask_to_canonical(TOTALSEG / "example_seg.nii.gz", volume.shape)
    lungs = segment_lungs(volume.hu, WorkGrid.of(volume.spacing_mm))
    assert dice(np.isin(labels, LEFT_LOBES + RIGHT_LOBES), lungs.combined) >= 0.90
    assert dice(np.isin(labels, LEFT_LOBES), lungs.left) >= 0.85
    assert dice(np.isin(labels, RIGHT_LOBES), lungs.right) >= 0.85


def test_phantom_left_right(phantom):
    lungs = segment_lungs(phantom.volume.hu, WorkGrid.of(phantom.volume.spacing_mm))
    assert dice(phantom.lung_left, lungs.left) > 0.95
    assert dice(phantom.lung_right, lungs.right) > 0.95
    truth_ml = phantom.lung_left.sum() * phantom.volume.voxel_volume_ml
    assert abs(lungs.left_ml - truth_ml) / truth_ml < 0.05


def test_peripheral_consolidation_is_lung(phantom):
    """A dense blob against the chest wall is not air; with the lesion mask it must become lung again."""
    volume = phantom.volume
    lesion = phantom.lesion_labels > 0
    aerated = segment_lungs(volume.hu, WorkGrid.of(volume.spacing_mm))
    assert (lesion & aerated.combined).sum() < 0.6 * lesion.sum()  # the threshold mask alone loses it
    lungs = add_dense_lung(aerated, phantom.lesion_labels, volume.hu)
    # the thin tips of the blob on its first and last slices fall under the 5 mm thickness rule
    assert (lesion & lungs.combined).sum() >= 0.97 * lesion.sum()
    assert dice(phantom.lung_left, lungs.left) > 0.98


def test_dense_lung_enclosed_by_lung_and_lesion_is_lung(phantom):
    """Where the lesion mask misses a spot inside the peripheral consolidation (a model's speckle), the spot is
    enclosed by lung and lesion on its slice and joins the lung with them."""
    volume = phantom.volume
    aerated = segment_lungs(volume.hu, WorkGrid.of(volume.spacing_mm))
    outside = (phantom.lesion_labels > 0) & ~aerated.combined
    k = int(np.argmax(outside.sum(axis=(1, 2))))
    rows, cols = np.nonzero(outside[k])
    centre = (k, int(np.median(rows)), int(np.median(cols)))
    speckled = phantom.lesion_labels.copy()
    speckled[centre[0], centre[1] - 2 : centre[1] + 3, centre[2] - 2 : centre[2] + 3] = 0
    lungs = add_dense_lung(aerated, speckled, volume.hu)
    assert not aerated.combined[centre] and lungs.left[centre]
    assert (outside & lungs.combined).sum() >= 0.97 * outside.sum()


def test_label_slices_matches_scipy_in_plane_labelling():
    """Regions are 4-connected within a slice, never across slices, and numbered uniquely over the volume."""
    from scipy import ndimage

    from ctriage.lungs import label_slices

    mask = np.random.default_rng(0).random((6, 40, 50)) > 0.55
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    expected, expected_count = ndimage.label(mask, structure=in_plane)
    labels, count = label_slices(mask)
    assert count == expected_count
    assert ((labels > 0) == mask).all()
    pairs = np.unique(np.stack([labels[mask], expected[mask]]), axis=1)  # one-to-one correspondence of regions
    assert pairs.shape[1] == count and len(np.unique(pairs[0])) == count and len(np.unique(pairs[1])) == count


def test_filled_slices_match_scipy_hole_filling():
    from scipy import ndimage

    from ctriage.lungs import _fill_slices

    mask = np.random.default_rng(1).random((5, 30, 30)) > 0.4
    expected = np.stack([ndimage.binary_fill_holes(plane) for plane in mask])
    assert (_fill_slices(mask) == expected).all()


def test_organ_under_a_lung_base_stays_out_whatever_the_lesion_mask_says():
    """A soft-tissue organ domed up under the left lung base (touching and indenting it, like the spleen under
    the hemidiaphragm) stays out of the lung even when the lesion mask marks all of it as consolidation, while
    the peripheral consolidation against the chest wall, marked the same way, comes in."""
    phantom = chest_phantom(peripheral_consolidation=True, basal_organ=True)
    volume, organ = phantom.volume, phantom.basal_organ
    aerated = segment_lungs(volume.hu, WorkGrid.of(volume.spacing_mm))
    assert organ.sum() > 0 and not (organ & aerated.combined).any()
    touching = ndimage.binary_dilation(organ, iterations=2) & aerated.left
    assert touching.sum() > 100  # the organ lies against the lung base
    marked = phantom.lesion_labels.copy()
    marked[organ] = 2
    lungs = add_dense_lung(aerated, marked, volume.hu)
    assert (organ & lungs.combined).sum() <= 0.01 * organ.sum()
    lesion = phantom.lesion_labels > 0
    assert (lesion & lungs.combined).sum() >= 0.97 * lesion.sum()


def test_gas_under_a_lung_base_stays_out():
    """Stomach gas domed up under the left lung base, walled by soft tissue but joined to the lung through a gap
    in the dome (on thick slices the diaphragm between them is lost), is not lung: its sections below the
    largest lung section are nearly pure air, lung's are not."""
    phantom = chest_phantom(basal_organ=True)
    organ, spacing_mm = phantom.basal_organ, phantom.volume.spacing_mm
    gas = ndimage.binary_erosion(organ, iterations=2)
    top = np.flatnonzero(organ.any(axis=(1, 2)))[0]
    centre = np.argwhere(gas[np.flatnonzero(gas.any(axis=(1, 2)))[0]]).mean(axis=0).astype(int)
    gap = np.zeros_like(organ)
    gap[top : top + 4, centre[0] - 10 : centre[0] + 11, centre[1] - 10 : centre[1] + 11] = True
    gas |= gap & organ
    hu = phantom.volume.hu.copy()
    hu[gas] = np.random.default_rng(1).normal(-1000, 15, int(gas.sum())).astype(np.int16)
    without_gas = segment_lungs(phantom.volume.hu, WorkGrid.of(spacing_mm))
    air = cc3d.connected_components(hu < AIR_HU, connectivity=6)
    assert air[tuple(np.argwhere(gas)[-1])] == air[tuple(np.argwhere(without_gas.left)[0])]  # gas joins lung
    lungs = segment_lungs(hu, WorkGrid.of(spacing_mm))
    assert (gas & lungs.combined).sum() <= 0.05 * gas.sum()
    assert abs(lungs.left_ml - without_gas.left_ml) < 0.05 * without_gas.left_ml
