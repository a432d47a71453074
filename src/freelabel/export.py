"""Export a run's backbone for use outside freelabel: Hugging Face transformers, timm, ONNX, or bare safetensors.

Every export is checked before it is kept: the folder is loaded back the way its README says
(``AutoModel.from_pretrained``, ``timm.create_model``, ``onnxruntime.InferenceSession``, ``methods.load_backbone``)
and must give the run's pooled features and patch tokens to 1e-4. It is written to a temporary folder and
renamed into place at the end, so a refused or failed export leaves nothing behind.

transformers classes, chosen by the ViT's architecture (the run's method only breaks ties):

- class token and registers -> ``Dinov2WithRegistersModel``;
- class token -> the method's own ``transformers_class`` where it has one and it fits (MAE: ``ViTMAEModel``,
  mask_ratio 0, for ViTs without layer scale or registers), else ``Dinov2Model`` (layer scale 1 where the ViT
  has none);
- no class token (mean-pooled) -> ``IJepaModel``.

The model's ``layernorm`` holds the ViT's final LayerNorm: timm's ``norm`` on every token, or its ``fc_norm`` on
the pooled mean (``global_pool: avg``); the folder's README says where the pooled features and patch tokens are.

timm: ViTs and timm models as timm's own models; freelabel's CNNs (``convnet``, the ResNets, with their method's
input wrapper) as the timm models ``freelabel_convnet`` / ``freelabel_resnet`` of :mod:`freelabel.timm_models`.

A grey run (1 channel) exports, in every format but safetensors, as a model that takes RGB and averages its
channels (:func:`~freelabel.timm_models.rgb_stem`): pipelines that convert every image to RGB give it the grey
image's features.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .backbones import TORCHVISION_RESNETS, VITS, ConvBackbone, TimmBackbone, vit_args
from .config import RunConfig
from .encoder import is_run, load_encoder
from .errors import RunError
from .files import atomic_folder
from .methods import load_backbone, method_class
from .run import BACKBONE, latest_checkpoint, save_backbone, save_config
from .timm_models import rgb_stem

FORMATS = ("transformers", "timm", "onnx", "safetensors")
TOLERANCE = 1e-4  # absolute, or relative to the largest feature where features exceed 1 (float32 rounding)


class ExportError(RunError):
    """A run that cannot be exported in the asked format; the message names the formats that work."""


@dataclass
class Features:
    """How to read freelabel's two outputs from an exported model's output ``out``: Python expressions."""

    pooled: str
    tokens: str
    hidden_states: bool  # call the model with output_hidden_states=True


def export_run(run: Path | str, fmt: str, out: Path | str | None = None, weights: Path | str | None = None) -> Path:
    """Export ``run``'s backbone (with ``weights``: those, see :func:`freelabel.encoder.load_encoder`) as ``fmt``
    (one of :data:`FORMATS`) to ``out`` (default ``RUN/export-FMT``)."""
    run = Path(run)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if not is_run(run):
        raise ExportError(f"{run} is not a freelabel run directory (no config.yaml); give the --out of a pretrain run")
    encoder = load_encoder(run, weights=weights, device="cpu")
    backbone, cfg = encoder.backbone, encoder.config
    refusals = {f: _refusal(f, backbone, cfg) for f in FORMATS}
    if refusals[fmt]:
        works = [f for f in FORMATS if not refusals[f]]
        raise ExportError(f"cannot export {run} as {fmt}: {refusals[fmt]}; formats that work: {', '.join(works)}")
    out = Path(out) if out else run / f"export-{fmt}"
    if out.exists() and not (out / "export.json").is_file():
        raise ExportError(f"{out} exists and is not a freelabel export; remove it or give another --out")
    with atomic_folder(out) as tmp:
        source = str(weights) if weights is not None else _weights_source(run)
        info = {
            "format": fmt,
            "run": str(run.resolve()),
            "weights": source,
            "method": cfg.method,
            "backbone": cfg.backbone.name,
            "backbone_args": cfg.backbone.args,
            "image_size": cfg.views.size,
            "in_chans": cfg.data.channels or 3,
            "mean": list(cfg.views.mean),
            "std": list(cfg.views.std),
            "folder": str(out.resolve()),
        }
        with _quiet(transformers=fmt == "transformers"):
            info.update(WRITERS[fmt](backbone, cfg, tmp, out.resolve()))
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(info))
    return out


@contextmanager
def _quiet(transformers: bool):
    """Without the INFO lines of timm and the progress bars of transformers while saving and loading."""
    timm_log = logging.getLogger("timm")
    level, bars = timm_log.level, False
    timm_log.setLevel(logging.WARNING)
    if transformers:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        timm_log.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def _weights_source(run: Path) -> str:
    if (run / BACKBONE).is_file():
        return BACKBONE
    return f"{latest_checkpoint(run).relative_to(run)} (the run had not finished)"


def _refusal(fmt: str, backbone: nn.Module, cfg: RunConfig) -> str:
    """Why ``backbone`` cannot be exported as ``fmt`` ('' if it can)."""
    if fmt in ("safetensors", "onnx"):
        return ""
    if fmt == "timm" and _freelabel_cnn(backbone, cfg):
        return ""
    if not isinstance(backbone, TimmBackbone):
        return f"the {cfg.method} run's {cfg.backbone.name} backbone ({type(backbone).__name__}) is not a timm model"
    if fmt == "timm":
        return ""
    try:
        _hf_class(backbone, cfg)
    except ExportError as e:
        return str(e)
    return ""


# --- transformers ---------------------------------------------------------------------------------------------


def _hf_class(backbone: TimmBackbone, cfg: RunConfig) -> str:
    """The transformers class that reproduces this ViT, or an ExportError saying what does not map."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    vit = backbone.model
    if not isinstance(vit, VisionTransformer):
        raise ExportError(f"{type(vit).__name__} is not a timm VisionTransformer")
    what = []
    if not isinstance(vit.norm_pre, nn.Identity):
        what.append("a pre-norm")
    if vit.attn_pool is not None:
        what.append("attention pooling")
    for blk in vit.blocks:
        if type(blk) is not Block or type(blk.attn) is not Attention or type(blk.mlp) is not Mlp:
            what.append(f"{type(blk).__name__} blocks")
        elif not all(isinstance(n, nn.Identity) for n in (blk.attn.q_norm, blk.attn.k_norm, blk.attn.norm)):
            what.append("attention norms")
        elif blk.attn.gate is not None or blk.attn.attn_dim != vit.embed_dim:
            what.append("gated or resized attention")
        elif not (isinstance(blk.mlp.act, nn.GELU) and blk.mlp.act.approximate == "none"):
            what.append(f"{blk.mlp.act} activations")
        elif not (isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm)):
            what.append("norms other than LayerNorm")
        elif not isinstance(blk.mlp.norm, nn.Identity):
            what.append("MLP norms")
    if what:
        raise ExportError(f"no transformers ViT has this ViT's {', '.join(sorted(set(what)))}")
    if vit.patch_embed.img_size[0] != vit.patch_embed.img_size[1]:
        raise ExportError("transformers' ViTs take square images")
    if vit.global_pool not in ("token", "avg") or isinstance(vit.norm, nn.LayerNorm) == _pooled_norm(vit):
        raise ExportError(
            f"transformers' ViTs pool the class token or the mean of the patch tokens, with one final "
            f"LayerNorm (on the tokens or on the pooled mean); this ViT pools by {vit.global_pool!r} "
            f"with norms {type(vit.norm).__name__} and {type(vit.fc_norm).__name__}"
        )
    layerscale = not isinstance(vit.blocks[0].ls1, nn.Identity)
    if vit.cls_token is not None:
        own = getattr(method_class(cfg.method), "transformers_class", None)
        if own == "ViTMAEModel" and not layerscale and not vit.num_reg_tokens:
            return own
        if vit.blocks[0].mlp.fc1.out_features % vit.embed_dim:
            raise ExportError("transformers' Dinov2Model takes MLP widths that are whole multiples of the width")
        return "Dinov2WithRegistersModel" if vit.num_reg_tokens else "Dinov2Model"
    if vit.num_reg_tokens or layerscale:
        raise ExportError(
            "a ViT without a class token maps to transformers' IJepaModel, which has neither registers nor layer scale"
        )
    return "IJepaModel"


