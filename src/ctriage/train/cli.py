"""`ctriage train ...` commands; torch and MONAI are imported inside the commands only."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Train models (needs the \\[train] extra: torch + MONAI).", no_args_is_help=True)

DEFAULT_DATA_ROOT = Path("../shared/data")


@app.command()
def lesions(
    data_root: Annotated[Path, typer.Option(help="Folder with medseg_infnet_2d/, acl_ggo_311/.")] = DEFAULT_DATA_ROOT,
    net: Annotated[str, typer.Option(help="Network: unet, unetpp or multitask.")] = "unet",
    features: Annotated[str, typer.Option(help="MONAI BasicUNet feature widths (6 integers).")] = "12,24,48,96,192,12",
    space_to_depth: Annotated[int, typer.Option(help="The body runs at 1/f of the input resolution (1, 2 or 4).")] = 2,
    norm: Annotated[str, typer.Option(help="Normalisation: batch (folds into the convs) or instance.")] = "batch",
    input_size: Annotated[int, typer.Option(help="Square model input size in pixels.")] = 256,
    pretrain_steps: Annotated[int, typer.Option(help="Binary pre-training steps (pseudo-label + ACL).")] = 300,
    finetune_steps: Annotated[int, typer.Option(help="Three-class fine-tuning steps on MedSeg train.")] = 300,
    batch_size: Annotated[int, typer.Option(help="Slices per optimiser step.")] = 12,
    learning_rate: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = 2e-3,
    lesion_class_weight: Annotated[float, typer.Option(help="Loss weight of GGO/consolidation vs background.")] = 1.0,
    real_ct: Annotated[bool, typer.Option(help="Also train on real CTs: lesion-free + synthetic-lesion crops.")] = True,
    real_share: Annotated[float, typer.Option(help="Share of real-CT slices in fine-tuning batches.")] = 0.5,
    init_weights: Annotated[
        Path | None, typer.Option(help="Start from these weights (a checkpoint written by an earlier run).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the validation split and of training.")] = 0,
    n_val: Annotated[int, typer.Option(help="MedSeg radiologist slices held out for validation.")] = 10,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
    cache_dir: Annotated[Path, typer.Option(help="Where the resized .npz cache is kept.")] = Path(".train_data"),
    history_json: Annotated[Path | None, typer.Option(help="Write the validation history here.")] = None,
    export_dir: Annotated[
        Path | None, typer.Option(help="Write weights/lesions.onnx + cards/lesions.json here (src/ctriage/models).")
    ] = None,
) -> None:
    """Train a lesion segmentation network (0 bg, 1 GGO, 2 consolidation) and optionally export it to ONNX."""
    import torch

    from ctriage.train.data import MEDSEG_MULTICLASS, build_cache, load_cache, validation_names
    from ctriage.train.loop import TrainConfig, subset, train_lesion_net
    from ctriage.train.nets import build_net, load_weights
    from ctriage.train.real_ct import TRAINING_CTS, build_real_cache, load_real_cache

    torch.set_num_threads(threads)
    widths = tuple(int(f) for f in features.split(","))
    cache = build_cache(data_root, cache_dir / f"lesions_{input_size}.npz", input_size)
    medseg, binary = load_cache(cache)
    val_names = validation_names(medseg.names, n_val, seed)
    train, val = subset(medseg, val_names, keep=False), subset(medseg, val_names, keep=True)
    real, luna_held_out = [], []
    if real_ct:
        negatives, synthetic, luna_held_out = load_real_cache(
            build_real_cache(data_root, cache_dir / f"lesions_real_ct_{input_size}.npz", input_size, seed))
        real = [negatives, synthetic]
    config = TrainConfig(pretrain_steps=pretrain_steps, finetune_steps=finetune_steps, batch_size=batch_size,
                         learning_rate=learning_rate, seed=seed, lesion_class_weight=lesion_class_weight,
                         real_share=real_share if real_ct else 0.0)
    model = build_net(net, widths, space_to_depth=space_to_depth, norm=norm)
    if init_weights is not None:
        state = torch.load(init_weights)
        load_weights(model, state.get("net", state))
    typer.echo(f"{net} {widths}: {sum(p.numel() for p in model.parameters())} parameters; "
               f"train {len(train.names)} + {len(binary.names)} binary + {[len(s.names) for s in real]} real-CT, "
               f"validation {val_names}")
    weights_file = cache_dir / f"lesions_{net}_s2d{space_to_depth}_{norm}_{'real' if real_ct else 'medseg'}.pt"
    history = train_lesion_net(model, train, val, binary, config, log=typer.echo, real=real,
                               checkpoint_file=weights_file)
    if history_json is not None:
        history_json.parent.mkdir(parents=True, exist_ok=True)
        history_json.write_text(json.dumps({"net": net, "features": widths, "config": config.__dict__,
                                            "history": history.rows}, indent=1))
    if export_dir is None:
        return
    from ctriage.evaluate.segmentation import evaluate_folder
    from ctriage.models.registry import ModelHandle
    from ctriage.train.export import export_onnx, image_example, write_card

    onnx_path = export_onnx(model, export_dir / "weights" / "lesions.onnx", image_example(input_size))
    command = (f"ctriage train lesions --net {net} --features {features} --space-to-depth {space_to_depth} "
               f"--norm {norm} --input-size {input_size} "
               f"--pretrain-steps {pretrain_steps} --finetune-steps {finetune_steps} --batch-size {batch_size} "
               f"--learning-rate {learning_rate} --lesion-class-weight {lesion_class_weight} "
               f"--{'' if real_ct else 'no-'}real-ct --real-share {real_share} --seed {seed} "
               + (f"--init-weights {init_weights} " if init_weights is not None else "") +
               f"--n-val {n_val} --export-dir {export_dir}")
    card = {
        "name": "lesions",
        "version": f"lesions-{net}-{datetime.now(UTC):%Y%m%d%H%M}",
        "date": f"{datetime.now(UTC):%Y-%m-%d}",
        "task": "2D lesion segmentation of axial chest CT slices cropped to the lungs",
        "classes": {"0": "background", "1": "ground-glass opacity", "2": "consolidation"},
        "architecture": {"net": net, "features": list(widths), "space_to_depth": space_to_depth, "norm": norm,
                         "parameters": sum(p.numel() for p in model.parameters())},
        "input": {"name": "image", "shape": ["N", 1, input_size, input_size], "dtype": "float32",
                  "size_px": input_size,
                  "mapping": "8-bit lung-window slice / 255; in the product ctriage.preprocess.window(hu, "
                             "LESION_INPUT_WINDOW_HU) of a slice cropped to the lung bounding box, "
                             "resized bilinearly to size_px x size_px"},
        "output": {"name": "logits", "shape": ["N", 3, input_size, input_size]},
        "data": {
            "multiclass": f"{MEDSEG_MULTICLASS} (50 radiologist slices, MedSeg origin)",
            "pretraining": "Inf-Net Pseudo-label (1600 slices, model-made binary masks) + acl_ggo_311 "
                           "(311 slices, GGO masks, cropped to the lungs), as lesion vs background",
            "real_ct": {
                "trained_on": [str(path) for path in TRAINING_CTS] if real_ct else [],
                "what": "the product's own lung crops of these lesion-free CTs, as negatives and with synthetic "
                        "GGO / consolidation inserted in HU (ctriage.train.real_ct), plus the LUNA16 slices of "
                        "identification_slices from the scans in the training half (ctriage.train.real_ct."
                        "in_training_half) as negatives",
                "luna16_held_out_scans": luna_held_out,
                "never_trained_on": ["ct_volumes/covidctmd_P001_covid19", "ct_volumes/covidctmd_cap001_cap",
                                     "ct_volumes/covidctmd_normal002_normal"],
            } if real_ct else None,
        },
        "split": {"validation": val_names, "train": train.names, "seed": seed,
                  "rule": f"{n_val} of the 50 radiologist slices by a seeded permutation, never trained on"},
        "training": {"command": command, **config.__dict__, "loss": "pretrain BCE + soft Dice on P(GGO)+P(cons); "
                     "finetune MONAI DiceCELoss (3 classes)", "last_weights_kept": True},
        "validation_grid": history.rows[-1][3],
    }
    handle = ModelHandle.from_files(onnx_path, card)
    report = evaluate_folder(data_root / MEDSEG_MULTICLASS / "Imgs", data_root / MEDSEG_MULTICLASS / "GT", handle,
                             names=val_names)
    card["validation"] = {"resolution": "original slice size, ONNX model", "n_images": report["n_images"],
                          "aggregate": "mean over images", **report["mean"], "pooled_over_pixels": report["pooled"]}
    write_card(card, export_dir / "cards" / "lesions.json")
    typer.echo(f"exported {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB); validation {report['mean']}")


@app.command("identification")
def identification_command(
    data_root: Annotated[Path, typer.Option(help="Folder holding identification_slices/.")] = DEFAULT_DATA_ROOT,
    table_cache: Annotated[Path | None, typer.Option(help="Cache of the per-slice lesion features.")] = Path(
        ".train_data/identification_features.jsonl"
    ),
    export_dir: Annotated[Path, typer.Option(help="Where weights/identification.onnx and cards/ go.")] = Path(
        "src/ctriage/models"
    ),
) -> None:
    """Fit the COVID-19 identification model (logistic over lesion-mask features), validate, export to ONNX."""
    from ctriage.datasets import read_labels_csv
    from ctriage.evaluate.identification import lesion_model_segmenter
    from ctriage.models.registry import load_model
    from ctriage.train.identification import train, unseen_by_lesion_model

    root = data_root / "identification_slices"
    lesion_card = load_model("lesions").card
    items = unseen_by_lesion_model(read_labels_csv(root / "labels.csv", root), lesion_card)
    if table_cache is not None:  # one cache per lesion model: the features are made from its masks
        table_cache = table_cache.with_name(f"{table_cache.stem}-{lesion_card['version']}{table_cache.suffix}")
        table_cache.parent.mkdir(parents=True, exist_ok=True)
    card = train(items, lesion_model_segmenter(), lesion_card["version"],
                 export_dir / "weights" / "identification.onnx", export_dir / "cards" / "identification.json",
                 table_cache=table_cache, log=typer.echo)
    cv = card["validation"]["cross_validation"]["all"]
    typer.echo(f"exported {card['version']}: cross-validated AUC {cv['auc']:.3f}, threshold "
               f"{card['operating_point']['threshold']:.3f}")
