"""Lesion training data from real scanner CTs in HU: lesion-free crops and synthetic lesions.

The 2D public slice sets are 8-bit renderings of COVID-19 slices; what the product meets is whole scanner CTs in
HU, cropped and windowed by :func:`ctriage.lesions.lung_crops`. Two kinds of slices are made here from real CTs
without lesions, through that same function:

* **negatives**: the product's lung crops as they are, labelled background everywhere (chest wall, heart, liver,
  stomach and clear lung must stay unmarked);
* **synthetic lesions** (after Yao et al. 2021, "Label-free segmentation of COVID-19 lesions in lung CT", IEEE
  TMI): smooth random blobs inside the lung, mostly subpleural, blended into the HU image as ground-glass
  opacity (vessels stay visible) or consolidation (vessels vanish, often with a GGO rim), with known masks.

LUNA16 slices of ``identification_slices`` (8-bit, no HU) are further negatives, split by scan.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ctriage.datasets import load_gray
from ctriage.labels import LesionLabel
from ctriage.lesions import lung_crops, resize_labels
from ctriage.train.data import SliceSet, lung_bounding_box, resize_image

# Real CTs without COVID-19 lesions that training may use (relative to the data root): a non-COVID chest (lung
# adenocarcinoma, 5 mm), an abdominal CT with the lung bases and two contrast chest CTs cropped through the lungs.
# COVID-CT-MD normal002, cap001 and P001 are kept out: they are the whole-study validation.
TRAINING_CTS = (
    Path("ct_volumes/lungpetctdx_A0001_noncovid_adenocarcinoma/dicom"),
    Path("totalsegmentator_examples/example_ct.nii.gz"),
    Path("totalsegmentator_examples/aorta_report_test_result_models_ct_cropped.nii.gz"),
    Path("totalsegmentator_examples/pulmonary_report_models_ct_cropped.nii.gz"),
)
SOFT_TISSUE_HU = 40
FRAME_PX = 8  # soft-tissue frame around CTs cropped through the lungs, so that the body encloses them
IDENTIFICATION_SLICES = Path("identification_slices")
LUNA_SOURCE = "ucsd_luna16_noncovid"
MIN_CROP_LUNG_FRACTION = 0.05  # synthetic lesions go on crops whose lung covers at least this share


@dataclass(frozen=True)
class LesionBlob:
    """Parameters of one synthetic lesion: ``kind`` GGO or CONSOLIDATION, ``radius_mm``, target ``hu`` and the
    opacity ``alpha`` in (0, 1] at its core."""

    kind: LesionLabel
    radius_mm: float
    hu: float
    alpha: float


def random_blob(rng: np.random.Generator) -> LesionBlob:
    """Draw a lesion: 60 % GGO (-750..-350 HU), 40 % consolidation (-100..+50 HU); radius 4..35 mm."""
    if rng.random() < 0.6:
        return LesionBlob(LesionLabel.GGO, float(rng.uniform(4, 35)), float(rng.uniform(-750, -350)),
                          float(rng.uniform(0.6, 1)))
    return LesionBlob(LesionLabel.CONSOLIDATION, float(rng.uniform(4, 30)), float(rng.uniform(-100, 50)), 1.0)


def blob_shape(
    shape: tuple[int, int], centre: tuple[int, int], radius_px: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """A smooth irregular blob (float32 (h, w) in [0, 1], soft edge) around ``centre``: an ellipse whose radius is
    modulated by low-frequency noise."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    angle = rng.uniform(0, np.pi)
    dy, dx = (rows - centre[0]) / radius_px[0], (cols - centre[1]) / radius_px[1]
    u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
    stretch = rng.uniform(0.5, 1.0)
    distance = np.sqrt(u**2 + (v / stretch) ** 2)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(2.0, min(radius_px) / 2))
    noise /= max(float(np.abs(noise).max()), 1e-6)
    field = 1.0 - distance + 0.7 * noise
    edge = max(1.0, min(radius_px) * rng.uniform(0.15, 0.4))
    return np.clip(field * min(radius_px) / edge, 0, 1).astype(np.float32)


