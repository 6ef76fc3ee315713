"""`ctriage evaluate ...` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ctriage.evaluate.slices import MIN_LESION_AREA_MM2

app = typer.Typer(help="Evaluate models against reference labels (Dice, ROC AUC, Spearman ...).", no_args_is_help=True)


@app.command("identification")
def identification_command(
    images: Annotated[Path, typer.Option(help="Folder the CSV's image paths are relative to.")],
    labels: Annotated[Path, typer.Option(help="CSV: path, label (1 COVID-19), optional patient_id, source.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers as JSON here.")] = None,
    roc_png: Annotated[Path, typer.Option(help="ROC curve PNG.")] = Path("identification_roc.png"),
) -> None:
    """ROC AUC (95 % patient bootstrap CI) and sensitivity/specificity at the operating point, per source."""
    from rich.console import Console

    from ctriage.datasets import read_labels_csv
    from ctriage.evaluate.identification import lesion_model_segmenter, save_roc_png, score_slices, summarize
    from ctriage.identify import IdentificationModel

    scores = score_slices(read_labels_csv(labels, images), lesion_model_segmenter(), IdentificationModel())
    summary = summarize(scores)
    save_roc_png(scores, roc_png)
    console = Console()
    console.print(f"model {summary['model_version']}, threshold {summary['threshold']:.3f}, ROC: {roc_png}")
    for name, rates in {"all": summary["all"], **summary["per_source"]}.items():
        low, high = rates["auc_ci95"]
        console.print(
            f"{name}: AUC {rates['auc']:.3f} (95% CI {low:.3f}-{high:.3f}), sensitivity {rates['sensitivity']:.3f},"
            f" specificity {rates['specificity']:.3f} (n+ {rates['n_positive']}, n- {rates['n_negative']})"
        )
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2) + "\n")


@app.command("severity")
def severity_command(
    csv_path: Annotated[Path, typer.Option("--csv", help="CSV with predicted and reference severity columns.")],
    predicted: Annotated[str, typer.Option(help="Column of predicted scores.")] = "predicted",
    reference: Annotated[str, typer.Option(help="Column of reference scores.")] = "reference",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers as JSON here.")] = None,
) -> None:
    """Spearman's rho (95 % bootstrap CI) and Bland-Altman bias / limits of predicted vs reference severity."""
    import csv

    import numpy as np

    from ctriage.evaluate.metrics import bland_altman, bootstrap_ci, spearman

    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    x = np.array([float(r[predicted]) for r in rows])
    y = np.array([float(r[reference]) for r in rows])
    rho = spearman(x, y)
    low, high = bootstrap_ci(spearman, x, y)
    bias, lower, upper = bland_altman(x, y)
    typer.echo(f"n {len(rows)}: Spearman rho {rho:.3f} (95% CI {low:.3f}-{high:.3f})")
    typer.echo(f"Bland-Altman (predicted - reference): bias {bias:.3f}, limits of agreement {lower:.3f} to {upper:.3f}")
    if json_out is not None:
        summary = {"n": len(rows), "spearman_rho": rho, "spearman_ci95": [low, high],
                   "bland_altman": {"bias": bias, "lower": lower, "upper": upper}}
        json_out.write_text(json.dumps(summary, indent=2) + "\n")


@app.command("lesions")
def lesions_command(
    images: Annotated[Path, typer.Option(help="Folder of 8-bit lung-window slices (Inf-Net Imgs/).")],
    masks: Annotated[Path, typer.Option(help="Folder of reference PNGs: palette 0/1/2 or binary 0/255 (GT/).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write per-image and mean numbers here.")] = None,
) -> None:
    """Dice (lesion, GGO, consolidation), sensitivity and specificity of the lesion model, per image and mean."""
    from ctriage.evaluate.segmentation import METRICS, evaluate_folder
    from ctriage.models.registry import load_model

    report = evaluate_folder(images, masks, load_model("lesions"))

    def cells(row: dict) -> str:
        return " ".join(f"{row[m]:>10.3f}" if row[m] is not None else f"{'n/a':>10}" for m in METRICS)

    typer.echo(f"model {report['model_version']}, {report['n_images']} images")
    headers = ("Dice les.", "Dice GGO", "Dice cons.", "sens.", "spec.")
    typer.echo(f"{'image':<24}" + " ".join(f"{h:>10}" for h in headers))
    for row in report["images"]:
        typer.echo(f"{row['name'][:24]:<24}" + cells(row))
    typer.echo(f"{'mean':<24}" + cells(report["mean"]))
    typer.echo("pooled over all pixels: " + ", ".join(
        f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in report["pooled"].items()))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")


@app.command("slices")
def slices_command(
    study: Annotated[Path, typer.Option(help="DICOM series folder of one study.")],
    labels: Annotated[Path, typer.Option(help="CSV with a 'file' column and a per-slice label column.")],
    column: Annotated[str, typer.Option(help="Label column: 1 = slice shows infection.")] = "infection",
    min_area_mm2: Annotated[
        float, typer.Option(help="Lesion area that makes a slice positive, mm^2.")
    ] = MIN_LESION_AREA_MM2,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers as JSON here.")] = None,
) -> None:
    """Slice-level sensitivity / specificity of the whole pipeline's lesions against per-slice labels."""
    from ctriage.evaluate.slices import read_slice_labels, slice_agreement
    from ctriage.pipeline import analyze_path

    result = analyze_path(study)
    if result.volume.slice_files is None:
        raise typer.BadParameter("slice labels need a single-frame DICOM series (file names per slice)")
    reference = read_slice_labels(labels, result.volume.slice_files, column)
    agreement = slice_agreement(result.lesions.mask, result.volume.spacing_mm, reference, min_area_mm2)
    typer.echo(
        f"sensitivity {agreement.sensitivity:.3f} ({agreement.n_positive} labelled slices), "
        f"specificity {agreement.specificity:.3f} ({agreement.n_negative} unlabelled slices)"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(agreement.to_dict(), indent=2) + "\n")
