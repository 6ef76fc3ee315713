"""Train and validate the COVID-19 identification model: logistic regression over lesion-mask features.

Steps: lesion model on every labelled slice -> :func:`ctriage.identify.lesion_features` -> patient-grouped
cross-validation and leave-one-source-out validation -> fit on all slices -> ONNX ("features" (N, F) ->
"probability" (N, 1), standardisation folded into the linear layer) + model card.

Validation groups: the identification slices have one source with both classes (UCSD COVID-CT) and one with
negatives only (LUNA16), so "sources" here are the negative origins (UCSD crawled papers, UCSD MedPix, LUNA16)
against held-out COVID patients; every split keeps a patient's slices together.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy import optimize

from ctriage.datasets import LabelledSlice
from ctriage.evaluate.identification import SliceSegmenter, slice_masks
from ctriage.evaluate.metrics import operating_point, roc_summary
from ctriage.identify import lesion_features, model_inputs

INPUT_NAMES = [
    "log_lesion_ratio",
    "log_min_lung_ratio",
    "bilateral",
    "ggo_share",
    "peripheral_share",
    "posterior_share",
]
BASELINE_INPUT = ["log_lesion_ratio"]
L2_PENALTY = 1.0  # on standardised weights, summed log-loss scale
MIN_SENSITIVITY = 0.9
N_FOLDS = 5
BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class FeatureTable:
    """Per-slice features (dicts from :func:`lesion_features`) with label, patient id and origin."""

    features: list[dict[str, float]]
    labels: np.ndarray
    patients: np.ndarray
    origins: np.ndarray
    splits: np.ndarray

    def matrix(self, input_names: list[str]) -> np.ndarray:
        """(N, F) model inputs in ``input_names`` order."""
        return np.stack([model_inputs(f, input_names) for f in self.features]).astype(np.float64)


def origin(item: LabelledSlice) -> str:
    """Finer source of a slice: UCSD non-COVID patients are 'crawled' papers or 'medpix' cases."""
    if item.source == "ucsd_covid_ct" and item.label == 0:
        return "ucsd_noncovid_medpix" if "medpix" in item.patient_id else "ucsd_noncovid_crawled"
    return item.source or "unknown"


def unseen_by_lesion_model(items: list[LabelledSlice], lesion_card: dict) -> list[LabelledSlice]:
    """The slices whose scans the lesion model never saw: a lesion model trained on LUNA16 slices as
    negatives (its card's ``data.real_ct.luna16_held_out_scans``) would flatter identification on them, so only
    the LUNA16 scans it held out stay; other sources pass."""
    real_ct = (lesion_card.get("data") or {}).get("real_ct") or {}
    if "luna16_held_out_scans" not in real_ct:
        return items
    from ctriage.train.real_ct import LUNA_SOURCE

    held_out = set(real_ct["luna16_held_out_scans"])
    return [i for i in items if i.source != LUNA_SOURCE or i.patient_id in held_out]


def extract_features(items: list[LabelledSlice], segmenter: SliceSegmenter) -> FeatureTable:
    """Lesion features of every slice (lung mask from :func:`lung_mask_2d`, spacing taken as 1 mm: ratios only)."""
    features = []
    for item in items:
        lesion, left, right = slice_masks(item.path, segmenter)
        features.append(lesion_features(lesion, left, right, (1.0, 1.0)))
    return FeatureTable(
        features=features,
        labels=np.array([i.label for i in items], int),
        patients=np.array([i.patient_id for i in items]),
        origins=np.array([origin(i) for i in items]),
        splits=np.array([i.split for i in items]),
    )


def save_table(table: FeatureTable, path: Path) -> None:
    """Write the feature table as JSON lines (one slice per line)."""
    with Path(path).open("w") as handle:
        for features, label, patient, source, split in zip(
            table.features, table.labels, table.patients, table.origins, table.splits, strict=True
        ):
            row = {"features": features, "label": int(label), "patient": patient, "origin": source, "split": split}
            handle.write(json.dumps(row) + "\n")


def load_table(path: Path) -> FeatureTable:
    """Read a table written by :func:`save_table`."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    return FeatureTable(
        features=[r["features"] for r in rows],
        labels=np.array([r["label"] for r in rows], int),
        patients=np.array([r["patient"] for r in rows]),
        origins=np.array([r["origin"] for r in rows]),
        splits=np.array([r["split"] for r in rows]),
    )


@dataclass(frozen=True)
class Logistic:
    """Logistic model on raw inputs: p = sigmoid(inputs @ weights + bias)."""

    weights: np.ndarray
    bias: float

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(inputs @ self.weights + self.bias)))


