"""The learning-rate schedule: constant, then linear decay to zero (the reference's rule,
per iteration instead of per epoch)."""

from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR

from models.base import GANModel


class ConstantThenLinear:
    """LR factor for update `i` (0-based): 1 for the first `constant` updates, then
    linear decay reaching 0 after the last of `decay` updates. A class, not a lambda, so
    LambdaLR saves it."""

    def __init__(self, constant: int, decay: int) -> None:
        self.constant = constant
        self.decay = decay

    def __call__(self, i: int) -> float:
        return max(0.0, 1.0 - max(0, i - self.constant + 1) / (self.decay + 1))


def make_schedulers(model: GANModel, constant: int, decay: int) -> dict[str, LambdaLR]:
    return {name: LambdaLR(opt, ConstantThenLinear(constant, decay))
            for name, opt in model.optimizers.items()}
