"""Every method both libraries implement, freelabel against lightly: k-NN quality and speed at equal time.

For each method, freelabel's engine trains its ``<method>-fashion-mnist`` recipe for ``--minutes``; then, in
the same process, lightly's implementation trains as long on the CPU with the same backbone and initial
weights, data, batch size, optimiser (the recipe's AdamW, or SGD with Nesterov momentum as timm's "sgd"; no
weight decay on biases and norms), warm-up and cosine schedules (on elapsed training time, data waits
included, as freelabel's budget), head sizes and loss hyper-parameters.
Both backbones are scored by the same k-NN evaluation on Fashion-MNIST.

lightly runs as its examples do: its multi-view transforms on PIL images (mode 'L') in DataLoader workers,
set to the recipe's views (28 px, crop scale, flip, brightness and contrast jitter, no hue, saturation, grey
or blur, the recipe's normalisation); heads from ``lightly.models.modules.heads``, losses from
``lightly.loss``, ``update_momentum`` and ``cosine_schedule`` for momentum encoders; each view through the
network on its own. Networks run under bf16 autocast where the CPU has bf16 (freelabel's "auto" precision),
losses in fp32 on both sides. What cannot be matched exactly is printed under the table.

    python benchmarks/methods_vs_lightly.py --minutes 10 [--methods simclr,byol] [--workers 2] [--knn-subset N]

MAE and I-JEPA on the lightly side are assembled as its examples do, around the same timm ViT (its
``MaskedVisionTransformerTIMM`` with weights and positions left as they are): MAE with
``MaskedVisionTransformerDecoderTIMM`` (what lightly now puts in place of ``MAEDecoderTIMM``) and its
token-mask utilities, I-JEPA with ``IJEPAMaskCollator`` (masks made in the DataLoader's collator) and
``IJEPAPredictorTIMM``.

Needs ``pip install lightly`` (benchmark only).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from lightly import transforms
from lightly.data.ijepa_collate import IJEPAMaskCollator
from lightly.loss import BarlowTwinsLoss, DINOLoss, NegativeCosineSimilarity, NTXentLoss, VICRegLoss
from lightly.models import utils
from lightly.models.modules import heads
from lightly.models.modules.ijepa_timm import IJEPAPredictorTIMM
from lightly.models.modules.masked_vision_transformer_decoder_timm import MaskedVisionTransformerDecoderTIMM
from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM
from lightly.models.utils import deactivate_requires_grad, get_weight_decay_parameters, update_momentum
from lightly.transforms.ijepa_transform import IJEPATransform
from lightly.utils.scheduler import cosine_schedule
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from freelabel.backbones import build_backbone
from freelabel.config import RunConfig, load_recipe, resolve
from freelabel.data.sources import TensorImages, fashion_mnist
from freelabel.data.views import ViewConfig
from freelabel.encoder import Encoder
from freelabel.engine import pretrain
from freelabel.evaluate.knn import knn_eval
from freelabel.hardware import resolve_precision
from freelabel.methods import load_backbone
from freelabel.schedules import lr_at

Tensors = list[torch.Tensor]
Transform = Callable[[Image.Image], Tensors]  # a lightly multi-view transform
GENERAL_NOTE = (
    "all methods: torchvision crops stay inside the image (freelabel pads by reflection) and jitters "
    "brightness and contrast in random order; lightly passes each view through the network alone, so "
    "BatchNorm statistics are per view (so are freelabel's MoCo v3 and BYOL; its others batch the views of "
    "one size together)"
)


@dataclass
class LightlyMethod:
    """One method assembled from lightly's parts."""

    transform: Transform
    backbone: nn.Module
    nets: nn.Module  # all networks, momentum copies included; the optimiser takes what requires grad
    forward: Callable[[Tensors], Tensors]  # views -> network outputs (run under autocast)
    loss: Callable[[Tensors, float], torch.Tensor]  # fp32 outputs, progress -> loss
    on_step: Callable[[float], None] = lambda progress: None  # before the forward: momentum updates
    after_backward: Callable[[float], None] = lambda progress: None
    note: str = ""
    collate: Callable | None = None  # the DataLoader's collate_fn (I-JEPA's masks); None: torch's default


