"""Converters of other ViT families' checkpoints to our ViT's keys and architecture dict (one module per family)."""
