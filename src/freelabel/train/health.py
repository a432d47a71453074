"""Is the run learning, or collapsing? Two numbers of the backbone's embeddings of a fixed sample of
training images, taken at the online evaluation's cadence, need no labels:

    effective rank = exp(entropy of the normalised singular values)   # RankMe (Garrido et al. 2023): 1 when
                                                                      # every image maps to one direction
    spread         = mean over dimensions of the std of the L2-normalised embeddings, times sqrt(D)
                                                                      # about 1 when they spread out, 0 when
                                                                      # they all map to one point

and the method's own signs (``Method.health_scalars``: a DINO teacher's entropy and its centre's drift).
A run with a sign at or under its limit in :data:`COLLAPSED` gets one warning line naming the likely cause
and the settings that usually fix it (``Method.collapse_advice``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

COLLAPSED = {  # at or under any: collapsed
    "effective_rank": 1.2,
    "spread": 0.01,
    "prototype_spread": 0.05,  # a DINO teacher that sends every image to one prototype (losses.distillation_signs)
}


def embedding_health(x: torch.Tensor) -> dict[str, float]:
    """Effective rank and spread of embeddings ``x [N, D]`` (see the module)."""
    x = x.float()
    s = torch.linalg.svdvals(x)
    p = s / s.sum() + 1e-7
    rank = float(torch.exp(-(p * p.log()).sum())) if s.sum() > 1e-6 * len(x) else 0.0  # all zero: none
    spread = float(F.normalize(x, dim=1).std(0).mean() * math.sqrt(x.shape[1]))
    return {"effective_rank": rank, "spread": spread, "rank_of": min(x.shape)}


def collapsed(health: dict[str, float]) -> bool:
    return any(k in health and health[k] <= limit for k, limit in COLLAPSED.items())


def warning(health: dict[str, float], step: int, advice: str) -> str:
    """The one line a collapsing run gets."""
    used = health.get("prototype_spread", 1.0)
    one = (
        f"; its teacher sends every image to one prototype (spread {used:.3f})"
        if used <= COLLAPSED["prototype_spread"]
        else ""
    )
    return (
        f"the run is collapsing at step {step}: its embeddings have effective rank {health['effective_rank']:.2f} "
        f"of {health['rank_of']} and spread {health['spread']:.3f} (about 1 when images spread out, 0 when they all "
        f"map to one point){one}; {advice}"
    )