def _freelabel_cnn(backbone: nn.Module, cfg: RunConfig) -> bool:
    """Whether the backbone is one of freelabel's CNNs (possibly in its method's input wrapper)."""
    return cfg.backbone.name in ("convnet", *TORCHVISION_RESNETS) and any(
        isinstance(m, ConvBackbone) for m in backbone.modules()
    )


def _pooled_norm(vit: nn.Module) -> bool:
    """Whether the ViT's final LayerNorm is on the pooled feature (timm's ``fc_norm``) rather than on every token."""
    return isinstance(vit.fc_norm, nn.LayerNorm)


def _hf_features(vit: nn.Module, cls_name: str) -> Features:
    """Where freelabel's features are in the transformers model's output ``out``. The model's ``layernorm`` holds
    the ViT's final norm: on every token (``last_hidden_state``), or on the pooled mean only (then the tokens are
    the encoder's last hidden state before it)."""
    pooled_norm, prefix = _pooled_norm(vit), vit.num_prefix_tokens
    hidden = "out.hidden_states[-1]" if pooled_norm else "out.last_hidden_state"
    tokens = f"{hidden}[:, {prefix}:]" if prefix else hidden
    pooled = f"{hidden}[:, 0]" if vit.global_pool == "token" else f"{tokens}.mean(1)"
    if cls_name == "ViTMAEModel":  # it shuffles the patches even when it hides none; ids_restore unshuffles them
        tokens += f".gather(1, out.ids_restore[..., None].expand(-1, -1, {vit.embed_dim}))"
    if pooled_norm:
        pooled = f"model.layernorm({pooled})"
    elif cls_name.startswith("Dinov2") and vit.global_pool == "token":
        pooled = "out.pooler_output"
    return Features(pooled, tokens, pooled_norm)


