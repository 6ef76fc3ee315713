"""Lung segmentation without a trained model: HU thresholds, body mask, airway removal, morphology.

The mask is meant for severity (lesion / lung), so it must contain diseased lung. Vessels and lesions
enclosed by aerated lung are filled slice by slice here. Dense lung along the chest wall (peripheral
consolidation, atelectasis next to an effusion) is not air and cannot be told from liver or heart by HU
alone, so :func:`dense_lung_region` gives the thoracic-cavity region where it may lie (each lung's convex hull
per slice, not bone, beyond the aerated lung seen from the body centre, and above the diaphragm), and
:func:`add_dense_lung` adds the lesion model's findings inside that region back to the lungs: a finding
outside the region (liver, spleen, stomach, heart) never becomes lung, whatever the model says.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cc3d
import fill_voids
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull

from ctriage.labels import LungLabel
from ctriage.preprocess import WorkGrid, grown_box, voxels_per_slice

AIR_HU = -400.0  # lung parenchyma (about -850 HU) and airways are below this; soft tissue is above
BODY_HU = -500.0
DENSE_LUNG_MAX_HU = 200.0  # hull additions denser than this are bone, not lung
ANGLE_STEP_DEG = 2
DENSE_LUNG_MIN_THICKNESS_MM = 5.0
# The apex: slices above a lung's largest section with less than this share of it. Chest wall and neck muscle
# surround the small apical sections, and dense consolidation there is rare in COVID-19: nothing is added there.
APEX_AREA_FRACTION = 0.4
HULL_MARGIN_MM = 10.0  # dense lung may reach this far beyond the aerated lung's convex hull
BEYOND_TOLERANCE_MM = 5.0  # dense lung lies beyond the outermost aerated lung in its direction, less this
# The diaphragm under each lung is the lowest aerated lung of each (y, x) column, with upward dents narrower
# than this radius closed (a basal consolidation hides the diaphragm under it; the dome is much broader).
DIAPHRAGM_CLOSING_MM = 30.0
AIRWAY_MAX_AREA_MM2 = 700.0  # a separate air region this small near the midline is trachea / main bronchus
MIN_LUNG_ML = 20.0
LUNG_MIN_MEDIAN_HU = -960.0  # median HU of a lung component is above this; bowel gas is below
# Stomach and colon gas under a dome can join the lung through the thin diaphragm on thick slices. A section of
# it (a 4-connected part of one slice, below the lung's largest section) is nearly pure air: median under
# LUNG_MIN_MEDIAN_HU and more than GAS_AIR_FRACTION of it below GAS_HU. Lung parenchyma, even emphysematous,
# keeps its vessels and walls: on the real CTs here its sections have at most 10 % below GAS_HU.
GAS_HU = -980.0
GAS_AIR_FRACTION = 0.3
GAS_MIN_AREA_MM2 = 300.0  # smaller air pockets (a bulla, an ectatic bronchus) are left to the lung


@dataclass
class LungMasks:
    """Left and right lung masks (bool, z-y-x, canonical orientation) on the voxel grid of ``grid`` (its
    spacing and working grid), and their volumes in mL. The masks are not changed after construction."""

    left: np.ndarray
    right: np.ndarray
    grid: WorkGrid

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in mm."""
        return self.grid.spacing_mm

    @cached_property
    def combined(self) -> np.ndarray:
        """Both lungs, bool (z, y, x); computed once."""
        return self.left | self.right

    @property
    def left_ml(self) -> float:
        return float(self.left.sum()) * self.grid.voxel_ml

    @property
    def right_ml(self) -> float:
        return float(self.right.sum()) * self.grid.voxel_ml

    @cached_property
    def labels(self) -> np.ndarray:
        """uint8 label map (:class:`LungLabel`): 0 background, 1 right lung, 2 left lung; computed once."""
        out = np.zeros(self.left.shape, np.uint8)
        out[self.right] = LungLabel.RIGHT
        out[self.left] = LungLabel.LEFT
        return out


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient's body (largest connected non-air region), holes filled slice by slice."""
    tissue = hu > BODY_HU
    if not tissue.any():
        return tissue
    return _fill_slices(cc3d.largest_k(tissue, k=1, connectivity=6, binary_image=True))