def jitter(v: ViewConfig, strength: float = 1.0) -> dict:
    """lightly's colour-jitter arguments for view ``v``; lightly multiplies each factor by ``cj_strength``."""
    return {
        "cj_prob": v.jitter,
        "cj_strength": strength,
        "cj_bright": v.brightness / strength,
        "cj_contrast": v.contrast / strength,
        "cj_sat": v.saturation / strength,
        "cj_hue": v.hue / strength,
    }


def common(v: ViewConfig) -> dict:
    """Arguments of lightly's SimCLR-style view transforms for view ``v`` (their largest crop is the whole
    image, as in the recipes; freelabel's blur sigmas are in pixels of a 224 px view)."""
    return {
        "input_size": v.size,
        "min_scale": v.scale[0],
        "hf_prob": v.hflip,
        "random_gray_scale": v.grayscale,
        "gaussian_blur": v.blur,
        "sigmas": tuple(s * v.size / 224 for s in v.blur_sigma),
        "normalize": {"mean": list(v.mean), "std": list(v.std)},
        **jitter(v),
    }


def cosine(progress: float, start: float, end: float) -> float:
    """lightly's ``cosine_schedule`` on time: with ``max_steps=2`` its ``step / (max_steps - 1)`` is the progress."""
    return cosine_schedule(progress, 2, start, end)


def momentum_copy(net: nn.Module) -> nn.Module:
    twin = copy.deepcopy(net)
    deactivate_requires_grad(twin)
    return twin


def twin_views(
    backbone: nn.Module, head: nn.Module, loss: nn.Module, transform: Transform, note: str = ""
) -> LightlyMethod:
    """SimCLR, Barlow Twins, VICReg: one network, two views of one kind, a loss of the two outputs."""
    model = nn.Sequential(backbone, head)
    return LightlyMethod(
        transform, backbone, model, lambda views: [model(x) for x in views], lambda z, p: loss(*z), note=note
    )


def simclr(cfg: RunConfig, backbone: nn.Module) -> LightlyMethod:
    a = cfg.method_args
    head = heads.SimCLRProjectionHead(backbone.embed_dim, a["hidden_dim"], a["proj_dim"], a["proj_layers"])
    loss, transform = NTXentLoss(temperature=a["temperature"]), transforms.SimCLRTransform(**common(cfg.views))
    return twin_views(backbone, head, loss, transform, "lightly's head batch-normalises its output too")


def barlowtwins(cfg: RunConfig, backbone: nn.Module) -> LightlyMethod:
    a = cfg.method_args  # lightly's head has 3 layers, as the recipe's
    head = heads.BarlowTwinsProjectionHead(backbone.embed_dim, a["hidden_dim"], a["proj_dim"])
    loss = BarlowTwinsLoss(lambda_param=a["lambd"])
    return twin_views(backbone, head, loss, transforms.SimCLRTransform(**common(cfg.views)))


def vicreg(cfg: RunConfig, backbone: nn.Module) -> LightlyMethod:
    a = cfg.method_args
    head = heads.VICRegProjectionHead(backbone.embed_dim, a["hidden_dim"], a["proj_dim"], a["proj_layers"])
    loss = VICRegLoss(lambda_param=a["sim_weight"], mu_param=a["var_weight"], nu_param=a["cov_weight"])
    return twin_views(backbone, head, loss, transforms.VICRegTransform(**common(cfg.views), solarize_prob=0.0))


def mocov2(cfg: RunConfig, backbone: nn.Module) -> LightlyMethod:
    a = cfg.method_args  # freelabel's MoCo v2 momentum is constant
    encoder = nn.Sequential(backbone, heads.MoCoProjectionHead(backbone.embed_dim, a["hidden_dim"], a["proj_dim"]))
    key_encoder = momentum_copy(encoder)
    loss = NTXentLoss(temperature=a["temperature"], memory_bank_size=(a["queue_size"], a["proj_dim"]))

    def forward(views: Tensors) -> Tensors:
        with torch.no_grad():
            key = key_encoder(views[1])
        return [encoder(views[0]), key]

    return LightlyMethod(
        transforms.MoCoV2Transform(**common(cfg.views)),
        backbone,
        nn.ModuleList([encoder, key_encoder]),
        forward,
        lambda z, p: loss(*z),
        lambda p: update_momentum(encoder, key_encoder, a["momentum"]),
        note=f"no shuffle-BN (freelabel: keys in {a['bn_splits']} shuffled BatchNorm groups)",
    )