def _hf_state(vit: nn.Module, cls_name: str) -> dict[str, torch.Tensor]:
    """The timm ViT's weights under the transformers model's names."""
    sd = vit.state_dict()
    d = sd["pos_embed"].shape[-1] if "pos_embed" in sd else vit.embed_dim
    prefix, regs = vit.num_prefix_tokens, vit.num_reg_tokens
    pos = sd.get("pos_embed", torch.zeros(1, vit.patch_embed.num_patches, d))
    if not vit.no_embed_class and "pos_embed" in sd:  # prefix tokens have positions: keep the class token's,
        cls_pos, reg_pos, pos = pos[:, :1], pos[:, 1:prefix], pos[:, prefix:]  # fold the registers'
    else:
        cls_pos, reg_pos = torch.zeros(1, 1, d), torch.zeros(1, regs, d)
    emb = {
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd.get("patch_embed.proj.bias", torch.zeros(d)),
    }
    if vit.cls_token is not None:
        emb["embeddings.cls_token"] = sd["cls_token"]
        pos = torch.cat([cls_pos, pos], 1)
    if regs:
        emb["embeddings.register_tokens"] = sd["reg_token"] + reg_pos
    emb["embeddings.position_embeddings"] = pos
    dinov2 = cls_name.startswith("Dinov2")
    layers = "encoder.layer" if dinov2 else "layers"
    names = {"norm1": "norm1" if dinov2 else "layernorm_before", "norm2": "norm2" if dinov2 else "layernorm_after"}
    for i in range(len(vit.blocks)):
        b, o = f"blocks.{i}.", f"{layers}.{i}."
        q, k, v = sd[b + "attn.qkv.weight"].chunk(3)
        qb, kb, vb = sd.get(b + "attn.qkv.bias", torch.zeros(3 * d)).chunk(3)
        emb |= {
            o + "attention.q_proj.weight": q,
            o + "attention.k_proj.weight": k,
            o + "attention.v_proj.weight": v,
            o + "attention.q_proj.bias": qb,
            o + "attention.k_proj.bias": kb,
            o + "attention.v_proj.bias": vb,
            o + "attention.o_proj.weight": sd[b + "attn.proj.weight"],
            o + "attention.o_proj.bias": sd.get(b + "attn.proj.bias", torch.zeros(d)),
        }
        for t, h in names.items():
            emb |= {o + h + ".weight": sd[b + t + ".weight"], o + h + ".bias": sd[b + t + ".bias"]}
        for fc in ("fc1", "fc2"):
            w = sd[b + f"mlp.{fc}.weight"]
            emb |= {o + f"mlp.{fc}.weight": w, o + f"mlp.{fc}.bias": sd.get(b + f"mlp.{fc}.bias", torch.zeros(len(w)))}
        if dinov2:
            for ls in ("1", "2"):
                emb[o + f"layer_scale{ls}.lambda1"] = sd.get(b + f"ls{ls}.gamma", torch.ones(d))
    norm = "fc_norm" if _pooled_norm(vit) else "norm"
    emb |= {"layernorm.weight": sd[f"{norm}.weight"], "layernorm.bias": sd[f"{norm}.bias"]}
    return emb


