"""Library: images as model inputs (preprocessing) and as pictures (grids)."""
