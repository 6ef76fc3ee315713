"""Training loop for the lesion networks: augmentation, losses, two stages, validation Dice.

Stage 1 (pre-training, binary): pseudo-label + ACL slices (+ the MedSeg training slices as lesion vs not, and
the real-CT slices of :mod:`ctriage.train.real_ct` when given); the lesion logit is
logsumexp(GGO, consolidation) - background, i.e. P(lesion) = P(GGO) + P(consolidation).
Stage 2 (fine-tuning, three classes): the MedSeg training slices with MONAI DiceCELoss, mixed with the real-CT
slices (lesion-free crops and synthetic lesions, ``real_share`` of each batch on average) when given.
The MedSeg validation slices are never trained on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from monai.losses import DiceCELoss
from torch import nn

from ctriage.evaluate.segmentation import score_image
from ctriage.labels import LesionLabel
from ctriage.train.data import SliceSet
from ctriage.train.nets import MultitaskUNet, SpaceToDepthSegmenter

CLASS_HEAD_WEIGHT = 0.2


@dataclass(frozen=True)
class TrainConfig:
    """Schedule and optimiser settings; steps are optimiser steps of ``batch_size`` slices."""

    pretrain_steps: int = 300
    finetune_steps: int = 300
    batch_size: int = 12
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    eval_every: int = 100
    lesion_class_weight: float = 1.0  # weight of GGO and consolidation (vs background 1) in CE, Dice and BCE
    real_share: float = 0.5  # share of real-CT slices (negatives + synthetic lesions) in fine-tuning batches


@dataclass
class TrainLog:
    """Validation history: (stage, step, seconds since start, {metric: value}) rows."""

    rows: list[tuple[str, int, float, dict[str, float]]] = field(default_factory=list)


def augment(
    images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, rotation (+-20 deg), scale (0.8-1.25), shift and intensity changes of a batch.

    ``images`` float (N, 1, H, W) in [0, 1]; ``labels`` long (N, H, W). Geometry is applied with one affine
    grid per slice (bilinear for the image, nearest for labels); intensity gets contrast, brightness, gamma and
    Gaussian noise, so that slices windowed a little differently (other scanners, calibration) still fit.
    """
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-math.pi / 9, math.pi / 9)
    scale = torch.exp(uniform(math.log(0.8), math.log(1.25)))
    flip_x = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) / scale * flip_x
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale
    theta[:, 1, 1] = torch.cos(angle) / scale * flip_y
    theta[:, :, 2] = 0.08 * (2 * torch.rand(n, 2, generator=generator) - 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)[:, 0].long()
    contrast = uniform(0.75, 1.3).view(n, 1, 1, 1)
    brightness = uniform(-0.1, 0.1).view(n, 1, 1, 1)
    gamma = torch.exp(uniform(math.log(0.7), math.log(1.4))).view(n, 1, 1, 1)
    images = ((images - 0.5) * contrast + 0.5 + brightness).clamp(0, 1) ** gamma
    noise = 0.03 * torch.rand(n, 1, 1, 1, generator=generator)
    images = images + noise * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1), labels


def lesion_logit(logits: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) class logits -> (N, H, W) logit of P(GGO) + P(consolidation)."""
    return torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]


def binary_loss(logits: torch.Tensor, labels: torch.Tensor, lesion_weight: float = 1.0) -> torch.Tensor:
    """BCE (lesion pixels weighted ``lesion_weight``) + batch soft Dice on the lesion probability;
    ``labels`` (N, H, W) in {0, 1}."""
    z = lesion_logit(logits)
    target = labels.float()
    prob = torch.sigmoid(z)
    soft_dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(z, target, pos_weight=torch.tensor(lesion_weight)) + soft_dice


def batch_of(data: SliceSet, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices ``index`` of ``data`` as float (N, 1, H, W) in [0, 1] and long (N, H, W) labels."""
    images = torch.from_numpy(data.images[index].astype(np.float32) / 255.0)[:, None]
    return images, torch.from_numpy(data.labels[index].astype(np.int64))


def concatenate(sets: list[SliceSet]) -> SliceSet:
    """One slice set of several (same grid)."""
    return SliceSet(np.concatenate([s.images for s in sets]), np.concatenate([s.labels for s in sets]),
                    [n for s in sets for n in s.names])


def mixture_probabilities(sizes: list[int], shares: list[float]) -> np.ndarray:
    """Per-slice sampling probabilities over concatenated sets of ``sizes`` slices so that set i makes up
    ``shares[i]`` of the draws (uniform inside a set; empty sets are skipped and the shares renormalised)."""
    parts = [np.full(n, share / n) for n, share in zip(sizes, shares, strict=True) if n > 0]
    probabilities = np.concatenate(parts)
    return probabilities / probabilities.sum()


def subset(data: SliceSet, names: list[str], keep: bool) -> SliceSet:
    """The slices of ``data`` whose name is in ``names`` (``keep``) or not in it."""
    chosen = np.array([(n in names) == keep for n in data.names])
    return SliceSet(data.images[chosen], data.labels[chosen], [n for n, c in zip(data.names, chosen, strict=True) if c])


