"""History of generated images for the discriminator (Shrivastava et al. 2017), as
CycleGAN uses it: until the pool is full every fake image is stored and returned;
after that, each image is, with probability 1/2, swapped for a random stored one.

Draws come from torch's random generator (seeded by the trainer); the state is
tensors only, so it goes into checkpoints through `GANModel.extra_state`.
"""

from __future__ import annotations

import torch


class ImagePool:
    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Images for the discriminator: a mix of `images` (detached) and stored ones."""
        images = images.detach()
        if self.size <= 0:
            return images
        out = []
        for image in images:
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(()).item() > 0.5:
                i = int(torch.randint(0, self.size, ()).item())
                out.append(self.images[i])
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state(self) -> dict[str, torch.Tensor]:
        if not self.images:
            return {"images": torch.empty(0)}
        return {"images": torch.stack(self.images).cpu()}

    def load_state(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        stored = state.get("images")
        self.images = [] if stored is None or stored.numel() == 0 else list(stored.to(device).unbind(0))
