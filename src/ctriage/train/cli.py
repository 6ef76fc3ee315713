"""`ctriage train ...` commands; torch and MONAI are imported inside the commands only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Train models (needs the [train] extra: torch + MONAI).", no_args_is_help=True)


@app.command("identification")
def identification_command(
    data_root: Annotated[Path, typer.Option(help="Folder holding identification_slices/.")] = Path("../shared/data"),
    table_cache: Annotated[Path | None, typer.Option(help="Cache of the per-slice lesion features.")] = Path(
        ".train_data/identification_features.jsonl"
    ),
    export_dir: Annotated[Path, typer.Option(help="Where weights/identification.onnx and cards/ go.")] = Path(
        "src/ctriage/models"
    ),
) -> None:
    """Fit the COVID-19 identification model (logistic over lesion-mask features), validate, export to ONNX."""
    from ctriage.evaluate.identification import lesion_model_segmenter, read_labels_csv
    from ctriage.models.registry import load_model
    from ctriage.train.identification import train

    root = data_root / "identification_slices"
    items = read_labels_csv(root / "labels.csv", root)
    if table_cache is not None:
        table_cache.parent.mkdir(parents=True, exist_ok=True)
    card = train(items, lesion_model_segmenter(), load_model("lesions").version,
                 export_dir / "weights" / "identification.onnx", export_dir / "cards" / "identification.json",
                 table_cache=table_cache, log=typer.echo)
    cv = card["validation"]["cross_validation"]["all"]
    typer.echo(f"exported {card['version']}: cross-validated AUC {cv['auc']:.3f}, threshold "
               f"{card['operating_point']['threshold']:.3f}")
