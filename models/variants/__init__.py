"""GAN variants: one module each, registered with models.registry.register_model."""