def insert_lesions(
    hu: np.ndarray,
    lung: np.ndarray,
    spacing_yx_mm: tuple[float, float],
    rng: np.random.Generator,
    n_lesions: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Blend 1..4 synthetic lesions into a 2D HU slice ``hu`` inside its ``lung`` (bool); returns the new HU
    (float32) and labels uint8 (0 bg, 1 GGO, 2 consolidation).

    GGO raises the HU of the lung towards the lesion's target, but never lowers a brighter pixel (vessels stay
    visible); consolidation replaces the lung by soft tissue with noise texture, and half of them get a GGO rim.
    Centres lie in the outer 25 mm of the lung in 70 % of lesions (COVID-19 is mostly subpleural).
    """
    out = hu.astype(np.float32).copy()
    labels = np.zeros(hu.shape, np.uint8)
    filled = ndimage.binary_fill_holes(lung)
    depth_mm = ndimage.distance_transform_edt(filled, sampling=spacing_yx_mm)
    peripheral = filled & (depth_mm < 25)
    texture = ndimage.gaussian_filter(rng.standard_normal(hu.shape), 1.5).astype(np.float32)
    texture /= max(float(texture.std()), 1e-6)
    for _ in range(n_lesions or int(rng.integers(1, 5))):
        pool = peripheral if peripheral.any() and rng.random() < 0.7 else filled
        candidates = np.flatnonzero(pool)
        if candidates.size == 0:
            break
        centre = np.unravel_index(int(rng.choice(candidates)), hu.shape)
        blob = random_blob(rng)
        radius_px = (blob.radius_mm / spacing_yx_mm[0], blob.radius_mm / spacing_yx_mm[1])
        weight = blob_shape(hu.shape, (int(centre[0]), int(centre[1])), radius_px, rng) * filled
        if blob.kind == LesionLabel.CONSOLIDATION and rng.random() < 0.5:
            rim = np.clip(ndimage.gaussian_filter(weight, max(radius_px) / 4) * 1.6, 0, 1) * filled
            rim_hu = float(rng.uniform(-700, -450))
            raised = out + 0.8 * rim * (rim_hu + 40 * texture - out)
            out = np.maximum(out, raised)
            labels[(rim > 0.5) & (labels == 0)] = LesionLabel.GGO
        target = blob.hu + (40.0 if blob.kind == LesionLabel.GGO else 25.0) * texture
        blended = out + blob.alpha * weight * (target - out)
        out = np.maximum(out, blended) if blob.kind == LesionLabel.GGO else np.where(weight > 0, blended, out)
        core = weight > 0.5
        if blob.kind == LesionLabel.GGO:  # the whole hazy area, vessels in it included, as a reader outlines it
            labels[core & (labels == 0)] = LesionLabel.GGO
        else:
            labels[core & (out > -300)] = LesionLabel.CONSOLIDATION
    return out, labels


def _resized(plane01: np.ndarray, labels: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A [0, 1] plane as uint8 (size, size) and its labels (nearest) on the same grid (zeros when None)."""
    image = resize_image(np.round(np.clip(plane01, 0, 1) * 255).astype(np.uint8), size)
    if labels is None:
        return image, np.zeros((size, size), np.uint8)
    return image, resize_labels(labels, (size, size))