def with_predictor(
    backbone: nn.Module,
    projector: nn.Module,
    predictor: nn.Module,
    transform: Transform,
    loss: Callable[..., torch.Tensor],
    momentum: float,
    note: str,
) -> LightlyMethod:
    """MoCo v3, BYOL: each view's prediction against the momentum network's output for the other view."""
    online = nn.Sequential(backbone, projector)
    target = momentum_copy(online)

    def forward(views: Tensors) -> Tensors:
        with torch.no_grad():
            targets = [target(x) for x in views]
        return [predictor(online(x)) for x in views] + targets

    return LightlyMethod(
        transform,
        backbone,
        nn.ModuleList([online, predictor, target]),
        forward,
        lambda z, p: loss(z[0], z[3]) + loss(z[1], z[2]),
        lambda p: update_momentum(online, target, cosine(p, momentum, 1.0)),
        note=note,
    )


def mocov3(cfg: RunConfig, backbone: nn.Module) -> LightlyMethod:
    # lightly has no MoCo v3 method: its MoCo heads in their v3 form (BatchNorm in every layer) and NTXentLoss.
    # The recipe picks the paper's ViT heads or its ResNet heads (2-layer projector, no BatchNorm after the predictor).
    a, dim = cfg.method_args, cfg.method_args["proj_dim"]
    projector = heads.MoCoProjectionHead(backbone.embed_dim, a["hidden_dim"], dim, a.get("proj_layers", 3), True)
    predictor = (
        heads.MoCoProjectionHead(dim, a["hidden_dim"], dim, batch_norm=True)
        if a.get("predictor_bn", True)
        else heads.BYOLPredictionHead(dim, a["hidden_dim"], dim)
    )
    return with_predictor(
        backbone,
        projector,
        predictor,
        transforms.MoCoV2Transform(**common(cfg.views)),
        NTXentLoss(temperature=a["temperature"]),
        a["momentum"],
        "no MoCo v3 in lightly: NTXentLoss also takes the other queries as negatives, no 2*tau "
        "factor; lightly's output BatchNorms are affine (freelabel's: not)",
    )


def byol(cfg: RunConfig, backbone: nn.Module) -> LightlyMethod:
    a, v = cfg.method_args, cfg.views
    cos = NegativeCosineSimilarity()
    blur = float(v.blur > 0)  # the blur and solarize probabilities of freelabel's asymmetric BYOL views
    transform = transforms.BYOLTransform(
        transforms.BYOLView1Transform(**{**common(v), "gaussian_blur": blur}),
        transforms.BYOLView2Transform(**{**common(v), "gaussian_blur": 0.1 * blur}, solarization_prob=0.2),
    )
    return with_predictor(
        backbone,
        heads.BYOLProjectionHead(backbone.embed_dim, a["hidden_dim"], a["proj_dim"]),
        heads.BYOLPredictionHead(a["proj_dim"], a["hidden_dim"], a["proj_dim"]),
        transform,
        lambda x, y: 0.5 * cos(x, y),
        a["momentum"],
        "loss -cos(p, z) averaged (freelabel: 2 - 2cos summed, 4x the gradient, which AdamW mostly normalises away)",
    )


