"""Export a trained lesion network to ONNX (input "image" (N, C, H, W), output "logits" (N, 3, H, W))."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

ONNX_OPSET = 17


def export_onnx(net: nn.Module, onnx_path: Path, input_size: int, in_channels: int = 1) -> Path:
    """Write ``net`` in eval mode as ONNX with a dynamic batch axis; returns ``onnx_path``."""
    net.eval()
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, in_channels, input_size, input_size)
    torch.onnx.export(
        net, (example,), str(onnx_path), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET, dynamo=False,
    )
    return onnx_path


def write_card(card: dict[str, Any], card_path: Path) -> Path:
    """Write the model card as indented JSON; returns ``card_path``."""
    card_path.parent.mkdir(parents=True, exist_ok=True)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card_path