@torch.no_grad()
def predict(net: nn.Module, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Class probabilities float32 (N, 3, H, W) for uint8 (N, H, W) slices."""
    net.eval()
    out = [torch.softmax(net(torch.from_numpy(images[i:i + batch_size].astype(np.float32) / 255.0)[:, None]), 1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


@torch.no_grad()
def recalibrate_batch_norm(net: nn.Module, images: np.ndarray, batch_size: int = 8) -> None:
    """Re-estimate batch-norm running statistics as a plain average over un-augmented uint8 ``images`` (N, H, W).

    With few small batches and a fast-moving optimiser the exponential running averages lag behind the
    weights, and eval-mode predictions collapse; a pass over the stage's own slices fixes that. The slices go in
    a fixed shuffled order: batches of one source each (MedSeg, then real CTs) would miss the variance between
    sources, and eval-mode activations would be scaled up until the outputs saturate.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    net.train()
    images = images[np.random.default_rng(0).permutation(len(images))]
    for start in range(0, len(images), batch_size):
        net(torch.from_numpy(images[start:start + batch_size].astype(np.float32) / 255.0)[:, None])
    for norm in norms:
        norm.momentum = 0.1
    net.eval()


def validation_dice(net: nn.Module, val: SliceSet) -> dict[str, float]:
    """Mean per-slice Dice on the model grid: binary lesion, GGO and consolidation."""
    classes = predict(net, val.images).argmax(1)
    per_slice = [score_image(ref, True, pred) for pred, ref in zip(classes, val.labels, strict=True)]
    keys = ("dice_lesion", "dice_ggo", "dice_consolidation")
    return {key: float(np.mean([scores[key] for scores in per_slice])) for key in keys}


def run_stage(
    net: SpaceToDepthSegmenter,
    data: SliceSet,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    config: TrainConfig,
    evaluate: Callable[[str, int], None],
    stage: str,
    calibration_images: np.ndarray,
    probabilities: np.ndarray | None = None,
) -> None:
    """``steps`` AdamW steps on augmented random batches of ``data`` (slices drawn with ``probabilities``,
    default uniform) with a cosine learning-rate decay; before each evaluation the batch-norm statistics are
    re-estimated on ``calibration_images``."""
    if steps <= 0:
        return
    generator = torch.Generator().manual_seed(config.seed + len(stage))
    rng = np.random.default_rng(config.seed + len(stage))
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    head = net.body if isinstance(net.body, MultitaskUNet) else None
    for step in range(1, steps + 1):
        net.train()
        index = rng.choice(len(data.images), config.batch_size, p=probabilities)
        images, labels = augment(*batch_of(data, index), generator)
        logits = net(images)
        loss = loss_fn(logits, labels)
        if head is not None and stage == "finetune":
            has_consolidation = (labels == LesionLabel.CONSOLIDATION).flatten(1).any(1).float()
            loss = loss + CLASS_HEAD_WEIGHT * F.binary_cross_entropy_with_logits(head.last_class_logit,
                                                                                 has_consolidation)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % config.eval_every == 0 or step == steps:
            recalibrate_batch_norm(net, calibration_images)
            evaluate(stage, step)


def train_lesion_net(
    net: SpaceToDepthSegmenter, train: SliceSet, val: SliceSet, binary: SliceSet, config: TrainConfig,
    log: Callable[[str], None] = print, real: list[SliceSet] | None = None, checkpoint_file: Path | None = None,
) -> TrainLog:
    """Pre-train on binary slices (``binary`` + ``train`` as lesion vs not), fine-tune on ``train`` (3 classes).

    ``real`` (three-class real-CT slice sets: lesion-free crops, synthetic lesions) join both stages; in
    fine-tuning they are ``config.real_share`` of the draws, each set an equal part of that share.
    Validation Dice on ``val`` is logged every ``config.eval_every`` steps; the last weights (batch-norm
    statistics re-estimated on the training slices) are kept: no checkpoint picking on the validation set.
    With ``checkpoint_file`` the weights are saved there at each evaluation and at the end.
    """
    real = [s for s in (real or []) if len(s.names)]
    torch.manual_seed(config.seed)
    history = TrainLog()
    start = time.perf_counter()

    def evaluate(stage: str, step: int) -> None:
        scores = validation_dice(net, val)
        elapsed = time.perf_counter() - start
        history.rows.append((stage, step, elapsed, scores))
        log(f"{stage} step {step} {elapsed:.0f}s " + " ".join(f"{k}={v:.3f}" for k, v in scores.items()))
        if checkpoint_file is not None:
            checkpoint_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"stage": stage, "step": step, "net": net.state_dict()}, checkpoint_file)

    as_binary = [SliceSet(s.images, (s.labels > 0).astype(np.uint8), s.names) for s in [train, *real]]
    pretrain = concatenate([binary, *as_binary])
    finetune = concatenate([train, *real])
    share = config.real_share if real else 0.0
    probabilities = mixture_probabilities([len(s.names) for s in [train, *real]],
                                          [1.0 - share] + [share / max(len(real), 1)] * len(real))
    calibration = np.concatenate([train.images, *(s.images[:: max(1, len(s.names) // 40)] for s in real)])
    weight = config.lesion_class_weight
    run_stage(net, pretrain, lambda logits, labels: binary_loss(logits, labels, weight), config.pretrain_steps,
              config, evaluate, "pretrain", calibration)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, weight=torch.tensor([1.0, weight, weight]))
    run_stage(net, finetune, lambda logits, labels: dice_ce(logits, labels[:, None]), config.finetune_steps, config,
              evaluate, "finetune", calibration, probabilities)
    if config.pretrain_steps + config.finetune_steps == 0:  # given weights only: statistics for these slices
        recalibrate_batch_norm(net, calibration)
        evaluate("given", 0)
    return history
