"""Every recipe's backbone leaves freelabel: exported to ONNX, timm and (ViTs that map) transformers,
each loaded by that library's own client, with its features on real images compared to freelabel's.

For each distinct backbone of the recipes (name, arguments, input size, grey or colour data, and the
method's input wrapper: colorization's lightness, jigsaw's standardisation) a run directory is
written with the recipe's config and the backbone's seeded initial weights moved off their init (a
few "steps" of noise, so that a dropped or misplaced weight shows; image-text recipes: their image tower
as a simclr run, and paper recipes on grey data with the mean of their ImageNet statistics), then:

- onnx: ``onnxruntime.InferenceSession`` on the CPU, pooled features and tokens;
- timm: ``timm.create_model(...)`` (freelabel's CNNs after ``import freelabel.timm_models``), pooled;
- transformers: ``transformers.pipeline("image-feature-extraction")`` on PIL images, pooled (or the
  mean of its patch tokens where the class has no pooler) and patch tokens; "no class" where no
  transformers class has the architecture (the CNNs: they go to timm).

Images: Fashion-MNIST test images for grey runs (given to every library as RGB: the exports average
the channels), skimage photos for colour runs, at the run's input size. The error is the largest
absolute difference over the features, relative to the largest feature where features exceed 1.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/export_all.py [--recipes simclr-fashion-mnist ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from freelabel.config import list_recipes, load_recipe, resolve
from freelabel.data.sources import fashion_mnist
from freelabel.data.views import normalise
from freelabel.export import export_run
from freelabel.methods import METHODS, load_backbone
from freelabel.run import save_backbone, save_config

IMAGE_TEXT = ("clip", "siglip", "lit")


def error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    if ours.shape != theirs.shape:
        return float("inf")
    return (ours - theirs).abs().max().item() / max(1.0, ours.abs().max().item())


def images(grey: bool, size: int) -> torch.Tensor:
    """Four real ``uint8`` images at the run's size."""
    if grey:
        x = fashion_mnist("test").images[:4]
    else:
        x = torch.stack(
            [
                torch.from_numpy(getattr(skimage.data, n)()).permute(2, 0, 1)[:, :300, :300]
                for n in ("chelsea", "coffee", "astronaut", "rocket")
            ]
        )
    if x.shape[-1] != size:
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True).round().clamp(0, 255)
    return x.to(torch.uint8)


def make_run(folder: Path, recipe: str) -> Path:
    r = load_recipe(recipe)
    grey = r["data"]["name"] == "fashion-mnist"
    overrides = {"data.channels": 1 if grey else 3}
    if grey and len(r["views"].get("mean", [0.5])) == 3:  # a paper recipe (ImageNet statistics) on grey images
        overrides |= {"views.mean": [sum(r["views"]["mean"]) / 3], "views.std": [sum(r["views"]["std"]) / 3]}
    if r["method"] in IMAGE_TEXT:  # the image tower alone, as a simclr run: the same backbone, no text tower
        overrides |= {"method": "simclr", "method_args": {}}
    cfg = resolve(r, overrides)
    torch.manual_seed(0)
    net = METHODS[cfg.method].make_backbone(cfg.backbone.name, cfg.data.channels, cfg.views, **cfg.backbone.args)
    state = {k: v + 0.02 * torch.randn_like(v) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    folder.mkdir(parents=True)
    save_config(folder, cfg)
    save_backbone(folder, state)
    return folder


def compare(run: Path, out: Path, fmt: str, pixels: torch.Tensor) -> str:
    backbone, cfg = load_backbone(run)
    x = normalise(pixels, cfg.views)
    with torch.no_grad():
        pooled, tokens = backbone(x), backbone.forward_tokens(x)
    rgb = x.expand(-1, 3, -1, -1).contiguous()
    info = json.loads((out / "export.json").read_text())
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        p, t = (torch.from_numpy(a) for a in session.run(None, {"pixel_values": rgb.numpy()}))
        return f"{max(error(pooled, p), error(tokens, t)):.1e}"
    if fmt == "timm":
        import timm

        import freelabel.timm_models  # noqa: F401  (registers freelabel_convnet / freelabel_resnet)

        call = info["timm"]
        model = timm.create_model(
            call["model_name"], pretrained=True, pretrained_cfg_overlay=call["pretrained_cfg_overlay"], **call["kwargs"]
        ).eval()
        with torch.no_grad():
            return f"{error(pooled, model(rgb)):.1e}"
    from transformers import pipeline

    extract = pipeline("image-feature-extraction", model=str(out), device="cpu")
    pil = [Image.fromarray(im.permute(1, 2, 0).squeeze(-1).numpy()) for im in pixels]  # grey ones: mode L
    hidden = torch.tensor(np.array(extract(pil)))[:, 0]
    prefix = hidden.shape[1] - tokens.shape[1]
    if info["transformers"]["class"] == "Dinov2Model" or info["transformers"]["class"].startswith("Dinov2With"):
        theirs = torch.tensor(np.array(extract(pil, pool=True)))[:, 0]
    else:  # no pooler: the mean of the patch tokens (the recipes' mean-pooled ViTs)
        theirs = hidden[:, prefix:].mean(1)
    if info["transformers"]["class"] == "ViTMAEModel":  # it shuffles patches; the pipeline cannot unshuffle them
        return f"{error(pooled, theirs):.1e} (pooled only)"
    return f"{max(error(pooled, theirs), error(tokens, hidden[:, prefix:])):.1e}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list_recipes())
    args = p.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    groups: dict[str, list[str]] = {}
    for name in args.recipes:
        r = load_recipe(name)
        wrapper = r["method"] if r["method"] in ("colorization", "jigsaw") else ""
        key = json.dumps([r["backbone"], r["views"]["size"], r["data"]["name"] == "fashion-mnist", wrapper])
        groups.setdefault(key, []).append(name)
    print(
        f"{'recipes':44s} {'backbone':46s} {'in':>7s} {'onnx':>8s} {'timm':>8s} {'transformers pipeline':>22s} {'s':>5s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n, (key, recipes) in enumerate(sorted(groups.items(), key=lambda g: json.loads(g[0])[1])):  # small first
            backbone, size, grey, _ = json.loads(key)
            run = make_run(Path(tmp) / f"run{n}", recipes[0])
            pixels = images(grey, size)
            start, cells = time.perf_counter(), []
            for fmt in ("onnx", "timm", "transformers"):
                try:
                    cells.append(compare(run, export_run(run, fmt, Path(tmp) / f"run{n}-{fmt}"), fmt, pixels))
                except Exception as e:  # a format this backbone cannot take: say why, briefly
                    cells.append("no class" if "cannot export" in str(e) else f"FAILED: {e}"[:60])
            names = ", ".join(recipes) if len(recipes) < 3 else f"{recipes[0]} +{len(recipes) - 1}"
            desc = backbone["name"] + (f" {backbone['args']}" if backbone.get("args") else "")
            chans = f"{'1' if grey else '3'}x{size}"
            print(
                f"{names[:44]:44s} {desc[:46]:46s} {chans:>7s} {cells[0]:>8s} {cells[1]:>8s} {cells[2]:>22s} "
                f"{time.perf_counter() - start:5.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
