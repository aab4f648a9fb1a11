"""Augmentation library: label-preserving policies and erasing, mixing (see the family modules)."""
