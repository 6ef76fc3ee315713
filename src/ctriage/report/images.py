"""Pictures for the radiologist: axial overlays of the lesions and an X-ray-like severity projection."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

from ctriage.labels import LesionLabel
from ctriage.preprocess import WINDOW_LUNG_HU, voxels_per_slice, window

GGO_RGB = (255, 215, 0)  # yellow
CONSOLIDATION_RGB = (230, 40, 40)  # red
LUNG_EDGE_RGB = (60, 160, 255)
OVERLAY_ALPHA = 0.45
LESION_RGB = {LesionLabel.GGO: GGO_RGB, LesionLabel.CONSOLIDATION: CONSOLIDATION_RGB}


def _grey(hu2d: np.ndarray, window_hu: tuple[float, float]) -> np.ndarray:
    return (window(hu2d, window_hu) * 255).astype(np.uint8)


def render_slice(
    hu2d: np.ndarray,
    lesion2d: np.ndarray | None = None,
    window_hu: tuple[float, float] = WINDOW_LUNG_HU,
    overlay: bool = True,
    lung2d: np.ndarray | None = None,
) -> Image.Image:
    """An axial slice in ``window_hu`` with GGO (yellow) and consolidation (red) blended in, lung edge in blue."""
    grey = _grey(hu2d, window_hu)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    if overlay and lesion2d is not None:
        for label, colour in LESION_RGB.items():
            where = lesion2d == label
            rgb[where] = (1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * np.asarray(colour, np.float32)
    if overlay and lung2d is not None:
        from scipy import ndimage

        edge = lung2d & ~ndimage.binary_erosion(lung2d)
        rgb[edge] = LUNG_EDGE_RGB
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def most_affected_slices(lesion_mask: np.ndarray, count: int = 3) -> list[int]:
    """Indices of the ``count`` axial slices with the most lesion voxels (those with any), head to feet."""
    area = voxels_per_slice(lesion_mask)
    ranked = [int(k) for k in np.argsort(area)[::-1][:count] if area[k] > 0]
    return sorted(ranked)


def severity_projection(
    hu: np.ndarray, lung: np.ndarray, lesion_mask: np.ndarray, spacing_mm: tuple[float, float, float]
) -> Image.Image:
    """X-ray-like coronal projection coloured by local severity (after Goncharov et al. 2021, Fig. 1).

    The grey image is the mean attenuation along each anterior-posterior ray; the colour is the lesion share
    of the lung along that ray (0..1, magma-like 'hot' map), shown where the ray crosses lung. Rows are scaled
    so that the picture has the patient's true proportions.
    """
    # mean of min(HU, 1024) along each ray; int32 sums are exact and about 2x faster than float32 ones
    ray_sum = np.minimum(hu, 1024).sum(axis=1, dtype=np.int32)
    attenuation = (ray_sum / hu.shape[1] + 1024.0) / 2048.0
    lo, hi = np.percentile(attenuation, [1, 99.5])
    grey = np.clip((attenuation - lo) / max(hi - lo, 1e-6), 0, 1)
    lung = np.asarray(lung, bool)
    lung_depth = lung.view(np.uint8).sum(axis=1, dtype=np.float32)  # bool as 0/1; faster than count_nonzero
    lesion_depth = ((lesion_mask > 0) & lung).view(np.uint8).sum(axis=1, dtype=np.float32)
    local = np.divide(lesion_depth, lung_depth, out=np.zeros_like(lung_depth), where=lung_depth > 0)
    colours = colormaps["hot"](np.clip(local * 1.5, 0, 1) * 0.85 + 0.15)[..., :3]
    alpha = np.where(local > 0, 0.35 + 0.5 * np.clip(local * 2, 0, 1), 0.0)[..., None]
    rgb = (1 - alpha) * grey[..., None] + alpha * colours
    height = max(1, int(round(hu.shape[0] * spacing_mm[0] / spacing_mm[2])))
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    return image.resize((image.width, height), Image.BILINEAR)
