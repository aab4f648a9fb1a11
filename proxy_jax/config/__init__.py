"""The config boundary: fields, files, defaults, checks."""
