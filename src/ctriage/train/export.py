"""Export trained networks to ONNX and write model cards (lesions: input "image" (N, C, H, W), output
"logits" (N, 3, H, W); identification: input "features" (N, F), output "probability" (N, 1))."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

ONNX_OPSET = 17


def export_onnx(
    net: nn.Module, onnx_path: Path, example: torch.Tensor, input_name: str = "image", output_name: str = "logits"
) -> Path:
    """Write ``net`` in eval mode as ONNX, traced on ``example``, with a dynamic batch (first) axis; returns
    ``onnx_path`` (its folder is created)."""
    net.eval()
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        net, (example,), str(onnx_path), input_names=[input_name], output_names=[output_name],
        dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}}, opset_version=ONNX_OPSET, dynamo=False,
    )
    return onnx_path


def image_example(input_size: int, in_channels: int = 1) -> torch.Tensor:
    """A zero (1, C, H, W) image batch to trace a segmentation network with."""
    return torch.zeros(1, in_channels, input_size, input_size)


def write_card(card: dict[str, Any], card_path: Path) -> Path:
    """Write the model card as indented JSON; returns ``card_path``."""
    card_path.parent.mkdir(parents=True, exist_ok=True)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card_path