def dino(cfg: RunConfig, backbone: nn.Module) -> LightlyMethod:
    a, v = cfg.method_args, cfg.views
    sizes = (backbone.embed_dim, a["hidden_dim"], a["bottleneck_dim"], a["out_dim"])
    # The head counts its frozen last layer in epochs: epoch 0 stands for the recipe's frozen fraction of time.
    student = nn.Sequential(backbone, heads.DINOProjectionHead(*sizes, freeze_last_layer=1))
    teacher = nn.Sequential(copy.deepcopy(backbone), heads.DINOProjectionHead(*sizes))
    teacher[1].load_state_dict(student[1].state_dict())  # its weight norm cannot be deep-copied
    deactivate_requires_grad(teacher)
    loss = DINOLoss(output_dim=a["out_dim"], student_temp=a["student_temp"], center_momentum=a["center_momentum"])
    blur = float(v.blur > 0)
    # DINOTransform leaves the second global view at its default cj_strength of 0.5: strength 0.5 and doubled
    # factors give every view the recipe's jitter.
    transform = transforms.DINOTransform(
        global_crop_size=v.size,
        global_crop_scale=tuple(v.scale),
        local_crop_size=a["local_size"],
        local_crop_scale=tuple(a["local_scale"]),
        n_local_views=a["local_crops"],
        hf_prob=v.hflip,
        random_gray_scale=v.grayscale,
        gaussian_blur=(blur, 0.1 * blur, 0.5 * blur),
        solarization_prob=0.2,
        sigmas=tuple(s * v.size / 224 for s in v.blur_sigma),
        normalize={"mean": list(v.mean), "std": list(v.std)},
        **jitter(v, strength=0.5),
    )

    def teacher_temp(p: float) -> float:
        start, end, warmup = a["warmup_teacher_temp"], a["teacher_temp"], a["teacher_temp_warmup"]
        return end if p >= warmup else start + (end - start) * p / warmup

    def forward(views: Tensors) -> Tensors:
        with torch.no_grad():
            teachers = [teacher(x) for x in views[:2]]
        return teachers + [student(x) for x in views]

    return LightlyMethod(
        transform,
        backbone,
        nn.ModuleList([student, teacher]),
        forward,
        lambda z, p: loss(z[:2], z[2:], teacher_temp=teacher_temp(p)),
        lambda p: update_momentum(student, teacher, cosine(p, a["momentum"], 1.0)),
        lambda p: student[1].cancel_last_layer_gradients(int(p >= a["freeze_last_layer"])),
        note="lightly's head starts from a truncated normal (std 0.02); crops resampled bicubic",
    )


def masked_vit(backbone: nn.Module) -> MaskedVisionTransformerTIMM:
    """lightly's masked ViT around the backbone's timm ViT, its initial weights and positions kept (so the same)."""
    return MaskedVisionTransformerTIMM(backbone.model, weight_initialization="skip", pos_embed_initialization="skip")


def mae(cfg: RunConfig, backbone: nn.Module) -> LightlyMethod:
    a, v = cfg.method_args, cfg.views
    encoder, patch = masked_vit(backbone), backbone.model.patch_embed.patch_size[0]
    channels, tokens = backbone.model.patch_embed.proj.in_channels, encoder.sequence_length
    decoder = MaskedVisionTransformerDecoderTIMM(
        backbone.model.patch_embed.num_patches,
        a["decoder_dim"],
        a["decoder_depth"],
        a["decoder_heads"],
        num_prefix_tokens=backbone.model.num_prefix_tokens,
    )
    embed, predict = nn.Linear(backbone.embed_dim, a["decoder_dim"]), nn.Linear(a["decoder_dim"], patch**2 * channels)
    nets = nn.ModuleList([encoder, decoder, embed, predict])

    def forward(views: Tensors) -> Tensors:
        x = views[0]
        keep, hide = utils.random_token_mask((len(x), tokens), mask_ratio=a["mask_ratio"], device=x.device)
        full = utils.repeat_token(decoder.mask_token, (len(x), tokens))
        full = utils.set_at_index(full, keep, embed(encoder.encode(x, idx_keep=keep)).type_as(full))
        target = utils.get_at_index(utils.patchify(x, patch), hide - backbone.model.num_prefix_tokens)
        return [predict(utils.get_at_index(decoder(full), hide)), target]

    def loss(z: Tensors, p: float) -> torch.Tensor:
        pred, target = z
        return nn.functional.mse_loss(pred, utils.normalize_mean_var(target) if a["norm_pix"] else target)

    transform = transforms.MAETransform(v.size, v.scale[0], {"mean": list(v.mean), "std": list(v.std)})
    return LightlyMethod(
        transform,
        backbone,
        nets,
        forward,
        loss,
        note="crops always flipped with p 0.5 and resampled bicubic; the decoder also takes the "
        "class token (freelabel's: the patch tokens only)",
    )


