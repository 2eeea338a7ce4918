"""A stand-in for an unsupervised task's cached token source, for tests of CAUSE's training stages."""

import torch


class TokenMaps:
    """Random token maps of a 16-item set (what CAUSE's stages read from a cached token source), labels 0..2."""

    cached = True

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.view = list(range(16))
        self.maps = torch.randn(16, 8, 4, 4, generator=g)
        self.labels = torch.randint(0, 3, (16, 8, 8), generator=g)

    def tokens_of(self, index, images=None):
        return self.maps[index]

    def labels_of(self, index):
        return self.labels[index]
