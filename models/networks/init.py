"""Weight initialisation (normal | xavier | kaiming | orthogonal), as the references do:
conv / transposed conv / linear weights from the chosen scheme with `gain`, their
biases zero; batch-norm scales from N(1, gain) and shifts zero."""

from __future__ import annotations

from typing import Literal

from torch import nn

InitKind = Literal["normal", "xavier", "kaiming", "orthogonal"]
_WEIGHTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def init_weights(net: nn.Module, kind: InitKind = "normal", gain: float = 0.02) -> nn.Module:
    for m in net.modules():
        if isinstance(m, _WEIGHTED):
            if kind == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif kind == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif kind == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif kind == "orthogonal":
                nn.init.orthogonal_(m.weight, gain=gain)
            else:
                raise ValueError(f"unknown init_type '{kind}' (known: normal, xavier, kaiming, orthogonal)")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net