class IJEPACollate:
    """lightly's I-JEPA collator, its output put as the benchmark's loop takes it: [images, context, targets]."""

    def __init__(self, collator: IJEPAMaskCollator):
        self.collator = collator

    def __call__(self, items: list) -> tuple[Tensors, None]:
        (images, _), context, targets = self.collator(items)
        return [images, context[0], torch.stack(targets, 1)], None


def ijepa(cfg: RunConfig, backbone: nn.Module) -> LightlyMethod:
    a, v = cfg.method_args, cfg.views
    if backbone.model.num_prefix_tokens:
        raise SystemExit("the I-JEPA benchmark needs a ViT without a class token (backbone.args.class_token: false)")
    encoder = masked_vit(backbone)
    target = momentum_copy(encoder)
    predictor = IJEPAPredictorTIMM(
        backbone.model.patch_embed.num_patches,
        a["predictor_depth"],
        backbone.embed_dim,
        a["predictor_dim"],
        a["predictor_heads"],
    )
    collator = IJEPAMaskCollator(
        v.size,
        backbone.model.patch_embed.patch_size[0],
        tuple(a["context_scale"]),
        tuple(a["target_scale"]),
        tuple(a["target_aspect"]),
        npred=a["targets"],
    )

    def forward(views: Tensors) -> Tensors:
        x, context, targets = views
        blocks = list(targets.unbind(1))
        with torch.no_grad():
            h = utils.apply_masks(nn.functional.layer_norm(target.encode(x), (backbone.embed_dim,)), blocks)
        return [predictor(encoder.encode(x, idx_keep=context), [context], blocks), h]

    def loss(z: Tensors, p: float) -> torch.Tensor:
        pred, h = z
        return (nn.functional.mse_loss if a["loss"] == "l2" else nn.functional.smooth_l1_loss)(pred, h)

    def on_step(p: float) -> None:  # I-JEPA's momentum rises linearly
        update_momentum(encoder, target, a["momentum"] + (1 - a["momentum"]) * p)

    transform = IJEPATransform(v.size, v.scale[0], {"mean": list(v.mean), "std": list(v.std)})
    return LightlyMethod(
        transform,
        backbone,
        nn.ModuleList([encoder, predictor, target]),
        forward,
        loss,
        on_step,
        note="crops flipped with p 0.5 (the recipe: no flip) and resampled bicubic; target blocks "
        "never touch the last row or column (ijepa's randint)",
        collate=IJEPACollate(collator),
    )


BUILDERS: dict[str, Callable[[RunConfig, nn.Module], LightlyMethod]] = {
    "simclr": simclr,
    "mocov2": mocov2,
    "mocov3": mocov3,
    "byol": byol,
    "dino": dino,
    "barlowtwins": barlowtwins,
    "vicreg": vicreg,
    "mae": mae,
    "ijepa": ijepa,
}


class PilImages(Dataset):
    """The training images as lightly's examples take them: PIL images through a lightly transform."""

    def __init__(self, images: torch.Tensor, transform: Transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensors, int]:
        return self.transform(Image.fromarray(self.images[i, 0].numpy())), 0


def forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def train_lightly(
    m: LightlyMethod, cfg: RunConfig, images: torch.Tensor, minutes: float, workers: int, autocast: bool
) -> dict:
    """Train ``m`` for ``minutes`` of steps (data waits included); return its steps and images/s."""
    o = cfg.optim
    m.nets.to(memory_format=torch.channels_last)
    decay, no_decay = ([p for p in group if p.requires_grad] for group in get_weight_decay_parameters([m.nets]))
    groups, lr = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], o.lr * o.batch_size / 256
    if o.name not in ("adamw", "sgd"):
        raise SystemExit(f"the benchmark's lightly side knows adamw and sgd, not the recipe's {o.name!r}")
    optimizer = (
        torch.optim.AdamW(groups, lr=lr, weight_decay=o.weight_decay)
        if o.name == "adamw"
        else torch.optim.SGD(groups, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True)
    )
    peak = optimizer.param_groups[0]["lr"]
    loader = DataLoader(
        PilImages(images, m.transform),
        batch_size=o.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=m.collate,
    )
    batches, budget, seconds, steps = forever(loader), minutes * 60, 0.0, 0
    while seconds < budget:
        t0 = time.perf_counter()
        views = [x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x for x in next(batches)[0]]
        p = seconds / budget
        for group in optimizer.param_groups:
            group["lr"] = peak * lr_at(p, o.warmup, o.min_lr)
        if o.weight_decay_end is not None:
            optimizer.param_groups[0]["weight_decay"] = cosine(p, o.weight_decay, o.weight_decay_end)
        m.on_step(p)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            outputs = m.forward(views)
        loss = m.loss([z.float() for z in outputs], p)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        m.after_backward(p)
        if o.clip_grad:
            torch.nn.utils.clip_grad_norm_(decay + no_decay, o.clip_grad)
        optimizer.step()
        seconds += time.perf_counter() - t0
        steps += 1
    return {"steps": steps, "images_per_s": steps * o.batch_size / seconds}


