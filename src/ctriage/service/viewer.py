"""The web viewer's data of one result, in one zip file read a slice at a time.

Per axial slice (canonical z, head to feet): the HU image as lossless JPEG-LS (about the size of a lossless
compressed CT), and the lesion and lung labels (deflated, a few kB); ``slices.json`` gives each slice's position
in mm (patient z, as the PACS viewer shows it), the source's instance number and its lesion voxels. The result's
report files (NIfTI masks, PNGs) are written beside it by ``ctriage.report``.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jpeg_ls
import numpy as np
import pydicom

from ctriage.preprocess import voxels_per_slice

if TYPE_CHECKING:
    from ctriage.result import StudyResult

VIEWER_FILE = "viewer.zip"
HU_OFFSET = 32768  # JPEG-LS codes unsigned samples: int16 HU + 32768 is lossless


def _instance_numbers(slice_files: list[Path] | None, n_slices: int) -> list[int | None]:
    """InstanceNumber of each source slice (None for NIfTI input or where a slice has none)."""
    if not slice_files or len(slice_files) != n_slices:
        return [None] * n_slices
    numbers = []
    for path in slice_files:
        value = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["InstanceNumber"]).get("InstanceNumber")
        numbers.append(None if value in (None, "") else int(value))
    return numbers


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def save_viewer(result: StudyResult, outdir: Path) -> Path:
    """Write ``viewer.zip`` for an analysis result (its volume, lesion and lung labels); returns its path."""
    volume, lesion_mask, lung_labels = result.volume, result.lesions.mask, result.lungs.labels
    n_slices = volume.shape[0]
    numbers = _instance_numbers(volume.slice_files, n_slices)
    lesion_voxels = voxels_per_slice(lesion_mask)
    slices = [
        {
            "position_mm": round(float((volume.affine @ np.array([z, 0.0, 0.0, 1.0]))[2]), 2),
            "instance_number": numbers[z],
            "lesion_voxels": int(lesion_voxels[z]),
        }
        for z in range(n_slices)
    ]
    path = outdir / VIEWER_FILE
    tmp = path.with_name(f".{path.name}.part")
    with zipfile.ZipFile(tmp, "w") as archive:
        archive.writestr("slices.json", json.dumps(slices), compress_type=zipfile.ZIP_DEFLATED)
        for z in range(n_slices):
            hu = (volume.hu_at(z).astype(np.int32) + HU_OFFSET).astype(np.uint16)
            archive.writestr(f"hu/{z}.jls", jpeg_ls.encode(hu).tobytes())
            labels = np.stack([lesion_mask[z], lung_labels[z]]).astype(np.uint8)
            archive.writestr(f"labels/{z}.npy", _npy(labels), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class ViewerData:
    """One result's ``viewer.zip``: slice descriptions, and slices decoded on demand."""

    path: Path
    slices: tuple[dict[str, Any], ...]

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    def slice(self, z: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """HU (int16), lesion labels and lung labels of axial slice ``z``."""
        with zipfile.ZipFile(self.path) as archive:
            hu = jpeg_ls.decode(np.frombuffer(archive.read(f"hu/{z}.jls"), np.uint8))
            labels = np.load(io.BytesIO(archive.read(f"labels/{z}.npy")))
        return (hu.astype(np.int32) - HU_OFFSET).astype(np.int16), labels[0], labels[1]

    def hu_volume(self) -> np.ndarray:
        """The whole HU volume (z, y, x; int16), canonical as the report's NIfTI masks (for the MPR viewer)."""
        with zipfile.ZipFile(self.path) as archive:
            planes = [jpeg_ls.decode(np.frombuffer(archive.read(f"hu/{z}.jls"), np.uint8))
                      for z in range(self.n_slices)]
        return (np.stack(planes).astype(np.int32) - HU_OFFSET).astype(np.int16)


@lru_cache(maxsize=32)
def open_viewer(result_dir: str) -> ViewerData | None:
    """The viewer data of a results folder, None when it has none (cached: slices are fetched in bursts)."""
    path = Path(result_dir) / VIEWER_FILE
    if not path.is_file():
        return None
    with zipfile.ZipFile(path) as archive:
        slices = tuple(json.loads(archive.read("slices.json")))
    return ViewerData(path, slices)
