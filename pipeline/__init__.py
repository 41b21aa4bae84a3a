"""Luminescence stage code: harvest, align, train, evaluate, colourise."""