def subset(ds: TensorImages, n: int | None) -> TensorImages:
    return ds if n is None else TensorImages(ds.images[:n], ds.labels[:n], ds.classes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10, help="training time per method and library")
    ap.add_argument("--methods", default=",".join(BUILDERS), help="comma-separated, from: " + ", ".join(BUILDERS))
    ap.add_argument("--workers", type=int, default=2, help="lightly's DataLoader workers")
    ap.add_argument(
        "--knn-subset",
        type=int,
        default=None,
        metavar="N",
        help="k-NN on the first N train and N//6 test images (smoke runs); default all",
    )
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := [m for m in methods if m not in BUILDERS]:
        ap.error(f"unknown method {unknown[0]!r}; valid: {', '.join(BUILDERS)}")

    autocast = resolve_precision("auto", "cpu").startswith("bf16")
    full_train, n = fashion_mnist("train"), args.knn_subset
    train, test = subset(full_train, n), subset(fashion_mnist("test"), n // 6 if n else None)
    print(
        f"{args.minutes:g} min per method and library on the CPU, bf16 autocast: {autocast}, lightly "
        f"DataLoader workers: {args.workers}, torch threads: {torch.get_num_threads()}, k-NN: {len(train)} "
        f"/ {len(test)} images"
    )
    rows: list[tuple[str, str, dict]] = []
    notes = [GENERAL_NOTE]
    for name in methods:
        cfg = resolve(load_recipe(f"{name}-fashion-mnist"), {"budget.minutes": args.minutes, "accelerator": "cpu"})
        with tempfile.TemporaryDirectory() as out:
            ours = pretrain(cfg, out)
            backbone = load_backbone(out)[0]
        rows.append((name, "freelabel", {**ours, **knn_eval(Encoder(name, backbone, cfg.views, 1), train, test)}))
        torch.manual_seed(cfg.seed)  # the same initial backbone as freelabel's
        m = BUILDERS[name](cfg, build_backbone(cfg.backbone.name, 1, cfg.views.size, **cfg.backbone.args))
        notes += [f"{name}: {m.note}"] if m.note else []
        theirs = train_lightly(m, cfg, full_train.images, args.minutes, args.workers, autocast)
        rows.append((name, "lightly", {**theirs, **knn_eval(Encoder(name, m.backbone, cfg.views, 1), train, test)}))
        for _, lib, r in rows[-2:]:
            print(
                f"{name}: {lib} k-NN top-1 {r['top1_k20']:.2f} / {r['top1_k200']:.2f} (k=20 / k=200), "
                f"{r['images_per_s']:,.0f} img/s, {r['steps']} steps",
                flush=True,
            )

    print(f"\n{'method':<12} {'library':<10} {'k=20':>6} {'k=200':>6} {'img/s':>8} {'steps':>6}")
    for name, lib, r in rows:
        print(
            f"{name if lib == 'freelabel' else '':<12} {lib:<10} {r['top1_k20']:>6.2f} {r['top1_k200']:>6.2f} "
            f"{r['images_per_s']:>8,.0f} {r['steps']:>6}"
        )
    print("\nnotes (lightly against freelabel's recipe):\n  " + "\n  ".join(notes))


if __name__ == "__main__":
    main()
