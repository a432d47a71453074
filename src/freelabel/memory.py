"""A first-in-first-out queue of embeddings from past batches (MoCo's negatives)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dist import gather_detached


class Queue(nn.Module):
    """``size`` embeddings of dimension ``dim``, oldest overwritten first; starts random (as MoCo).

    :meth:`enqueue` adds the keys of every process, in rank order, so that all processes hold the
    same queue as one process with the global batch would.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = keys.detach().to(self.keys.dtype)
        keys = gather_detached(keys)
        size, n = len(self.keys), len(keys)
        if n > size:
            keys, n = keys[-size:], size
        index = (self.ptr + torch.arange(n, device=keys.device)) % size
        self.keys[index] = keys
        self.ptr.copy_((self.ptr + n) % size)