def fit_logistic(inputs: np.ndarray, labels: np.ndarray, l2: float = L2_PENALTY) -> Logistic:
    """L2-penalised, class-balanced logistic regression (L-BFGS) on standardised inputs, folded back to raw."""
    mean, std = inputs.mean(axis=0), inputs.std(axis=0)
    std[std == 0] = 1.0
    z = (inputs - mean) / std
    y = labels.astype(float)
    weight = np.where(y == 1, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9))

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        logits = z @ params[:-1] + params[-1]
        p = 1.0 / (1.0 + np.exp(-logits))
        nll = np.sum(weight * (np.logaddexp(0.0, logits) - y * logits))
        residual = weight * (p - y)
        grad = np.concatenate([z.T @ residual + 2 * l2 * params[:-1], [residual.sum()]])
        return nll + l2 * float(params[:-1] @ params[:-1]), grad

    result = optimize.minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B")
    weights = result.x[:-1] / std
    return Logistic(weights=weights, bias=float(result.x[-1] - weights @ mean))


def patient_folds(patients: np.ndarray, labels: np.ndarray, n_folds: int = N_FOLDS, seed: int = 0) -> np.ndarray:
    """Fold index per row; patients are shuffled within each class and dealt round-robin (stratified)."""
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for label in (1, 0):
        names = np.unique(patients[labels == label])
        for position, name in enumerate(rng.permutation(names)):
            fold_of.setdefault(str(name), position % n_folds)
    return np.array([fold_of[str(p)] for p in patients])


