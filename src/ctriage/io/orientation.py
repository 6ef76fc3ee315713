"""Reorientation of any 3D array with known LPS axis directions into ctriage's canonical layout."""

from __future__ import annotations

import numpy as np

# Canonical (z, y, x) axes in LPS: z towards the feet (-S), y towards the back (+P), x towards the patient's left (+L).
CANONICAL_DIRECTIONS_LPS = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def _canonical_axes(affine_lps: np.ndarray) -> tuple[list[int], list[bool]]:
    """Which array axis feeds each canonical axis, and whether it runs against it (oblique axes are matched to
    the nearest canonical axis)."""
    columns = affine_lps[:3, :3]
    directions = columns / np.linalg.norm(columns, axis=0)
    order = [int(i) for i in np.argmax(np.abs(CANONICAL_DIRECTIONS_LPS @ directions), axis=1)]
    if sorted(order) != [0, 1, 2]:
        raise ValueError("volume axes are too oblique to map onto axial/coronal/sagittal")
    flips = [float(CANONICAL_DIRECTIONS_LPS[axis] @ columns[:, order[axis]]) < 0 for axis in range(3)]
    return order, flips


def is_canonical(affine_lps: np.ndarray) -> bool:
    """Whether an array with this index -> LPS ``affine_lps`` is in canonical layout already (no permutation, no
    flip: :func:`to_canonical` returns the array's own memory)."""
    order, flips = _canonical_axes(affine_lps)
    return order == [0, 1, 2] and not any(flips)


def to_canonical(
    array: np.ndarray, affine_lps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Permute and flip ``array`` so that its axes follow CANONICAL_DIRECTIONS_LPS.

    ``affine_lps`` maps the array's voxel indices to LPS mm. Returns the reoriented array, its affine and the
    voxel spacing in mm, (z, y, x). Oblique axes are matched to the nearest canonical axis.
    """
    order, flips = _canonical_axes(affine_lps)
    columns = affine_lps[:3, :3]
    out = np.transpose(array, order)
    new_affine = np.eye(4)
    new_affine[:3, 3] = affine_lps[:3, 3]
    new_affine[:3, :3] = columns[:, order]
    for axis in range(3):
        if flips[axis]:
            out = np.flip(out, axis)
            new_affine[:3, 3] += new_affine[:3, axis] * (out.shape[axis] - 1)
            new_affine[:3, axis] *= -1
    spacing_zyx = tuple(float(s) for s in np.linalg.norm(columns, axis=0)[order])
    return np.ascontiguousarray(out), new_affine, spacing_zyx  # type: ignore[return-value]
