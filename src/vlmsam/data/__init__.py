"""Datasets: one loader per on-disk family, one prompt module, the collator and the mixture.

Every loader yields :class:`Sample` (image path, conversations, ``(N, H, W) uint8`` targets with 255
= ignore, source name). ``registry`` turns the names users type into loaders.
"""

from vlmsam.data.sample import IGNORE, BadSample, Sample

__all__ = ["IGNORE", "BadSample", "Sample"]
