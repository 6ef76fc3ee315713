"""Whole-study quality on every real CT in ../shared/data: the README's table of real studies.

For each study: lungs (mL, and how much the dense-lung rule added beyond the aerated lung), lesion mL, worse lung
%, CT category, COVID-19 probability, and slice-level sensitivity / specificity where radiologists' slice labels
exist (COVID-CT-MD P001 and cap001; normal002 is normal on every slice). Which of these studies the lesion model
was trained on is in its model card (``data.real_ct``).

    python benchmarks/real_studies.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ctriage.evaluate.slices import read_slice_labels, slice_agreement
from ctriage.lungs import segment_lungs
from ctriage.models.registry import load_model
from ctriage.pipeline import Models, analyze_path
from ctriage.preprocess import WorkGrid

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STUDIES = {
    "P001 (COVID-19)": DATA / "ct_volumes/covidctmd_P001_covid19",
    "cap001 (CAP)": DATA / "ct_volumes/covidctmd_cap001_cap",
    "normal002 (normal)": DATA / "ct_volumes/covidctmd_normal002_normal",
    "A0001 (adenocarcinoma)": DATA / "ct_volumes/lungpetctdx_A0001_noncovid_adenocarcinoma",
    "TotalSegmentator example_ct (abdomen, lung bases)": DATA / "totalsegmentator_examples/example_ct.nii.gz",
}


def study_row(name: str, path: Path, models: Models | None = None) -> dict:
    """Figures of one study (``path``: a study folder with dicom/ and maybe slice_labels.csv, or a NIfTI), analysed
    with ``models`` (default the installed ones)."""
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
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    card = load_model("lesions").card
    trained_on = (card.get("data", {}).get("real_ct") or {}).get("trained_on", [])
    rows = [study_row(name, path) for name, path in STUDIES.items() if path.exists()]
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
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
