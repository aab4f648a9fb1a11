"""Base layer: errors, atomic files and digests, the disk, the console, device plumbing."""
