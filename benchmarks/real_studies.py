"""Whole-study quality on every real CT in ../shared/data: the README's table of real studies.

For each study: lungs (mL, and how much the dense-lung rule added beyond the aerated lung), lesion mL, worse lung
%, CT category, COVID-19 probability, and slice-level sensitivity / specificity where radiologists' slice labels
exist (COVID-CT-MD P001 and cap001; normal002 is normal on every slice). Which of these studies the lesion model
was trained on is in its model card (``data.real_ct``). A second table gives what the marked slices carry, apart
for slices labelled infected and labelled clear (lesion mL per slice, HU quartiles of the marked voxels): whether
a "false positive" slice holds opacity of ground-glass attenuation or model noise.

    python benchmarks/real_studies.py [--json FILE] [--review-dir DIR]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ctriage.evaluate.slices import (
    MIN_LESION_AREA_MM2,
    SliceAgreement,
    marked_attenuation,
    marked_slices,
    read_slice_labels,
    slice_agreement,
)
from ctriage.lungs import segment_lungs
from ctriage.models.registry import load_model
from ctriage.pipeline import Models, analyze_path
from ctriage.preprocess import WorkGrid
from ctriage.report.images import render_slice
from ctriage.result import StudyResult

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STUDIES = {
    "P001 (COVID-19)": DATA / "ct_volumes/covidctmd_P001_covid19",
    "cap001 (CAP)": DATA / "ct_volumes/covidctmd_cap001_cap",
    "normal002 (normal)": DATA / "ct_volumes/covidctmd_normal002_normal",
    "A0001 (adenocarcinoma)": DATA / "ct_volumes/lungpetctdx_A0001_noncovid_adenocarcinoma",
    "TotalSegmentator example_ct (abdomen, lung bases)": DATA / "totalsegmentator_examples/example_ct.nii.gz",
}


def study_row(name: str, path: Path, models: Models | None = None, review_dir: Path | None = None) -> dict:
    """Figures of one study (``path``: a study folder with dicom/ and maybe slice_labels.csv, or a NIfTI), analysed
    with ``models`` (default the installed ones); with ``review_dir``, also the slices where the marking and the
    reference disagree, as overlays (``<study>_<slice>_false_<positive|negative>.png``)."""
    source = path / "dicom" if (path / "dicom").is_dir() else path
    result = analyze_path(source, models=models)
    volume, severity = result.volume, result.severity
    lung = result.lungs.left | result.lungs.right
    aerated = segment_lungs(volume.hu, WorkGrid.of(volume.spacing_mm)).combined
    lesion = result.lesions.mask > 0
    row = {
        "study": name,
        "lungs_ml": round(severity.lung_ml, 0),
        "added_beyond_aerated_percent": round(100 * (lung & ~aerated).sum() / max(aerated.sum(), 1), 2),
        "lesion_ml": round(severity.lesion_ml, 1),
        "worse_lung_percent": round(100 * severity.max_ratio, 2),
        "ct_category": severity.ct_category,
        "covid_probability": round(result.identification.probability, 3),
        "covid_positive": result.identification.positive,
        "lesion_slices": int((lesion.any(axis=(1, 2))).sum()),
    }
    labels_csv = path / "slice_labels.csv"
    if labels_csv.exists() or "normal" in name:
        reference = (read_slice_labels(labels_csv, volume.slice_files) if labels_csv.exists()
                     else np.zeros(volume.shape[0], bool))
        agreement = slice_agreement(result.lesions.mask, volume.spacing_mm, reference)
        row["slice_sensitivity"] = None if agreement.n_positive == 0 else round(agreement.sensitivity, 3)
        row["slice_specificity"] = round(agreement.specificity, 3)
        row["false_positive_slices"] = agreement.false_positive_slices
        if review_dir is not None:
            write_disagreements(review_dir, name.split()[0], result, agreement)
        marked = marked_slices(lesion, volume.spacing_mm)
        row["marked_attenuation"] = {
            kind: asdict(marked_attenuation(lesion, volume.hu, volume.spacing_mm, marked & on))
            for kind, on in (("infected", reference), ("clear", ~reference))
        }
    return row


def write_disagreements(folder: Path, study: str, result: StudyResult, agreement: SliceAgreement) -> None:
    """Overlays (lung window, lesions and lung edge) of the slices where the lesion marking and the reference
    labels disagree, for a radiologist to adjudicate."""
    folder.mkdir(parents=True, exist_ok=True)
    lung = result.lungs.left | result.lungs.right
    for kind, slices in (("positive", agreement.false_positive_slices), ("negative", agreement.false_negative_slices)):
        for z in slices:
            image = render_slice(result.volume.hu[z], result.lesions.mask[z], lung2d=lung[z])
            image.save(folder / f"{study}_{z:04d}_false_{kind}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--review-dir", type=Path,
                        help="write overlays of the slices where lesion marking and slice labels disagree here")
    args = parser.parse_args()
    card = load_model("lesions").card
    trained_on = (card.get("data", {}).get("real_ct") or {}).get("trained_on", [])
    rows = [study_row(name, path, review_dir=args.review_dir) for name, path in STUDIES.items() if path.exists()]
    print(f"lesion model {card['version']}; real CTs it was trained on: {trained_on or 'none'}\n")
    print("| study | lungs mL | added beyond aerated % | lesion mL | worse lung % | CT | COVID-19 p | "
          "slice sens / spec |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        sens, spec = r.get("slice_sensitivity"), r.get("slice_specificity")
        agreement = "" if spec is None else f"{'-' if sens is None else f'{sens:.3f}'} / {spec:.3f}"
        print(f"| {r['study']} | {r['lungs_ml']:.0f} | {r['added_beyond_aerated_percent']:.2f} | "
              f"{r['lesion_ml']:.1f} | {r['worse_lung_percent']:.2f} | CT-{r['ct_category']} | "
              f"{r['covid_probability']:.2f} {'+' if r['covid_positive'] else '-'} | {agreement} |")
    print("\nWhat the marked slices carry, by their reference label (a marked slice holds >= "
          f"{MIN_LESION_AREA_MM2:g} mm2 of lesion):\n")
    print("| study | labelled | marked slices | lesion mL per slice | marked voxels HU, quartiles |")
    print("|---|---|---|---|---|")
    for r in rows:
        for label, m in r.get("marked_attenuation", {}).items():
            if m["hu_quartiles"]:
                quartiles = " / ".join(f"{q:.0f}" for q in m["hu_quartiles"])
                print(f"| {r['study']} | {label} | {m['slices']} | {m['ml_per_slice']:.2f} | {quartiles} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
