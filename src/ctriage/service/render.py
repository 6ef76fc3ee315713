"""Server-rendered axial slices for the web viewer (drawing is ``ctriage.report.images.render_slice``)."""

from __future__ import annotations

import io

import numpy as np

from ctriage.preprocess import WINDOW_LUNG_HU
from ctriage.report.images import render_slice

WINDOWS_HU = {  # preset name: (low, high) HU
    "lung": WINDOW_LUNG_HU,  # level -600, width 1500
    "mediastinum": (-160.0, 240.0),  # level 40, width 400
    "bone": (-500.0, 1300.0),  # level 400, width 1800
}


def slice_png(
    hu2d: np.ndarray, lesion2d: np.ndarray, window_name: str, overlay: bool, lungs2d: np.ndarray | None
) -> bytes:
    """PNG of one axial slice: window preset, GGO / consolidation overlay on or off, optional lung outline."""
    image = render_slice(
        hu2d,
        lesion2d,
        WINDOWS_HU[window_name],
        overlay=overlay,
        lung2d=None if lungs2d is None else lungs2d > 0,
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
