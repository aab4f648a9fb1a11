"""Library: pretrained weights: files, conversion onto the models."""
