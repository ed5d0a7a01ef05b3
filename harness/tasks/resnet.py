"""CIFAR ResNets (He et al. 2016, section 4.2): ResNet-20 by default.

``depth = 6k + 2``: a 3x3 convolution with ``width`` channels, three stages of ``k`` basic
blocks (``width``, ``2 width``, ``4 width`` channels; stride 2 at the start of stages 2 and
3), global average pooling and a linear classifier. Shortcuts are the paper's option A
(identity; when the shape changes, subsample by 2 and zero-pad the channels), so the
shortcut has no parameters: ResNet-20 with ``width=16`` has 269,722 weights (the paper's 0.27M).
``norm``: ``batch`` (BatchNorm, per-worker running statistics) or ``group`` (GroupNorm with
``groups`` groups, no buffers; the usual choice for non-i.i.d. federated training, Hsieh
et al. 2020). Convolutions use Kaiming-normal initialisation.

The forward addresses dimensions from the end only, so a leading worker axis passes
through: ``stackable = True`` lets :mod:`harness.tasks.batched` run ``m`` copies as
grouped convolutions.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def make_norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(min(groups, channels), channels)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, cout, groups)
        self.stride, self.pad = stride, cout - cin

    def shortcut(self, x):
        if self.stride != 1:
            x = x[..., ::self.stride, ::self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))  # channels = dim -3
        return x

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    stackable = True  # forward uses dimensions from the end only

    def __init__(self, depth: int = 20, width: int = 16, classes: int = 10, norm: str = "batch", groups: int = 8):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"task.depth: a CIFAR ResNet has depth 6k+2 (20, 32, 44, 56, 110), got {depth}")
        k = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = make_norm(norm, width, groups)
        blocks, cin = [], width
        for stage, cout in enumerate([width, 2 * width, 4 * width]):
            for b in range(k):
                blocks.append(BasicBlock(cin, cout, 2 if (stage and b == 0) else 1, norm, groups))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.blocks(out)
        return self.fc(out.mean((-2, -1)))