def _hf_config(vit: nn.Module, cls_name: str, in_chans: int):
    import transformers

    blk = vit.blocks[0]
    args = dict(
        hidden_size=vit.embed_dim,
        num_hidden_layers=len(vit.blocks),
        num_attention_heads=blk.attn.num_heads,
        image_size=vit.patch_embed.img_size[0],
        patch_size=vit.patch_embed.patch_size[0],
        num_channels=in_chans,
        layer_norm_eps=vit.blocks[0].norm1.eps,
        hidden_act="gelu",
        qkv_bias=True,
    )
    hidden = blk.mlp.fc1.out_features
    if cls_name.startswith("Dinov2"):
        args |= dict(mlp_ratio=hidden // vit.embed_dim, layerscale_value=1.0)
        if cls_name == "Dinov2WithRegistersModel":
            args["num_register_tokens"] = vit.num_reg_tokens
        config = transformers.Dinov2WithRegistersConfig if vit.num_reg_tokens else transformers.Dinov2Config
    else:
        args["intermediate_size"] = hidden
        if cls_name == "ViTMAEModel":
            args["mask_ratio"] = 0.0
        config = transformers.ViTMAEConfig if cls_name == "ViTMAEModel" else transformers.IJepaConfig
    return config(**args)


def _write_transformers(backbone: TimmBackbone, cfg: RunConfig, tmp: Path, final: Path) -> dict:
    import transformers

    vit = _rgb_backbone(backbone, cfg).model
    cls_name = _hf_class(backbone, cfg)
    model = getattr(transformers, cls_name)(_hf_config(vit, cls_name, 3))
    missing, unexpected = model.load_state_dict(_hf_state(vit, cls_name), strict=False)
    if unexpected or set(missing) - {"embeddings.mask_token"}:
        raise ExportError(f"{cls_name} does not take this ViT's weights (missing {missing}, unexpected {unexpected})")
    model.save_pretrained(tmp)
    _image_processor(cfg).save_pretrained(tmp)
    feats = _hf_features(vit, cls_name)
    reloaded = transformers.AutoModel.from_pretrained(tmp).eval()
    _check(backbone, cfg, lambda x: _read(reloaded, x, feats), "transformers.AutoModel.from_pretrained")
    return {
        "transformers": {
            "class": cls_name,
            "output_hidden_states": feats.hidden_states,
            "pooled": feats.pooled,
            "patch_tokens": feats.tokens,
        }
    }


def _read(model: nn.Module, x: torch.Tensor, feats: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate the README's own expressions, so that what is checked is what users are told to write."""
    scope = {"out": model(pixel_values=x, output_hidden_states=feats.hidden_states), "model": model}
    return eval(feats.pooled, scope), eval(feats.tokens, scope)


def _image_processor(cfg: RunConfig):
    """Resize to the run's view size (bilinear, antialiased like freelabel's evaluation view) and normalise."""
    from transformers import ViTImageProcessor

    size = cfg.views.size
    return ViTImageProcessor(
        size={"height": size, "width": size}, resample=2, image_mean=_rgb(cfg.views.mean), image_std=_rgb(cfg.views.std)
    )


def _rgb_backbone(backbone: nn.Module, cfg: RunConfig) -> nn.Module:
    """The backbone taking RGB: a grey run's averages the channels."""
    return rgb_stem(backbone) if (cfg.data.channels or 3) == 1 else backbone


def _rgb(stats: tuple[float, ...]) -> list[float]:
    """Per-channel statistics for RGB input (a grey run's one value, three times)."""
    return list(stats) * 3 if len(stats) == 1 else list(stats)


# --- timm ---------------------------------------------------------------------------------------------------------


def _timm_call(backbone: TimmBackbone, cfg: RunConfig, file: Path) -> tuple[str, dict, dict]:
    """(model name, pretrained_cfg_overlay, kwargs) of the ``timm.create_model`` call that rebuilds the backbone."""
    name, size = cfg.backbone.name.removeprefix("timm:"), cfg.views.size
    if _freelabel_cnn(backbone, cfg):
        kwargs = {
            "method": cfg.method,
            "image_size": size,
            "mean": list(cfg.views.mean),
            "std": list(cfg.views.std),
            "grey": (cfg.data.channels or 3) == 1,
            **cfg.backbone.args,
        }
        if name != "convnet":
            kwargs["arch"] = name
        name = "freelabel_convnet" if name == "convnet" else "freelabel_resnet"
    elif name in VITS:
        kwargs = vit_args(name, **cfg.backbone.args, img_size=size)
        name = f"{name}_patch16_224"
    else:
        kwargs = {**({"img_size": size} if "vit" in name or "deit" in name else {}), **cfg.backbone.args}
    overlay = {
        "file": str(file),
        "num_classes": 0,
        "input_size": (3, size, size),
        "mean": tuple(_rgb(cfg.views.mean)),
        "std": tuple(_rgb(cfg.views.std)),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }
    return name, overlay, {**kwargs, "in_chans": 3, "num_classes": 0}


def _write_timm(backbone: nn.Module, cfg: RunConfig, tmp: Path, final: Path) -> dict:
    import timm
    from safetensors.torch import save_file

    rgb = _rgb_backbone(backbone, cfg)
    if isinstance(rgb, TimmBackbone):
        state = rgb.model.state_dict()
    else:
        state = {f"backbone.{k}": v for k, v in rgb.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
    name, overlay, kwargs = _timm_call(backbone, cfg, tmp / "model.safetensors")
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()
    prefix = getattr(model, "num_prefix_tokens", 0)
    _check(backbone, cfg, lambda x: (model(x), _timm_tokens(model.forward_features(x), prefix)), "timm.create_model")
    overlay["file"] = str(final / "model.safetensors")
    return {"timm": {"model_name": name, "pretrained_cfg_overlay": overlay, "kwargs": kwargs}}


def _timm_tokens(feats: torch.Tensor, prefix: int) -> torch.Tensor:
    return feats.flatten(2).transpose(1, 2) if feats.ndim == 4 else feats[:, prefix:]


# --- ONNX ---------------------------------------------------------------------------------------------------------


class _Outputs(nn.Module):
    """The backbone with both outputs, for export as one graph."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone(x), self.backbone.forward_tokens(x)


def _write_onnx(backbone: nn.Module, cfg: RunConfig, tmp: Path, final: Path) -> dict:
    """``model.onnx``: input ``pixel_values [batch, 3, S, S]`` (normalised), outputs ``pooled [batch, D]`` and
    ``tokens [batch, N, D]``; the batch size is dynamic. Written by torch.onnx's TorchScript exporter (the
    dynamo one needs onnxscript), and checked with onnxruntime at two batch sizes."""
    import warnings

    import onnxruntime

    model = _Outputs(_rgb_backbone(backbone, cfg)).eval()
    x = torch.zeros(2, 3, cfg.views.size, cfg.views.size)
    names = {
        "input_names": ["pixel_values"],
        "output_names": ["pooled", "tokens"],
        "dynamic_axes": {n: {0: "batch"} for n in ("pixel_values", "pooled", "tokens")},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python conditions on shapes
        torch.onnx.export(model, (x,), str(tmp / "model.onnx"), dynamo=False, opset_version=18, **names)
    session = onnxruntime.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.from_numpy(a) for a in session.run(None, {"pixel_values": x.numpy()}))

    _check(backbone, cfg, run, "onnxruntime.InferenceSession", batch=3)
    _check(backbone, cfg, run, "onnxruntime.InferenceSession")
    return {"onnx": {"file": "model.onnx", "input": "pixel_values", "outputs": ["pooled", "tokens"]}}


# --- safetensors ------------------------------------------------------------------------------------------------


def _write_safetensors(backbone: nn.Module, cfg: RunConfig, tmp: Path, final: Path) -> dict:
    save_config(tmp, cfg)
    save_backbone(tmp, backbone.state_dict())
    rebuilt, _ = load_backbone(tmp)
    _check(
        backbone, cfg, lambda x: (rebuilt(x), rebuilt.forward_tokens(x)), "freelabel.methods.load_backbone", rgb=False
    )
    return {"safetensors": {"weights": BACKBONE, "config": "config.yaml"}}


WRITERS = {
    "transformers": _write_transformers,
    "timm": _write_timm,
    "onnx": _write_onnx,
    "safetensors": _write_safetensors,
}


@torch.no_grad()
def _check(backbone: nn.Module, cfg: RunConfig, exported, how: str, rgb: bool = True, batch: int = 2) -> None:
    """The exported model must give the backbone's pooled features and patch tokens to :data:`TOLERANCE`;
    with ``rgb`` it takes RGB, and a grey run's images replicated to RGB must give their grey features."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.data.channels or 3, cfg.views.size, cfg.views.size, generator=g)
    pooled, tokens = exported(x.expand(-1, 3, -1, -1) if rgb else x)
    for what, ours, theirs in [("pooled", backbone(x), pooled), ("token", backbone.forward_tokens(x), tokens)]:
        err = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else float("inf")
        if not err <= TOLERANCE * max(1.0, ours.abs().max().item()):  # relative above 1: float32 rounding
            raise ExportError(
                f"the model {how} loads gives {what} features {err:.2g} away from the run's backbone "
                f"(tolerance {TOLERANCE}); nothing was written"
            )


def _readme(info: dict) -> str:
    fmt, size, chans = info["format"], info["image_size"], info["in_chans"]
    if fmt != "safetensors" and chans == 1:
        chans = (
            "3-channel (RGB: the model averages the channels of this grey run, so grey images replicated to RGB "
            "give the run's features) "
        )
    else:
        chans = f"{chans}-channel"
    head = (
        f"# freelabel export ({fmt})\n\nBackbone `{info['backbone']}` trained by `freelabel pretrain {info['method']}` "
        f"in `{info['run']}` (weights: {info['weights']}). Inputs: {chans} {size}x{size} images in [0, 1], "
        f"normalised with mean {info['mean']} and std {info['std']}. Checked at export: the code below gives the "
        f"run's pooled features and patch tokens to {TOLERANCE} at {size}x{size} (other sizes interpolate the "
        f"position embeddings, each library its own way).\n\n```python\n"
    )
    folder = f"FOLDER = {info['folder']!r}\n"
    if fmt == "transformers":
        t = info["transformers"]
        hidden = ", output_hidden_states=True" if t["output_hidden_states"] else ""
        grey = "# images: RGB (PIL images or uint8 [3, H, W] arrays); convert grey ones with .convert('RGB')\n"
        body = (
            "from transformers import AutoImageProcessor, AutoModel\n\n"
            + folder
            + f"model = AutoModel.from_pretrained(FOLDER).eval()  # {t['class']}\n"
            "processor = AutoImageProcessor.from_pretrained(FOLDER)  # resize (PIL bilinear) + normalise\n"
            f"{grey if chans == 1 else ''}"
            f"out = model(**processor(images, return_tensors='pt'){hidden})\n"
            f"pooled = {t['pooled']}\n"
            f"patch_tokens = {t['patch_tokens']}\n"
        )
        if t["class"] == "ViTMAEModel":
            body += "# ViTMAEModel shuffles the patches (mask_ratio 0 hides none); ids_restore unshuffles them\n"
        if t["output_hidden_states"]:
            body += "# the final LayerNorm (model.layernorm) is on the pooled mean only, as in timm's fc_norm\n"
    elif fmt == "onnx":
        body = (
            "import onnxruntime\n\n"
            + folder
            + "session = onnxruntime.InferenceSession(FOLDER + '/model.onnx', providers=['CPUExecutionProvider'])\n"
            "pooled, tokens = session.run(None, {'pixel_values': x})  # x: float32 numpy [B, 3, H, W], any B\n"
        )
    elif fmt == "timm":
        t = info["timm"]
        freelabel = t["model_name"].startswith("freelabel_")
        body = (
            "import timm\n"
            + ("import freelabel.timm_models  # registers freelabel's CNNs with timm\n" if freelabel else "")
            + "\n"
            f"model = timm.create_model({t['model_name']!r}, pretrained=True,\n"
            f"                          pretrained_cfg_overlay={t['pretrained_cfg_overlay']!r},\n"
            f"                          **{t['kwargs']!r}).eval()\n"
            "pooled = model(x)\n"
            "tokens = model.forward_features(x)"
            + ("  # [B, N, D]\n" if freelabel else "  # the ViT's prefix tokens first: model.num_prefix_tokens\n")
        )
    else:
        body = (
            "from freelabel.methods import load_backbone\n\n"
            + folder
            + "backbone, cfg = load_backbone(FOLDER)  # config.yaml + backbone.safetensors\n"
            "pooled, tokens = backbone(x), backbone.forward_tokens(x)\n"
        )
    return head + body + "```\n"
