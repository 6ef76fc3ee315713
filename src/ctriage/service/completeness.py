"""Is a received series complete enough for a final result? Checks the service runs after an analysis.

Slice position gaps are found by the loader (``IncompleteSeriesError``); here:

- the instance count: the PACS's NumberOfSeriesRelatedInstances (C-FIND, pull mode) against the files received;
- the lung coverage: a chest CT starts above the lung apices and ends below the bases, so its first and last
  slices hold little lung. On the four real studies in ../shared/data the first / last slice held at most 11 % of
  the largest lung slice area (COVID-CT-MD cap001's last slice), while any of them cut in half held 88-100 % at
  the cut. Over ``LUNG_CUT_RATIO`` the lungs are taken as cut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctriage.service.store import safe_name

LUNG_CUT_RATIO = 0.3  # lung area of the first / last slice over the largest lung slice area


def lung_cut_reason(lung_labels: np.ndarray) -> str:
    """Why the lungs look cut at the first or last slice of a (z, y, x) lung label volume ("" when they do not)."""
    area = np.count_nonzero(lung_labels.reshape(lung_labels.shape[0], -1), axis=1)
    largest = int(area.max()) if area.size else 0
    if largest == 0:
        return ""
    cut = [
        f"{name} slice holds {100 * area[index] / largest:.0f} % of the largest lung section"
        for name, index in (("first", 0), ("last", -1))
        if area[index] > LUNG_CUT_RATIO * largest
    ]
    return "lungs cut at the edge of the series: " + " and ".join(cut) if cut else ""


def instance_count_reason(series_dir: Path, expected: dict[str, int] | None) -> str:
    """Why fewer instances of the analysed series were received than the PACS reported ("" when not, or unknown).

    ``series_dir``: the folder of the analysed series (named by its SeriesInstanceUID, see ``store.safe_name``);
    ``expected``: SeriesInstanceUID -> NumberOfSeriesRelatedInstances.
    """
    counts = {safe_name(uid): int(n) for uid, n in (expected or {}).items()}
    wanted = counts.get(series_dir.name)
    if not wanted:
        return ""
    received = sum(1 for p in series_dir.iterdir() if p.suffix == ".dcm")
    if received >= wanted:
        return ""
    return f"received {received} of the {wanted} instances the PACS reports for the series"
