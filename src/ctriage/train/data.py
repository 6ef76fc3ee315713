"""Lesion training data: the public 2D slice sets, resized once and cached as one .npz.

Sources (all 8-bit lung-window slices; the network input is ``image_uint8 / 255``):

* MedSeg / Inf-Net ``MultiClassInfection-Train``: 50 radiologist slices, palette GT 0 bg / 1 GGO / 2 consolidation.
* Inf-Net ``LungInfection-Train/Pseudo-label``: 1600 slices with model-made binary infection masks.
* ACL GGO 311: 311 uncropped slices with anti-aliased GGO masks (R channel > 127); cropped here to the lungs.

The binary sets (pseudo-label + ACL) carry "lesion vs not" only and are used for pre-training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu

from ctriage.datasets import load_gray, numeric_key, paired_files, read_reference
from ctriage.lesions import resize_labels

MEDSEG_MULTICLASS = Path("medseg_infnet_2d/TrainingSet/MultiClassInfection-Train")
MEDSEG_PSEUDO = Path("medseg_infnet_2d/TrainingSet/LungInfection-Train/Pseudo-label")
ACL_GGO = Path("acl_ggo_311")


@dataclass(frozen=True)
class SliceSet:
    """Slices resized to a square model grid: ``images`` uint8 (n, s, s), ``labels`` uint8 (n, s, s), ``names``.

    For multi-class sets labels are 0 bg / 1 GGO / 2 consolidation; for binary sets 0 bg / 1 lesion.
    """

    images: np.ndarray
    labels: np.ndarray
    names: list[str]


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a uint8 (h, w) image to (size, size)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def lung_bounding_box(image: np.ndarray, margin_fraction: float = 0.04) -> tuple[slice, slice]:
    """Bounding box of the dark lung fields inside the body of an uncropped uint8 slice, plus a margin.

    Body = filled largest component brighter than Otsu; lungs = dark pixels inside the body, components
    larger than 0.5 % of the slice. Falls back to the whole slice when nothing is found.
    """
    bright = image > threshold_otsu(image)
    labelled, count = ndimage.label(bright)
    if count == 0:
        return slice(None), slice(None)
    sizes = ndimage.sum(bright, labelled, range(1, count + 1))
    body = ndimage.binary_fill_holes(labelled == 1 + int(np.argmax(sizes)))
    dark = body & ~bright
    labelled, count = ndimage.label(dark)
    if count == 0:
        return slice(None), slice(None)
    sizes = ndimage.sum(dark, labelled, range(1, count + 1))
    keep = np.isin(labelled, 1 + np.flatnonzero(sizes > 0.005 * image.size))
    if not keep.any():
        return slice(None), slice(None)
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    pad_r, pad_c = int(margin_fraction * image.shape[0]), int(margin_fraction * image.shape[1])
    return (slice(max(0, rows[0] - pad_r), rows[-1] + 1 + pad_r), slice(max(0, cols[0] - pad_c), cols[-1] + 1 + pad_c))


def load_medseg_multiclass(data_root: Path, size: int) -> SliceSet:
    """The 50 radiologist slices with palette GT (0 bg, 1 GGO, 2 consolidation)."""
    pairs = paired_files(data_root / MEDSEG_MULTICLASS / "Imgs", data_root / MEDSEG_MULTICLASS / "GT")
    images = [resize_image(load_gray(i), size) for i, _ in pairs]
    labels = [resize_labels(read_reference(m)[0], (size, size)) for _, m in pairs]
    return SliceSet(np.stack(images), np.stack(labels), [i.stem for i, _ in pairs])


def load_pseudo_label(data_root: Path, size: int) -> SliceSet:
    """The 1600 pseudo-labelled slices; masks binarised at > 127."""
    pairs = paired_files(data_root / MEDSEG_PSEUDO / "Imgs", data_root / MEDSEG_PSEUDO / "GT")
    images = [resize_image(load_gray(i), size) for i, _ in pairs]
    labels = [resize_labels((load_gray(m) > 127).astype(np.uint8), (size, size)) for _, m in pairs]
    return SliceSet(np.stack(images), np.stack(labels), [i.stem for i, _ in pairs])


def load_acl(data_root: Path, size: int) -> SliceSet:
    """The 311 ACL slices cropped to the lungs; GGO masks from the R channel > 127 (binary lesion labels)."""
    pairs = paired_files(data_root / ACL_GGO / "ACL_Image", data_root / ACL_GGO / "ACL_GroundTrue")
    images, labels = [], []
    for image_path, mask_path in pairs:
        image = load_gray(image_path)
        mask = (np.asarray(Image.open(mask_path).convert("RGB"))[..., 0] > 127).astype(np.uint8)
        box = lung_bounding_box(image)
        images.append(resize_image(image[box], size))
        labels.append(resize_labels(mask[box], (size, size)))
    return SliceSet(np.stack(images), np.stack(labels), [f"acl_{i.stem}" for i, _ in pairs])


def validation_names(names: list[str], n_val: int, seed: int) -> list[str]:
    """The fixed validation subset: ``n_val`` names drawn by a seeded permutation of the sorted names."""
    order = np.random.default_rng(seed).permutation(len(names))
    return sorted((sorted(names, key=lambda n: numeric_key(Path(n)))[i] for i in order[:n_val]),
                  key=lambda n: numeric_key(Path(n)))


def build_cache(data_root: Path, cache_file: Path, size: int) -> Path:
    """Read all three sources, resize to ``size`` and write them into one .npz (skipped when it exists)."""
    if cache_file.exists():
        return cache_file
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    medseg, pseudo, acl = (load(data_root, size) for load in (load_medseg_multiclass, load_pseudo_label, load_acl))
    np.savez(
        cache_file,
        medseg_images=medseg.images, medseg_labels=medseg.labels, medseg_names=np.array(medseg.names),
        binary_images=np.concatenate([pseudo.images, acl.images]),
        binary_labels=np.concatenate([pseudo.labels, acl.labels]),
        binary_names=np.array(pseudo.names + acl.names),
    )
    return cache_file


def load_cache(cache_file: Path) -> tuple[SliceSet, SliceSet]:
    """(multi-class MedSeg set, binary pre-training set) from a cache written by :func:`build_cache`."""
    with np.load(cache_file) as data:
        medseg = SliceSet(data["medseg_images"], data["medseg_labels"], [str(n) for n in data["medseg_names"]])
        binary = SliceSet(data["binary_images"], data["binary_labels"], [str(n) for n in data["binary_names"]])
    return medseg, binary
