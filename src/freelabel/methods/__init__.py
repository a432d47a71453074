"""The method registry: a name for each method file."""

from .barlow_twins import BarlowTwins
from .base import Method
from .byol import BYOL
from .clip import CLIP, SigLIP
from .colorization import Colorization
from .dino import DINO
from .dinov2 import DINOv2
from .ijepa import IJEPA
from .jigsaw import Jigsaw
from .mae import MAE
from .moco import MoCoV2, MoCoV3
from .rotation import Rotation
from .simclr import SimCLR
from .vicreg import VICReg

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "mocov2": MoCoV2,
    "mocov3": MoCoV3,
    "byol": BYOL,
    "dino": DINO,
    "dinov2": DINOv2,
    "barlowtwins": BarlowTwins,
    "vicreg": VICReg,
    "rotation": Rotation,
    "jigsaw": Jigsaw,
    "colorization": Colorization,
    "clip": CLIP,
    "siglip": SigLIP,
    "mae": MAE,
    "ijepa": IJEPA,
}
DESCRIPTIONS = {
    "simclr": "contrastive: two views of an image find each other among the batch (NT-Xent) [Chen et al. 2020]",
    "mocov2": "contrastive: query vs momentum key, negatives from a queue [Chen et al. 2020]",
    "mocov3": "contrastive: momentum encoder, predictor, in-batch negatives, for ViTs [Chen, Xie & He 2021]",
    "byol": "self-distillation: predict an EMA target's embedding of the other view [Grill et al. 2020]",
    "dino": "self-distillation: multi-crop student matches a centred EMA teacher [Caron et al. 2021]",
    "dinov2": "DINO + iBOT masked patches + KoLeo, Sinkhorn option; Gram anchoring (DINOv3) [Oquab et al. 2023]",
    "barlowtwins": "redundancy reduction: cross-correlation of two views -> identity [Zbontar et al. 2021]",
    "vicreg": "variance-invariance-covariance regularisation [Bardes, Ponce & LeCun 2022]",
    "rotation": "pretext: which of 4 rotations was applied (RotNet) [Gidaris, Singh & Komodakis 2018]",
    "jigsaw": "pretext: which permutation shuffled 3x3 tiles (max-Hamming set) [Noroozi & Favaro 2016]",
    "colorization": "pretext: colour (ab bins, rebalanced) from lightness; colour data [Zhang, Isola & Efros 2016]",
    "clip": "language-image: match images to their captions, symmetric InfoNCE [Radford et al. 2021]; LiT: a locked tower",
    "siglip": "language-image: a sigmoid per image-caption pair, learnable bias [Zhai et al. 2023]",
    "mae": "masked image modelling: pixels of 75% hidden patches from the rest (ViT) [He et al. 2022]",
    "ijepa": "joint embedding: predict an EMA target's features of hidden blocks from a context block [Assran 2023]",
}

__all__ = ["METHODS", "DESCRIPTIONS", "Method"]