def ct_slices(ct_path: Path, size: int, rng: np.random.Generator, variants: int = 2) -> tuple[SliceSet, SliceSet]:
    """(negatives, synthetic-lesion slices) of one lesion-free CT: the product's lung crops, each as it is and in
    ``variants`` versions with synthetic lesions (crops with little lung get none)."""
    from ctriage.io import load_volume
    from ctriage.lungs import segment_lungs
    from ctriage.pipeline import lesion_search_area
    from ctriage.preprocess import LESION_INPUT_WINDOW_HU, WorkGrid, window

    volume = load_volume(ct_path)
    hu, spacing = volume.hu, volume.spacing_mm
    if "cropped" in ct_path.name:
        hu = np.pad(hu, ((0, 0), (FRAME_PX, FRAME_PX), (FRAME_PX, FRAME_PX)), constant_values=SOFT_TISSUE_HU)
    lungs = segment_lungs(hu, WorkGrid.of(spacing))
    negatives, synthetic = ([], [], []), ([], [], [])
    for crop in lung_crops(hu, lesion_search_area(lungs), spacing):
        name = f"{ct_path.name}:{crop.z}"
        for target, item in zip(negatives, (*_resized(crop.plane, None, size), name), strict=True):
            target.append(item)
        lung = lungs.combined[crop.z][crop.box]
        if lung.mean() < MIN_CROP_LUNG_FRACTION:
            continue
        for k in range(variants):
            new_hu, labels = insert_lesions(hu[crop.z][crop.box], lung, (spacing[1], spacing[2]), rng)
            image, grid_labels = _resized(window(new_hu, LESION_INPUT_WINDOW_HU), labels, size)
            for target, item in zip(synthetic, (image, grid_labels, f"{name}:syn{k}"), strict=True):
                target.append(item)
    return _slice_set(*negatives), _slice_set(*synthetic)


def _slice_set(images: list, labels: list, names: list) -> SliceSet:
    if not images:
        return SliceSet(np.zeros((0, 1, 1), np.uint8), np.zeros((0, 1, 1), np.uint8), [])
    return SliceSet(np.stack(images), np.stack(labels), list(names))


def in_training_half(patient_id: str) -> bool:
    """The LUNA16 scans whose slices lesion training may use: a stable half by a hash of the scan id; the other
    half stays unseen, for validating identification."""
    return hashlib.sha256(patient_id.encode()).digest()[0] % 2 == 0


def luna_negatives(data_root: Path, size: int) -> tuple[SliceSet, list[str]]:
    """LUNA16 slices of the training half (cropped to the lungs, labelled background) and the held-out scan ids."""
    root = data_root / IDENTIFICATION_SLICES
    images, names, held_out = [], [], set()
    with open(root / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["source"] != LUNA_SOURCE:
                continue
            if not in_training_half(row["patient_id"]):
                held_out.add(row["patient_id"])
                continue
            image = load_gray(root / row["path"])
            images.append(resize_image(image[lung_bounding_box(image)], size))
            names.append(row["path"])
    labels = [np.zeros((size, size), np.uint8)] * len(images)
    return _slice_set(images, labels, names), sorted(held_out)


def build_real_cache(data_root: Path, cache_file: Path, size: int, seed: int = 0) -> Path:
    """Negatives and synthetic-lesion slices of :data:`TRAINING_CTS` plus the LUNA16 training half, in one .npz
    (skipped when it exists)."""
    if cache_file.exists():
        return cache_file
    rng = np.random.default_rng(seed)
    parts = [ct_slices(data_root / path, size, rng) for path in TRAINING_CTS]
    luna, luna_held_out = luna_negatives(data_root, size)
    negatives = [p[0] for p in parts] + [luna]
    synthetic = [p[1] for p in parts]
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        cache_file,
        negative_images=np.concatenate([s.images for s in negatives]),
        negative_names=np.array([n for s in negatives for n in s.names]),
        synthetic_images=np.concatenate([s.images for s in synthetic]),
        synthetic_labels=np.concatenate([s.labels for s in synthetic]),
        synthetic_names=np.array([n for s in synthetic for n in s.names]),
        luna_held_out=np.array(luna_held_out),
    )
    return cache_file


def load_real_cache(cache_file: Path) -> tuple[SliceSet, SliceSet, list[str]]:
    """(negatives, synthetic-lesion slices, held-out LUNA16 scan ids) from :func:`build_real_cache`."""
    with np.load(cache_file) as data:
        negatives = SliceSet(data["negative_images"], np.zeros_like(data["negative_images"]),
                             [str(n) for n in data["negative_names"]])
        synthetic = SliceSet(data["synthetic_images"], data["synthetic_labels"],
                             [str(n) for n in data["synthetic_names"]])
        return negatives, synthetic, [str(n) for n in data["luna_held_out"]]