def out_of_fold(table: FeatureTable, input_names: list[str], train_mask: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold probabilities from patient-grouped folds; rows outside ``train_mask`` are never trained on."""
    inputs = table.matrix(input_names)
    folds = patient_folds(table.patients, table.labels)
    usable = np.ones(len(folds), bool) if train_mask is None else train_mask
    scores = np.zeros(len(folds))
    for fold in range(N_FOLDS):
        train = usable & (folds != fold)
        model = fit_logistic(inputs[train], table.labels[train])
        scores[folds == fold] = model.predict(inputs[folds == fold])
    return scores


def per_origin_report(table: FeatureTable, scores: np.ndarray, threshold: float) -> dict[str, dict[str, object]]:
    """Each negative origin against all COVID slices, plus all slices and the UCSD-only (paper crops) subset."""
    covid = table.labels == 1
    report = {"all": roc_summary(table.labels, scores, threshold, table.patients, n_resamples=BOOTSTRAP_RESAMPLES)}
    for name in sorted(set(table.origins[~covid])):
        rows = covid | (table.origins == name)
        report[f"covid_vs_{name}"] = roc_summary(
            table.labels[rows], scores[rows], threshold, table.patients[rows], n_resamples=BOOTSTRAP_RESAMPLES
        )
    ucsd = np.isin(table.origins, ["ucsd_covid_ct", "ucsd_noncovid_crawled", "ucsd_noncovid_medpix"])
    report["ucsd_only"] = roc_summary(
        table.labels[ucsd], scores[ucsd], threshold, table.patients[ucsd], n_resamples=BOOTSTRAP_RESAMPLES
    )
    return report


def leave_one_origin_out(table: FeatureTable, input_names: list[str]) -> dict[str, dict[str, object]]:
    """For each negative origin: train without it (patient folds), score it and held-out COVID folds.

    The threshold is the operating point of the out-of-fold scores of the training origins only.
    """
    report = {}
    covid = table.labels == 1
    for name in sorted(set(table.origins[~covid])):
        held = table.origins == name
        scores = out_of_fold(table, input_names, train_mask=~held)
        threshold = operating_point(table.labels[~held], scores[~held], MIN_SENSITIVITY)
        rows = covid | held
        rates = roc_summary(
            table.labels[rows], scores[rows], threshold, table.patients[rows], n_resamples=BOOTSTRAP_RESAMPLES
        )
        report[name] = {**rates, "threshold": threshold}
    return report


def official_split(table: FeatureTable, input_names: list[str]) -> dict[str, object]:
    """Fit on UCSD train + val (and all LUNA16 slices), test on UCSD's patient-level test split.

    The threshold is the operating point of out-of-fold scores on the training rows.
    """
    test = table.splits == "test"
    inputs = table.matrix(input_names)
    model = fit_logistic(inputs[~test], table.labels[~test])
    train_scores = out_of_fold(table, input_names, train_mask=~test)
    threshold = operating_point(table.labels[~test], train_scores[~test], MIN_SENSITIVITY)
    scores = model.predict(inputs[test])
    rates = roc_summary(table.labels[test], scores, threshold, table.patients[test], n_resamples=BOOTSTRAP_RESAMPLES)
    return {**rates, "threshold": threshold}


def validate(table: FeatureTable, input_names: list[str]) -> dict[str, object]:
    """Cross-validated scores, the operating point on them and the per-origin and leave-one-out reports."""
    scores = out_of_fold(table, input_names)
    threshold = operating_point(table.labels, scores, MIN_SENSITIVITY)
    return {
        "inputs": input_names,
        "cross_validated_threshold": threshold,
        "cross_validation": per_origin_report(table, scores, threshold),
        "leave_one_source_out": leave_one_origin_out(table, input_names),
        "ucsd_official_test_split": official_split(table, input_names),
    }


def mean_loso_auc(validation: dict[str, object]) -> float:
    """Mean ROC AUC over the leave-one-source-out folds of a :func:`validate` result."""
    return float(np.mean([fold["auc"] for fold in validation["leave_one_source_out"].values()]))


def export_logistic(model: Logistic, path: Path) -> Path:
    """Write ``model`` as ONNX: nn.Linear(F, 1) + Sigmoid, input "features" (N, F), output "probability" (N, 1)."""
    import torch

    from ctriage.train.export import export_onnx

    linear = torch.nn.Linear(len(model.weights), 1)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(model.weights, dtype=torch.float32)[None])
        linear.bias.fill_(model.bias)
    net = torch.nn.Sequential(linear, torch.nn.Sigmoid())
    return export_onnx(net, path, torch.zeros(1, len(model.weights)), "features", "probability")


def train(
    items: list[LabelledSlice],
    segmenter: SliceSegmenter,
    lesion_model_version: str,
    out_onnx: Path,
    out_card: Path,
    table_cache: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Features (cached in ``table_cache`` when given), validation of all features and of the lesion ratio
    alone, the better one across sources fitted on all slices at its cross-validated operating point, ONNX +
    card. Returns the card."""
    if table_cache is not None and Path(table_cache).is_file():
        table = load_table(table_cache)
    else:
        table = extract_features(items, segmenter)
        if table_cache is not None:
            save_table(table, table_cache)
    log(f"features of {len(table.labels)} slices ({int(table.labels.sum())} COVID-19)")
    full, baseline = validate(table, INPUT_NAMES), validate(table, BASELINE_INPUT)
    chosen = full if mean_loso_auc(full) > mean_loso_auc(baseline) else baseline
    inputs = list(chosen["inputs"])
    log(f"leave-one-source-out mean AUC: all features {mean_loso_auc(full):.3f}, lesion ratio only "
        f"{mean_loso_auc(baseline):.3f}; exporting {inputs}")
    model = fit_logistic(table.matrix(inputs), table.labels)
    export_logistic(model, out_onnx)
    card = {
        "name": "identification",
        "version": f"identification-{datetime.now(UTC):%Y%m%d}-on-{lesion_model_version}",
        "task": "COVID-19 vs non-COVID from lesion-mask features (logistic regression)",
        "inputs": {"features": inputs},
        "outputs": {"probability": "COVID-19 probability in [0, 1]"},
        "lesion_model_version": lesion_model_version,
        "weights": {"coefficients": dict(zip(inputs, model.weights.tolist(), strict=True)),
                    "intercept": model.bias},
        "selection": "the input set with the higher mean leave-one-source-out AUC (all features vs lesion ratio)",
        "operating_point": {
            "threshold": chosen["cross_validated_threshold"],
            "rule": f"max specificity with sensitivity >= {MIN_SENSITIVITY} on patient-grouped "
                    f"{N_FOLDS}-fold out-of-fold probabilities",
        },
        "validation": chosen,
        "validation_all_features": full,
        "validation_lesion_ratio_only": baseline,
        "aggregation": "study probability = the model on the lesion features of the whole study "
                       "(all slices as one volume, ctriage.identify)",
        "training_data": f"shared/data/identification_slices (UCSD COVID-CT + LUNA16 slices), all splits, "
                         f"{len(items)} slices: LUNA16 scans the lesion model trained on are left out",
        "training": {"command": "ctriage train identification", "date": f"{datetime.now(UTC):%Y-%m-%d}",
                     "fit": f"class-balanced logistic regression, L2 {L2_PENALTY} on standardised inputs",
                     "folds": f"{N_FOLDS} patient-grouped, stratified by class",
                     "auc_ci95": f"percentile bootstrap over patients, {BOOTSTRAP_RESAMPLES} resamples"},
        "limitations": "separates lesion from no lesion; COVID-19 vs other lung disease (UCSD non-COVID paper "
                       "figures) is near chance; trained on 2D figure crops and 224 px LUNA16 slices, not studies",
    }
    from ctriage.train.export import write_card

    write_card(card, Path(out_card))
    return card
