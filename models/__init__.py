"""Networks, losses, colour spaces and GAN variants, found by name in `models.registry`."""
