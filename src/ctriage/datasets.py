"""Readers of the public data sets that training and evaluation share: 2D slice folders in the Inf-Net layout
(Imgs/ + GT/ matched by file stem) and their reference masks, and labelled slices for COVID-19 identification.

Identification layouts:

- a labels CSV (``path``, ``label`` 1 = COVID-19, optional ``patient_id``, ``source``, ``split_hint``), e.g.
  ``shared/data/identification_slices/labels.csv``; paths are relative to the images folder;
- UCSD COVID-CT (``CT_COVID/``, ``CT_NonCOVID/`` under ``Images-processed/`` or ``Images/``, with the
  official ``Data-split/{COVID,NonCOVID}/{train,val,test}CT_*.txt`` lists and, when present,
  ``NonCOVID-CT-MetaInfo.csv``);
- SARS-CoV-2 CT-scan (Soares et al.): ``COVID/`` and ``non-COVID/`` folders, no patient ids.

Reference masks are palette (or grey) PNGs with :class:`ctriage.labels.LesionLabel` values, or binary 0/255 PNGs
(lesion vs not).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def numeric_key(path: Path) -> tuple[int, str]:
    """Sort key that orders '2.jpg' before '10.jpg' and falls back to the name."""
    stem = path.stem
    return (int(stem), stem) if stem.isdigit() else (1 << 30, stem)


def _image_files(folder: Path) -> Iterator[Path]:
    """The image files in ``folder`` (by suffix, ``IMAGE_SUFFIXES``), in directory order."""
    return (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def paired_files(images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by file stem, in numeric-then-name order; images without a mask are skipped."""
    masks = {p.stem: p for p in _image_files(masks_dir)}
    images = sorted(_image_files(images_dir), key=numeric_key)
    return [(p, masks[p.stem]) for p in images if p.stem in masks]


def load_gray(path: Path) -> np.ndarray:
    """8-bit greyscale (H, W) uint8 of an image file (RGB/RGBA converted to luminance)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), np.uint8)


def read_reference(path: Path) -> tuple[np.ndarray, bool]:
    """(labels uint8 (h, w), multiclass). Palette PNGs and grey PNGs with values <= 2 are 0/1/2 label maps;
    anything else is a binary mask thresholded at > 127 (label 1 = lesion, multiclass False)."""
    image = Image.open(path)
    if image.mode == "P":
        return np.asarray(image, dtype=np.uint8), True
    grey = np.asarray(image.convert("L"), dtype=np.uint8)
    if grey.max() <= 2:
        return grey, True
    return (grey > 127).astype(np.uint8), False


@dataclass(frozen=True)
class LabelledSlice:
    """One labelled image: ``path``, ``label`` (1 COVID-19, 0 not), patient id, source, split hint."""

    path: Path
    label: int
    patient_id: str
    source: str = ""
    split: str = ""


def read_labels_csv(labels_csv: Path, images_dir: Path) -> list[LabelledSlice]:
    """Rows of a labels CSV; ``patient_id`` defaults to the image path (each image its own patient)."""
    with Path(labels_csv).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"{labels_csv}: needs at least the columns 'path' and 'label'")
    return [
        LabelledSlice(
            path=Path(images_dir) / row["path"],
            label=int(row["label"]),
            patient_id=row.get("patient_id") or row["path"],
            source=row.get("source") or "",
            split=row.get("split_hint") or "",
        )
        for row in rows
    ]


def _images(folder: Path) -> list[Path]:
    return sorted(_image_files(folder))


def _ucsd_splits(root: Path) -> dict[str, str]:
    """Image file name -> official split, from ``Data-split/*/{train,val,test}CT_*.txt``."""
    splits = {}
    for listing in sorted((root / "Data-split").glob("*/*.txt")):
        split = listing.name.split("CT_")[0]
        for name in listing.read_text().split():
            splits[name] = split
    return splits


def _ucsd_noncovid_patients(root: Path) -> dict[str, str]:
    """Image file name -> patient id from any ``NonCOVID-CT-MetaInfo.csv`` under ``root``."""
    patients = {}
    for meta in root.rglob("NonCOVID-CT-MetaInfo.csv"):
        with meta.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.reader(handle):
                if len(row) >= 2 and row[0] and not row[0].lower().startswith("image"):
                    patients[row[0]] = row[1]
    return patients


def ucsd_covid_ct(root: Path) -> list[LabelledSlice]:
    """UCSD COVID-CT as released: COVID and NonCOVID folders, official split lists, NonCOVID patient meta.

    Without a patient id (the COVID meta is an .xlsx), slices of one figure (``name%k``) share an id; the
    official split lists are patient-level, so splitting by ``split`` keeps patients apart.
    """
    root = Path(root)
    image_root = next((root / d for d in ("Images-processed", "Images") if (root / d).is_dir()), root)
    splits, patients = _ucsd_splits(root), _ucsd_noncovid_patients(root)
    out = []
    for folder, label in (("CT_COVID", 1), ("CT_NonCOVID", 0)):
        for path in _images(image_root / folder):
            patient = patients.get(path.name) or path.stem.split("%")[0]
            split = splits.get(path.name, "")
            out.append(LabelledSlice(path, label, f"ucsd_{label}_{patient}", "ucsd_covid_ct", split))
    return out


def sars_cov2_ct(root: Path) -> list[LabelledSlice]:
    """SARS-CoV-2 CT-scan dataset: ``COVID/`` and ``non-COVID/``; no patient ids, so each image is its own id.

    Slices of one patient cannot be kept together: treat validation on it as slice-level, not patient-level.
    """
    root = Path(root)
    folders = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    out = []
    for name, label in (("covid", 1), ("non-covid", 0)):
        for path in _images(folders[name]):
            out.append(LabelledSlice(path, label, f"sarscov2_{name}_{path.stem}", "sars_cov2_ct"))
    return out
