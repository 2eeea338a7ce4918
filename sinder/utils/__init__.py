"""Helpers every layer uses: atomic writes, devices, image files, synthetic images."""
