"""One way from "a model" to embeddings: :func:`load_encoder` takes whatever names a model (a freelabel run
directory, a local transformers folder, a Hugging Face hub name, or ``torchvision:NAME``), decides once
which it is, and returns an :class:`Encoder` that carries its own preprocessing, as open_clip ships the
transform with the model:

    enc = load_encoder("runs/simclr")                  # or "facebook/dinov2-small", "torchvision:mobilenet_v2"
    enc.encode_image(uint8_images)                     # [B, D], L2-normalised; any image size
    enc.encode_tokens(uint8_images)                    # [B, N, D] patch tokens
    enc.encode_text(["a cat"])                         # [T, D]: CLIP/SigLIP runs and models only

k-NN, zero-shot, retrieval, the search index and export all take their model from here.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import RunConfig
from .data.views import ViewConfig, normalise, resize
from .errors import PretrainedError, RunError
from .methods import build_method, load_backbone, method_class
from .run import CONFIG, latest_checkpoint, load_config, read_weights

TORCHVISION = "torchvision:"


def is_run(spec: str | Path) -> bool:
    """Whether ``spec`` is a freelabel run directory (it holds the run's ``config.yaml``)."""
    return (Path(spec).expanduser() / CONFIG).is_file()


def model_input(images: torch.Tensor, view: ViewConfig, in_chans: int) -> torch.Tensor:
    """``uint8 [B, C, H, W]`` of any size -> a model's input: the centre square, resized to ``view.size``
    (antialiased), normalised with ``view``'s mean and std, with ``in_chans`` channels (grey images are
    repeated into colour, colour images averaged into grey)."""
    h, w = images.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = resize(images[..., top : top + s, left : left + s], view.size)  # floats in [0, 1]
    if x.shape[1] != in_chans:
        x = x.expand(-1, in_chans, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
    return normalise(x, view)


class Encoder:
    """A model's image tower (and text tower where it has one) with the preprocessing it expects.

    ``view`` is the input the backbone takes (size, mean and std: the evaluation view, with no random
    augmentation); ``in_chans`` its channels. ``backbone`` is the image backbone (``forward`` pooled
    features, ``forward_tokens`` patch tokens);
    ``project`` maps its pooled features into an image-text space (a CLIP run's projection) where
    there is one; ``text`` encodes strings into that space. ``run_dir`` and ``config`` are set for a
    freelabel run; ``trained`` is false for a run's architecture at its random initialisation.
    """

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        view: ViewConfig,
        in_chans: int = 3,
        project: nn.Module | None = None,
        text: Callable[[Sequence[str]], torch.Tensor] | None = None,
        run_dir: Path | None = None,
        config: RunConfig | None = None,
        trained: bool = True,
    ):
        self.name, self.backbone, self.view, self.in_chans = name, backbone, view, in_chans
        self.project, self.text, self.run_dir, self.config, self.trained = project, text, run_dir, config, trained

    @classmethod
    def of_image_text(
        cls,
        method: nn.Module,
        view: ViewConfig,
        in_chans: int,
        name: str = "clip",
        run_dir: Path | None = None,
        config: RunConfig | None = None,
        trained: bool = True,
    ) -> Encoder:
        """A clip/siglip method's image tower with its projection into the shared space, and its text tower."""
        project, text = method.image_proj, method.encode_text
        return cls(name, method.backbone, view, in_chans, project, text, run_dir, config, trained)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def embed_dim(self) -> int:
        return self.project.out_features if self.project is not None else self.backbone.embed_dim

    @property
    def has_text(self) -> bool:
        return self.text is not None

    @property
    def decode_size(self) -> int | None:
        """The size a run's data is decoded at, as in training; None for a pretrained model (the data's own)."""
        cfg = self.config
        return (cfg.data.image_size or cfg.views.size) if cfg is not None else None

    @property
    def default_data(self) -> str:
        """The data a run is scored on unless told otherwise: its own; fashion-mnist for a pretrained model."""
        return self.config.data.name if self.config is not None else "fashion-mnist"

    def at(self, view: ViewConfig) -> Encoder:
        """The same model (its weights shared) fed ``view`` instead."""
        other = copy.copy(self)
        other.view = view
        other.__dict__.pop("fingerprint", None)
        return other

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, C, H, W]`` (any size, grey or colour) -> the backbone's input on its device."""
        x = model_input(images.to(self.device), self.view, self.in_chans)
        return x.to(self.dtype).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features ``[B, D_backbone]`` (float32, not normalised, before any
        projection into an image-text space): what k-NN and the linear probe score."""
        return self.backbone(self.preprocess(images)).float()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, D]`` (in the image-text space where there is one), not normalised."""
        f = self.backbone(self.preprocess(images))
        return self.project(f.to(self.project.weight.dtype)) if self.project is not None else f

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, C, H, W]`` -> L2-normalised float32 embeddings ``[B, D]``."""
        return F.normalize(self.features(images).float(), dim=-1)

    @torch.no_grad()
    def encode_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, C, H, W]`` -> the backbone's patch tokens ``[B, N, D_backbone]`` (float32)."""
        return self.backbone.forward_tokens(self.preprocess(images)).float()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> L2-normalised float32 embeddings ``[T, D]`` in the image embeddings' space."""
        if self.text is None:
            raise PretrainedError(
                f"{self.name} has no text tower: use a CLIP or SigLIP model (or a clip/siglip run) for text "
                "queries, zero-shot classification and retrieval"
            )
        return F.normalize(self.text(list(texts)).float(), dim=-1)

    @cached_property
    def fingerprint(self) -> str:
        """A hash of everything that decides the embeddings: the weights (towers and projection) and the
        preprocessing. Equal fingerprints give equal embeddings."""
        h = hashlib.sha256(repr((self.view.size, self.view.mean, self.view.std, self.in_chans)).encode())
        modules = [m for m in (self.backbone, self.project) if m is not None]
        for i, module in enumerate(modules):
            for key, value in sorted(module.state_dict().items()):
                h.update(f"{i}.{key}{tuple(value.shape)}{value.dtype}".encode())
                h.update(value.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]


