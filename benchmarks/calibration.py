"""HU -> lesion-model input calibration: how real CT is mapped so a slice looks like the 8-bit training slices.

1. Landmarks: grey levels of the training slices (MedSeg/Inf-Net, 8-bit) against HU of COVID-CT-MD P001 cropped
   to the lungs as the product crops them; matched quantiles give the linear map grey = 255 (HU - low) / (high - low).
2. Check on labels: the whole pipeline's slice-level sensitivity / specificity on P001 (radiologists' per-slice
   infection labels) for the calibrated window and for common alternatives.

Writes docs/calibration.png and prints a Markdown table.  python benchmarks/calibration.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ctriage.evaluate.slices import read_slice_labels, slice_agreement  # noqa: E402
from ctriage.io import load_volume  # noqa: E402
from ctriage.lesions import segment_lesions  # noqa: E402
from ctriage.lungs import segment_lungs  # noqa: E402
from ctriage.pipeline import lesion_search_area, lesions_in_lungs  # noqa: E402
from ctriage.preprocess import LESION_INPUT_WINDOW_HU, WorkGrid, window  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TRAIN_IMAGES = DATA / "medseg_infnet_2d" / "TrainingSet" / "MultiClassInfection-Train" / "Imgs"
P001 = DATA / "ct_volumes" / "covidctmd_P001_covid19"
WINDOWS = {
    "calibrated": LESION_INPUT_WINDOW_HU,
    "lung W1500 L-600": (-1350.0, 150.0),
    "wide [-1024, 350]": (-1024.0, 350.0),
    "narrow W1000 L-700": (-1200.0, -200.0),
}


def lung_crops(volume, lungs, step: int = 3) -> list[np.ndarray]:
    """HU of the lung bounding box on every ``step``-th slice that holds lung (the product's crop)."""
    crops = []
    for k in range(0, volume.shape[0], step):
        rows, cols = np.nonzero(lungs.combined[k])
        if len(rows) > 500:
            crops.append(volume.hu[k, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
    return crops


def main() -> None:
    grey = np.concatenate([np.asarray(Image.open(f).convert("L")).ravel() for f in sorted(TRAIN_IMAGES.iterdir())])
    volume = load_volume(P001 / "dicom")
    lungs = segment_lungs(volume.hu, WorkGrid.of(volume.spacing_mm))
    hu = np.concatenate([c.ravel() for c in lung_crops(volume, lungs)]).astype(np.float32)
    quantiles = np.arange(5, 96, 5)
    grey_q, hu_q = np.percentile(grey, quantiles), np.percentile(hu, quantiles)
    usable = (grey_q > 8) & (grey_q < 245)
    slope, intercept = np.polyfit(hu_q[usable], grey_q[usable], 1)
    print(f"quantile fit: grey = {slope:.4f} HU + {intercept:.1f} -> window [{-intercept / slope:.0f}, "
          f"{(255 - intercept) / slope:.0f}] HU (product uses {LESION_INPUT_WINDOW_HU})")

    reference = read_slice_labels(P001 / "slice_labels.csv", volume.slice_files)
    search_area = lesion_search_area(lungs)
    rows = []
    for name, window_hu in WINDOWS.items():  # the pipeline's lesion stage, with the window swapped
        lesions = segment_lesions(volume.hu, search_area, volume.spacing_mm, window_hu=window_hu)
        _, mask, _ = lesions_in_lungs(lungs, lesions.mask, volume.hu, True)
        rows.append((name, window_hu, slice_agreement(mask, volume.spacing_mm, reference)))

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    bins = np.linspace(0, 255, 52)
    axes[0].hist(grey, bins=bins, density=True, histtype="step", lw=2, color="k", label="training slices (8-bit)")
    for name, window_hu in WINDOWS.items():
        axes[0].hist(window(hu, window_hu) * 255, bins=bins, density=True, histtype="step", label=f"P001, {name}")
    axes[0].set(xlabel="grey level (0-255)", ylabel="density", title="Lung-crop grey levels: training vs P001")
    axes[0].legend(fontsize=8)
    k = int(np.argmax(reference * lungs.combined.sum(axis=(1, 2))))
    rows_, cols_ = np.nonzero(lungs.combined[k])
    crop = volume.hu[k, rows_.min() : rows_.max() + 1, cols_.min() : cols_.max() + 1]
    tiles = [np.asarray(Image.open(TRAIN_IMAGES / "12.jpg").convert("L").resize(crop.shape[::-1])) / 255.0]
    tiles += [window(crop, w) for w in WINDOWS.values()]
    axes[1].imshow(np.concatenate(tiles, axis=1), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title(f"training slice | P001 slice {k}: " + " | ".join(WINDOWS), fontsize=8)
    axes[1].axis("off")
    figure.tight_layout()
    out = REPO / "docs" / "calibration.png"
    figure.savefig(out, dpi=110)
    print(f"figure: {out}\n")
    print("| mapping | window HU | slice sensitivity | slice specificity |")
    print("|---|---|---|---|")
    for name, window_hu, agreement in rows:
        print(f"| {name} | [{window_hu[0]:.0f}, {window_hu[1]:.0f}] | {agreement.sensitivity:.3f} | "
              f"{agreement.specificity:.3f} |")


if __name__ == "__main__":
    main()