def label_slices(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 4-connected regions of each slice of a bool (z, y, x) mask: uint32 labels unique across slices
    (0 background) and their number."""
    labels = np.zeros(mask.shape, np.uint32)
    count = 0
    for k, plane in enumerate(mask):
        plane_labels, plane_count = cc3d.connected_components(plane, connectivity=4, return_N=True)
        labels[k] = np.where(plane_labels > 0, plane_labels + np.uint32(count), 0)
        count += plane_count
    return labels, count


def _remove_airways(air: np.ndarray, pixel_area_mm2: float) -> np.ndarray:
    """Drop small air regions near the left-right middle of each slice (trachea, main bronchi)."""
    labels, count = label_slices(air)
    width = air.shape[2]
    areas = np.bincount(labels.ravel(), minlength=count + 1).astype(float)
    xs = np.broadcast_to(np.arange(width, dtype=np.float64), air.shape)
    centre_x = np.bincount(labels.ravel(), weights=xs.ravel(), minlength=count + 1) / np.maximum(areas, 1)
    airway = (areas * pixel_area_mm2 < AIRWAY_MAX_AREA_MM2) & (np.abs(centre_x - width / 2) < 0.15 * width)
    airway[0] = False
    return air & ~airway[labels]


def _keep_lungs(air: np.ndarray, small_hu: np.ndarray, voxel_ml: float) -> np.ndarray:
    """Keep the one or two large air components that look like lung; drop bowel gas and noise.

    Lung parenchyma has a median near -850 HU; gas in the bowel is nearly pure air.
    """
    labels, count = cc3d.connected_components(air, connectivity=6, return_N=True)
    if count == 0:
        return air
    sizes = np.bincount(labels.ravel(), minlength=count + 1) * voxel_ml
    sizes[0] = 0
    candidate = sizes >= MIN_LUNG_ML
    large = np.flatnonzero(candidate)
    if large.size:  # one pass over the volume for all components
        candidate[large] = np.asarray(ndimage.median(small_hu, labels, index=large)) > LUNG_MIN_MEDIAN_HU
    if not candidate.any():
        return np.zeros_like(air)
    order = [int(i) for i in np.argsort(np.where(candidate, sizes, 0))[::-1] if candidate[i]]
    keep = np.zeros(count + 1, bool)
    keep[order[0]] = True
    if len(order) > 1 and sizes[order[1]] > 0.1 * sizes[order[0]]:
        keep[order[1]] = True
    return keep[labels]


def bowel_gas(lung: np.ndarray, hu: np.ndarray, pixel_area_mm2: float) -> np.ndarray:
    """The sections of a lung mask (bool (z, y, x), over ``hu`` in HU) that are stomach or colon gas: below the
    largest lung section, at least ``GAS_MIN_AREA_MM2``, nearly pure air (see ``GAS_AIR_FRACTION``)."""
    gas = np.zeros_like(lung)
    below = int(np.argmax(voxels_per_slice(lung))) + 1
    labels, count = label_slices(lung[below:])
    if count == 0:
        return gas
    hu_below = hu[below:]
    area = np.bincount(labels.ravel(), minlength=count + 1)
    air = np.bincount(labels[hu_below < GAS_HU], minlength=count + 1)
    candidate = (area * pixel_area_mm2 >= GAS_MIN_AREA_MM2) & (air > GAS_AIR_FRACTION * area)
    candidate[0] = False
    index = np.flatnonzero(candidate)
    if index.size:  # the median only of the few nearly airless sections
        candidate[index] = np.asarray(ndimage.median(hu_below, labels, index=index)) < LUNG_MIN_MEDIAN_HU
    gas[below:] = candidate[labels]
    return gas


def _two_largest(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The two largest components when the second is at least 15 % of the first, else None."""
    labels, count = cc3d.connected_components(mask, connectivity=6, return_N=True)
    if count < 2:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    second, first = np.argsort(sizes)[-2:]
    if sizes[second] < 0.15 * sizes[first]:
        return None
    return labels == first, labels == second


def split_left_right(lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a lung mask into (left, right) by the patient's side; x runs from patient right to left.

    When both lungs form one component (touching at the anterior junction), erode until two large parts
    appear and give every voxel to the nearer part; failing that, cut at the centre of mass.
    """
    if not lungs.any():
        return lungs.copy(), np.zeros_like(lungs)
    parts = _two_largest(lungs)
    if parts is not None:
        part1, part2 = parts[0], lungs & ~parts[0]
    else:
        box = ndimage.find_objects(lungs.astype(np.uint8))[0]
        crop = lungs[box]
        core = crop
        for _ in range(12):  # usually one to three erosions part the lungs
            core = ndimage.binary_erosion(core)
            parts = _two_largest(core)
            if parts is not None:
                break
        part1, part2 = np.zeros_like(lungs), np.zeros_like(lungs)
        if parts is not None:
            markers = parts[0].astype(np.int8) + 2 * parts[1].astype(np.int8)
            nearest = np.where(markers > 0, markers, _nearest_marker(markers))
            part1[box], part2[box] = crop & (nearest == 1), crop & (nearest == 2)
        else:
            xs = np.arange(lungs.shape[2])[None, None, :]
            part1 = lungs & (xs >= _mean_column(lungs))
            part2 = lungs & ~part1
    if not part1.any() or not part2.any():
        return lungs.copy(), np.zeros_like(lungs)
    return (part1, part2) if _mean_column(part1) > _mean_column(part2) else (part2, part1)


def _mean_column(mask: np.ndarray) -> float:
    """Mean x (column) index of the voxels of a non-empty (z, y, x) mask."""
    per_column = np.count_nonzero(mask, axis=(0, 1))
    return float(per_column @ np.arange(len(per_column))) / float(per_column.sum())


def _nearest_marker(markers: np.ndarray) -> np.ndarray:
    """For every voxel, the label of the nearest non-zero voxel of ``markers`` (z, y, x), found on a grid of
    every second row and column (4x less work; the boundary between two markers moves by one voxel at most)."""
    coarse = markers[:, ::2, ::2]
    _, indices = ndimage.distance_transform_edt(coarse == 0, return_indices=True)
    nearest = coarse[tuple(indices)]
    return np.repeat(np.repeat(nearest, 2, axis=1), 2, axis=2)[:, : markers.shape[1], : markers.shape[2]]


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of every slice of a bool (z, y, x) mask: background parts that do not reach the slice's edge."""
    return np.stack([fill_voids.fill(plane, in_place=False) for plane in mask]).reshape(mask.shape)


def segment_lungs(hu: np.ndarray, grid: WorkGrid) -> LungMasks:
    """Segment left and right lungs of a canonical HU volume (z, y, x) on the voxel grid ``grid`` (its spacing in
    mm and working grid, e.g. ``WorkGrid.of(volume.spacing_mm)``); the masks are computed on the working grid.

    The masks hold the aerated lung with its vessels and enclosed lesions; see :func:`add_dense_lung`
    for dense lung along the chest wall.
    """
    small = grid.subsample(hu)
    small_spacing = grid.work_spacing_mm
    pixel_area_mm2 = small_spacing[1] * small_spacing[2]
    body = body_mask(small)
    air = _remove_airways((small < AIR_HU) & body, pixel_area_mm2)
    lungs = _keep_lungs(air, small, float(np.prod(small_spacing)) / 1000.0)
    lungs &= ~bowel_gas(lungs, small, pixel_area_mm2)
    left, right = split_left_right(lungs)
    # holes of a slice are vessels and lesions, but not the top of a diaphragm dome ringed by basal lung: no
    # aerated lung lies under that in its column
    dome = np.arange(len(lungs))[:, None, None] > diaphragm_floor(lungs, min(small_spacing[1:]), closing_mm=0)
    left, right = ((_fill_slices(side) & ~dome) | side for side in (left, right))
    left = grid.upsample(left, hu.shape)
    return LungMasks(left=left, right=grid.upsample(right, hu.shape) & ~left, grid=grid)


def _grown_hull(section: np.ndarray, margin_px: tuple[float, float]) -> np.ndarray:
    """The convex hull of a 2D mask grown by ``margin_px`` (rows, columns) in every direction, filled."""
    rows = np.flatnonzero(section.any(axis=1))
    first = np.argmax(section[rows], axis=1)
    last = section.shape[1] - 1 - np.argmax(section[rows, ::-1], axis=1)
    points = np.concatenate([np.stack([rows, first], 1), np.stack([rows, last], 1)]).astype(float)
    angles = np.radians(np.arange(0, 360, 15))
    offsets = np.stack([margin_px[0] * np.sin(angles), margin_px[1] * np.cos(angles)], 1)
    if len(points) >= 3 and np.linalg.matrix_rank(points - points[0]) == 2:
        points = points[ConvexHull(points).vertices]  # the row ends hold the hull; its corners are enough
    grown = (points[:, None, :] + offsets[None]).reshape(-1, 2)
    vertices = grown[ConvexHull(grown).vertices]
    image = Image.new("1", (section.shape[1], section.shape[0]))
    ImageDraw.Draw(image).polygon([(float(c), float(r)) for r, c in vertices], fill=1, outline=1)
    return np.asarray(image, dtype=bool) | section


@dataclass
class DenseLungRegion:
    """Where dense (non-aerated) lung may lie beside each aerated lung, on the in-plane working grid of ``grid``:
    bool (z, y // f, x // f) per side, f = ``grid.factor`` (see :meth:`WorkGrid.subsample_in_plane`)."""

    left: np.ndarray
    right: np.ndarray
    grid: WorkGrid

    def upsampled(self, shape: tuple[int, int, int]) -> np.ndarray:
        """Both sides together as a bool mask on the voxel grid of ``shape``."""
        return self.grid.upsample_in_plane(self.left | self.right, shape)


def _beyond_lung(
    lung: np.ndarray, candidates: np.ndarray, centre: tuple[float, float], tolerance_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """The ``candidates`` pixels of a slice that lie farther from ``centre`` than (1) the nearest and (2) all of
    the aerated lung in their direction (less ``tolerance_px``): (1) not nearer the centre than the lung, (2)
    between the outermost lung and the chest wall.

    Directions are 2-degree sectors around the body's centre; a sector without lung gives nothing. Dense lung
    against the ribs lies beyond the aerated lung seen from the mediastinum; the heart and the hilum lie nearer
    the centre, the top of a diaphragm dome (liver, spleen) inside a ring or crescent of basal lung has lung
    beyond it, and organs lateral to the lung lie in sectors without lung.
    """
    sectors = 360 // ANGLE_STEP_DEG

    def polar(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        rows, cols = np.nonzero(mask)
        dy, dx = rows - centre[0], cols - centre[1]
        sector = ((np.degrees(np.arctan2(dy, dx)) + 180.0) // ANGLE_STEP_DEG).astype(int) % sectors
        return sector, np.hypot(dy, dx), (rows, cols)

    lung_sector, lung_radius, _ = polar(lung)
    nearest_lung, farthest_lung = np.full(sectors, np.inf), np.full(sectors, -np.inf)
    np.minimum.at(nearest_lung, lung_sector, lung_radius)
    np.maximum.at(farthest_lung, lung_sector, lung_radius)
    farthest_lung[np.isinf(farthest_lung)] = np.inf  # a sector without lung gives nothing
    sector, radius, where = polar(candidates)
    beyond_nearest, beyond_all = np.zeros_like(candidates), np.zeros_like(candidates)
    beyond_nearest[where] = radius >= nearest_lung[sector]
    beyond_all[where] = radius >= farthest_lung[sector] - tolerance_px
    return beyond_nearest, beyond_all


def _side_region(
    lung: np.ndarray,
    hu: np.ndarray,
    pixel_mm: tuple[float, float],
    within: np.ndarray | None,
    lowest: np.ndarray,
    floor: np.ndarray,
) -> np.ndarray:
    """Dense-lung region of one lung (bool, z-y-x, working grid) with working-grid ``hu``, the slice index of the
    ``lowest`` aerated lung and of the diaphragm ``floor`` per (y, x) column (see :func:`dense_lung_region`),
    empty at the apex (``APEX_AREA_FRACTION``); with
    ``within``, only on slices where ``within`` has pixels in reach of the lung (its bounding box grown by the
    margin)."""
    margin_px = (HULL_MARGIN_MM / pixel_mm[0], HULL_MARGIN_MM / pixel_mm[1])
    region = np.zeros_like(lung)
    area = voxels_per_slice(lung)
    apex = (np.arange(len(area)) < np.argmax(area)) & (area < APEX_AREA_FRACTION * area.max(initial=0))
    for k in np.flatnonzero((area >= 30) & ~apex):
        if within is not None and not within[k][grown_box(lung[k], HULL_MARGIN_MM, pixel_mm)].any():
            continue
        candidates = _grown_hull(lung[k], margin_px) & ~lung[k] & (hu[k] < DENSE_LUNG_MAX_HU)
        body_rows, body_cols = np.nonzero(hu[k] > BODY_HU)
        beyond_nearest, beyond_all = _beyond_lung(lung[k], candidates, (body_rows.mean(), body_cols.mean()),
                                                  BEYOND_TOLERANCE_MM / min(pixel_mm))
        region[k] = beyond_nearest & ((k < lowest) | (beyond_all & (k <= floor)))
    return region


def lowest_lung(lung: np.ndarray) -> np.ndarray:
    """Slice index of the lowest (most inferior) voxel of each (y, x) column of a bool (z, y, x) mask, int
    (y, x); -1 where the column has none."""
    return np.where(lung.any(axis=0), lung.shape[0] - 1 - np.argmax(lung[::-1], axis=0), -1)


def diaphragm_floor(lung: np.ndarray, pixel_mm: float, closing_mm: float = DIAPHRAGM_CLOSING_MM) -> np.ndarray:
    """Slice index of the diaphragm under each (y, x) column of a bool (z, y, x) aerated-lung mask (z head to
    feet, pixels ``pixel_mm`` wide), int (y, x): the lowest aerated lung of the column, after a grey closing of
    that depth map with a disk ``closing_mm`` in radius (it fills upward dents under basal consolidation, which
    hides the diaphragm, and barely touches the broad dome; 0 closes nothing). A voxel lower than its column's
    floor is below the diaphragm; columns without lung have the number of slices as floor (nothing below).
    """
    floor = lowest_lung(lung)
    floor[floor < 0] = lung.shape[0]
    radius = int(round(closing_mm / pixel_mm))
    if radius > 0:
        grid = np.ogrid[-radius : radius + 1, -radius : radius + 1]
        floor = ndimage.grey_closing(floor, footprint=grid[0] ** 2 + grid[1] ** 2 <= radius**2, mode="nearest")
    return floor


def dense_lung_region(lungs: LungMasks, hu: np.ndarray, within: np.ndarray | None = None) -> DenseLungRegion:
    """Per slice and lung, on the working grid: the convex hull of the aerated lung grown by 10 mm, outside
    both masks, not bone (> 200 HU), not nearer the body's centre than the aerated lung (see
    :func:`_beyond_lung`: not heart or mediastinum), and inside the thoracic cavity: either with aerated lung
    under it in its (y, x) column (inside the chest), or, at the lung base, between the outermost aerated lung
    and the chest wall and not below the diaphragm (see :func:`diaphragm_floor`). Liver,
    spleen, stomach and bowel under a lung base, and the top of a diaphragm dome ringed by basal lung, have no
    lung under them and lung beyond them.

    The hull steps work slice by slice; ``within`` (bool, working grid) limits the work to the slices and lungs
    where it is needed: the region is empty on slices where ``within`` has nothing in a lung's reach.
    """
    grid = lungs.grid
    left_small, right_small = grid.subsample_in_plane(lungs.left), grid.subsample_in_plane(lungs.right)
    small_hu, aerated = grid.subsample_in_plane(hu), left_small | right_small
    pixel_mm = grid.pixel_mm
    lowest, floor = lowest_lung(aerated), diaphragm_floor(aerated, min(pixel_mm))
    left = _side_region(left_small, small_hu, pixel_mm, within, lowest, floor) & ~aerated
    right = _side_region(right_small, small_hu, pixel_mm, within, lowest, floor) & ~aerated & ~left
    return DenseLungRegion(left=left, right=right, grid=grid)


def add_dense_lung(
    lungs: LungMasks,
    lesion_mask: np.ndarray,
    hu: np.ndarray,
    min_thickness_mm: float = DENSE_LUNG_MIN_THICKNESS_MM,
) -> LungMasks:
    """Give each lung the lesion (``lesion_mask`` > 0) that lies in the dense-lung region beside it.

    Works on the working grid of the lung masks: a block with lesion voxels outside the lungs, in
    :func:`dense_lung_region`, joins the lung on its side, keeping only parts at least ``min_thickness_mm``
    thick in-plane (a consolidated rim of lung is thick, a sliver of chest-wall muscle or pleura that a model
    marks along the hull is not; 0 keeps all). Pixels of the region that lung and added lesion enclose on a
    slice (spots the model missed or the thickness rule cut inside a consolidation) join the lung too.
    """
    grid = lungs.grid
    left_small, right_small = grid.subsample_in_plane(lungs.left), grid.subsample_in_plane(lungs.right)
    outside = (grid.block_counts(lesion_mask > 0) > 0) & ~left_small & ~right_small
    if not outside.any():
        return lungs
    region = dense_lung_region(lungs, hu, within=outside)
    pixel_mm = min(grid.pixel_mm)
    added_left, added_right = outside & region.left, outside & region.right
    if min_thickness_mm > 0:
        thickness_px = min_thickness_mm / pixel_mm
        added_left, added_right = _thick_parts(added_left, thickness_px), _thick_parts(added_right, thickness_px)
    added_left = _fill_slices(left_small | added_left) & region.left  # the region holds no aerated lung
    added_right = _fill_slices(right_small | added_right) & region.right
    return LungMasks(
        left=_with_blocks(lungs.left, added_left, grid), right=_with_blocks(lungs.right, added_right, grid), grid=grid
    )


def _with_blocks(mask: np.ndarray, blocks: np.ndarray, grid: WorkGrid) -> np.ndarray:
    """A copy of the voxel-grid ``mask`` with the working-grid ``blocks`` set."""
    out = mask.copy()
    grid.fill_blocks(out, blocks, True)
    return out


def _thick_parts(mask: np.ndarray, thickness_px: float) -> np.ndarray:
    """In-plane morphological opening of a (z, y, x) ``mask`` with a disk ``thickness_px`` pixels across."""
    size = max(1, int(round(thickness_px)))
    if size == 1 or not mask.any():
        return mask
    centre = (size - 1) / 2
    grid = np.ogrid[:size, :size]
    disk = (grid[0] - centre) ** 2 + (grid[1] - centre) ** 2 <= (size / 2) ** 2
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    out = np.zeros_like(mask)
    out[box] = ndimage.binary_opening(mask[box], structure=disk[None])
    return out
