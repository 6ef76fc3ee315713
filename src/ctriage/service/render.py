"""Server-rendered axial slices for the web viewer: HU window presets and a GGO / consolidation overlay."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

WINDOWS_HU = {  # name: (level, width)
    "lung": (-600, 1500),
    "mediastinum": (40, 400),
    "bone": (400, 1800),
}
LESION_COLORS = {1: (255, 200, 0), 2: (230, 30, 30)}  # GGO yellow, consolidation red (as in the DICOM SEG)
LUNG_EDGE_COLOR = (60, 160, 255)
OVERLAY_ALPHA = 0.45


def window(hu2d: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to 0..255 grey values for a display window."""
    low = level - width / 2.0
    return (np.clip((hu2d.astype(np.float32) - low) / width, 0.0, 1.0) * 255.0).astype(np.uint8)


def _edges(mask: np.ndarray) -> np.ndarray:
    """One-pixel outline of a boolean mask."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render_slice(
    hu2d: np.ndarray,
    lesion2d: np.ndarray | None,
    window_name: str = "lung",
    overlay: bool = True,
    lungs2d: np.ndarray | None = None,
) -> Image.Image:
    """RGB image of one axial slice; lesions are blended in their colours, lungs drawn as an outline."""
    level, width = WINDOWS_HU[window_name]
    grey = window(hu2d, level, width)
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    if overlay and lesion2d is not None:
        for label, color in LESION_COLORS.items():
            where = lesion2d == label
            rgb[where] = (1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * np.asarray(color, np.float32)
    if overlay and lungs2d is not None:
        rgb[_edges(lungs2d > 0)] = LUNG_EDGE_COLOR
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG (fast compression; slices are rendered on demand)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
