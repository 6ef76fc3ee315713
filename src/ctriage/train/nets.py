"""Lesion segmentation networks, selectable by name; all map (N, 1, H, W) in [0, 1] to (N, 3, H, W) logits.

CPU speed drives the design: every network runs its U-shaped body at 1/f resolution on a lossless
space-to-depth view of the input (PixelUnshuffle, f x f pixels -> f^2 channels) and turns f^2 x 3 output channels
back into full-resolution logits (PixelShuffle); f = ``space_to_depth`` (1, 2 or 4). Batch norm + ReLU fold into
the convolutions in ONNX Runtime; instance norm (MONAI's default for BasicUNet) normalises each slice's feature maps
on their own, which costs an extra pass per layer but does not depend on batch statistics.

* ``unet``      MONAI BasicUNet.
* ``unetpp``    MONAI BasicUNetPlusPlus (nested skip connections).
* ``multitask`` BasicUNet whose top decoder feature map also feeds a "slice has consolidation" classification
  head (all training slices carry some lesion, so presence of consolidation is the informative slice label;
  the head is used in training only, the exported graph returns the segmentation logits).
"""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNet, BasicUNetPlusPlus
from torch import nn

NUM_CLASSES = 3  # 0 background, 1 GGO, 2 consolidation
DEFAULT_FEATURES = (12, 24, 48, 96, 192, 12)
DEFAULT_SPACE_TO_DEPTH = 2
NET_NAMES = ("unet", "unetpp", "multitask")
NORMS = {"batch": "batch", "instance": ("instance", {"affine": True})}  # MONAI norm arguments by name


class SpaceToDepthSegmenter(nn.Module):
    """Wraps a 2D segmentation body so that it runs at 1/``factor`` resolution without discarding input pixels."""

    def __init__(self, body: nn.Module, factor: int = DEFAULT_SPACE_TO_DEPTH):
        super().__init__()
        self.down = nn.PixelUnshuffle(factor)
        self.body = body
        self.up = nn.PixelShuffle(factor)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) with H, W multiples of 16 x ``factor`` -> (N, 3, H, W) logits."""
        out = self.body(self.down(image))
        if isinstance(out, list | tuple):  # BasicUNetPlusPlus returns a list of deep-supervision heads
            out = out[0]
        return self.up(out)


class MultitaskUNet(BasicUNet):
    """BasicUNet with a classification head (global average pool + linear) on its top decoder feature map."""

    def __init__(self, in_channels: int, out_channels: int, features: tuple[int, ...], norm: str = "batch"):
        super().__init__(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=features,
                         norm=NORMS[norm], act="relu")
        self.classifier = nn.Linear(features[5], 1)
        self.last_class_logit: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits; the class logit (N,) of the same pass is kept in ``last_class_logit``."""
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        u3 = self.upcat_4(x4, x3)
        u2 = self.upcat_3(u3, x2)
        u1 = self.upcat_2(u2, x1)
        u0 = self.upcat_1(u1, x0)
        if self.training:
            self.last_class_logit = self.classifier(u0.mean(dim=(2, 3)))[:, 0]
        return self.final_conv(u0)


def build_net(
    name: str,
    features: tuple[int, ...] = DEFAULT_FEATURES,
    in_channels: int = 1,
    space_to_depth: int = DEFAULT_SPACE_TO_DEPTH,
    norm: str = "batch",
) -> SpaceToDepthSegmenter:
    """The network called ``name`` (one of :data:`NET_NAMES`) with MONAI feature widths ``features`` and
    normalisation ``norm`` (a key of :data:`NORMS`), its body running at 1/``space_to_depth`` of the input
    resolution."""
    if norm not in NORMS:
        raise ValueError(f"unknown normalisation {norm!r}; choose one of {', '.join(NORMS)}")
    body_in, body_out = space_to_depth**2 * in_channels, space_to_depth**2 * NUM_CLASSES
    if name == "unet":
        body: nn.Module = BasicUNet(2, body_in, body_out, features=features, norm=NORMS[norm], act="relu")
    elif name == "unetpp":
        body = BasicUNetPlusPlus(2, body_in, body_out, features=features, norm=NORMS[norm], act="relu")
    elif name == "multitask":
        body = MultitaskUNet(body_in, body_out, features, norm)
    else:
        raise ValueError(f"unknown lesion network {name!r}; choose one of {', '.join(NET_NAMES)}")
    return SpaceToDepthSegmenter(body, space_to_depth)


def load_weights(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's ``state`` into ``net``; batch-norm running statistics are skipped where ``net``
    normalises per instance (its convolution and affine weights still start from the checkpoint)."""
    own = net.state_dict()
    skipped = {k for k in state if k not in own and k.rsplit(".", 1)[-1] in ("running_mean", "running_var",
                                                                              "num_batches_tracked")}
    net.load_state_dict({k: v for k, v in state.items() if k not in skipped})
