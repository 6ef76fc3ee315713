"""Lesion model candidates at an operating point: MedSeg validation Dice and the real studies, the table of
candidates in docs/models.md.

A candidate is one models folder (``weights/lesions.onnx`` + ``cards/lesions.json``, e.g. a training run's
``--export-dir``) or several, whose class probabilities are averaged (an ensemble); ``--flip`` also averages over
the left-right mirrored slice. The identification model is the installed one.

    python benchmarks/lesion_candidates.py FOLDER [FOLDER ...] [--operating-point 0.7] [--flip] [--studies P001 cap001]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from real_studies import DATA, STUDIES, study_row

from ctriage.evaluate.segmentation import evaluate_folder
from ctriage.models.registry import ModelHandle
from ctriage.pipeline import Models
from ctriage.train.data import MEDSEG_MULTICLASS


@dataclass
class AveragedLesionModel:
    """Stands in for a lesion :class:`ModelHandle`: the mean class probability of ``handles`` (each also on the
    mirrored slice with ``flip``), returned as log-probabilities, which the product reads as logits; ``card`` is the
    first handle's with the operating point set."""

    handles: list[ModelHandle]
    flip: bool
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return "+".join(h.version for h in self.handles) + (" flip" if self.flip else "")

    @property
    def input_size(self) -> int:
        return self.handles[0].input_size

    def run(self, batch: np.ndarray) -> np.ndarray:
        probabilities = []
        for handle in self.handles:
            for mirrored in (False, True) if self.flip else (False,):
                logits = handle.run(batch[..., ::-1] if mirrored else batch)
                logits = logits[..., ::-1] if mirrored else logits
                exp = np.exp(logits - logits.max(axis=1, keepdims=True))
                probabilities.append(exp / exp.sum(axis=1, keepdims=True))
        return np.log(np.clip(np.mean(probabilities, axis=0), 1e-12, None)).astype(np.float32)


def candidate(folders: list[Path], operating_point: float, flip: bool) -> AveragedLesionModel:
    """The averaged model of ``folders`` at ``operating_point`` (P(GGO) + P(consolidation))."""
    handles = [ModelHandle.from_files(folder / "weights" / "lesions.onnx",
                                      json.loads((folder / "cards" / "lesions.json").read_text()))
               for folder in folders]
    card = {**handles[0].card, "operating_point": {"lesion_probability": operating_point}}
    return AveragedLesionModel(handles, flip, card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="models folders; several are averaged")
    parser.add_argument("--operating-point", type=float, default=0.7)
    parser.add_argument("--flip", action="store_true", help="also average over the left-right mirrored slices")
    parser.add_argument("--studies", nargs="*", default=["P001", "cap001", "normal002"],
                        help="real studies by a part of their name (none: MedSeg only)")
    args = parser.parse_args()
    model = candidate(args.folders, args.operating_point, args.flip)
    medseg = DATA / MEDSEG_MULTICLASS
    scores = evaluate_folder(medseg / "Imgs", medseg / "GT", model, names=model.card["split"]["validation"])
    dice = " / ".join(f"{scores['mean'][f'dice_{k}']:.3f}" for k in ("lesion", "ggo", "consolidation"))
    print(f"{model.version} at {args.operating_point}: MedSeg validation lesion / GGO / consolidation Dice {dice}")
    models = Models(model, Models.load().identification)
    for name, path in STUDIES.items():
        if path.exists() and any(part in name for part in args.studies):
            row = study_row(name, path, models)
            agreement = ("" if "slice_specificity" not in row else
                         f", slice sens / spec {row['slice_sensitivity']} / {row['slice_specificity']}")
            print(f"{name}: {row['lesion_ml']} mL, CT-{row['ct_category']}, "
                  f"p {row['covid_probability']:.2f}{agreement}")


if __name__ == "__main__":
    main()