def load_encoder(
    spec: str | Path,
    *,
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    trained: bool = True,
) -> Encoder:
    """The encoder ``spec`` names: a freelabel run directory (its trained backbone; a clip/siglip run's
    image-text space and text tower), ``torchvision:NAME``, a local transformers folder or a hub name.

    ``weights``: a file of weights to use instead of the default ones (a torchvision state dict for
    ``torchvision:NAME``; a ``.safetensors`` file or checkpoint folder for a run). ``trained=False``: a
    run's architecture with its seeded random initialisation (a baseline). ``device``: default the GPU if
    any; ``dtype``: default float32 for runs, bf16 on a bf16 GPU for pretrained models.
    """
    from .pretrained.hub import resolve_device_dtype

    if is_run(spec):
        return _run_encoder(Path(spec).expanduser(), weights, trained, *resolve_device_dtype(device, dtype or "fp32"))
    folder = Path(spec).expanduser()
    if not folder.exists() and str(spec).startswith((".", "/", "~")):
        raise PretrainedError(f"no such run directory or model folder: {spec}")
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise PretrainedError(
            f"{spec} is neither a freelabel run (no {CONFIG}) nor a transformers model folder (no config.json); "
            "give the --out of a pretrain run, a save_pretrained folder, a hub name or torchvision:NAME"
        )
    if weights is not None and not str(spec).startswith(TORCHVISION):
        raise PretrainedError(
            f"weights= takes a file for torchvision:NAME or a run directory; {spec} is a transformers model, "
            "whose weights are its folder"
        )
    if not trained:
        raise PretrainedError(f"{spec} is a pretrained model; a random-init baseline (trained=False) needs a run")
    from .pretrained import load

    model = load(str(spec), device=device, dtype=dtype, **({"weights": weights} if weights is not None else {}))
    if not hasattr(model, "forward_tokens"):
        raise PretrainedError(
            f"{spec} is not an image encoder (a detector or segmenter?); give a vision backbone (DINOv2, ViT, ...), "
            "an image-text model (CLIP, SigLIP) or torchvision:NAME"
        )
    return Encoder(str(spec), model, model.view, 3, text=getattr(model, "encode_text", None))


def _run_encoder(
    run: Path, weights: str | Path | None, trained: bool, device: torch.device, dtype: torch.dtype
) -> Encoder:
    cfg = load_config(run)
    in_chans = cfg.data.channels or 3
    if hasattr(method_class(cfg.method), "encode_text"):  # a clip/siglip run: its image-text space
        torch.manual_seed(cfg.seed)
        method = build_method(cfg, in_chans)
        if trained:
            ckpt = latest_checkpoint(run) if weights is None else Path(weights)
            if ckpt is None:
                raise RunError(f"{run} has no checkpoint yet; train it first")
            _load(method, read_weights(ckpt), ckpt, run)
        method.to(device, dtype).eval()
        return Encoder.of_image_text(method, cfg.views, in_chans, str(run), run, cfg, trained)
    backbone, cfg = load_backbone(run, trained=trained and weights is None)
    if trained and weights is not None:
        state = read_weights(Path(weights))
        if any(k.startswith("backbone.") for k in state):  # a whole method's checkpoint
            state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        _load(backbone, state, weights, run)
    return Encoder(str(run), backbone.to(device, dtype), cfg.views, in_chans, run_dir=run, config=cfg, trained=trained)


def _load(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path, run: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise RunError(f"the weights in {source} do not fit {run} ({str(e).strip().splitlines()[0]})") from None
