"""Training throughput against the hardware's limit: images/s and model FLOPs utilisation (MFU) per method.

    python benchmarks/gpu.py [--steps 20] [--compile] [--only mae,dino]     # on a GPU (under 8 minutes on an H100)
    python benchmarks/gpu.py --tiny                                        # tiny models on any CPU (the test suite)

For each case (the paper recipes: MAE ViT-B/16 at 224 px, DINO ViT-S/16 with 2x224 + 10x96 crops, DINOv2
ViT-L/16 at batch 32, SimCLR ResNet-50 at 224 px) the engine's own step runs on images already in memory:
views made on the device from a seeded generator, bf16 autocast, the engine's optimiser, the method's hooks.
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one step (forward and backward);
MFU is those FLOPs per second over the card's dense bf16 peak (a small table by device name; where it has none,
as on a CPU, over a measured 2048x2048 matmul rate in the precision the steps run in, marked so: bf16 where the
CPU's kernels compute in it, else fp32).
The data path is reported as its share of a step: JPEG decoding (``torchvision.io.decode_jpeg``, on the GPU
where there is one) and the views (crops, flips, colour, blur). SimCLR also runs with lightly's
``SimCLRTransform`` (PIL, in DataLoader workers) and its ResNet-50 + projection head + NT-Xent loss, on the
same card, and the ratio of images/s is printed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from freelabel.config import load_recipe, resolve
from freelabel.data.loader import Batch
from freelabel.data.views import Views
from freelabel.engine import build_optimizer, step_generator
from freelabel.hardware import cpu_description, cpu_has_bf16, loader_workers

# Dense bf16 tensor-core peaks (FLOP/s), without sparsity, from the vendors' data sheets.
PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 756e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}

CASES = {  # name: (recipe, batch per device, overrides)
    "mae": ("mae", 256, {}),
    "dino": ("dino", 128, {}),
    "dinov2": ("dinov2", 32, {}),
    "simclr": ("simclr", 256, {}),
}
TINY = {  # the same code paths, small enough for a CPU test
    "backbone.args.depth": 1,
    "views.size": 32,
    "method_args.local_size": 16,
    "method_args.local_crops": 2,
    "method_args.out_dim": 128,
    "method_args.ibot_out_dim": 128,
    "method_args.hidden_dim": 64,
    "method_args.bottleneck_dim": 32,
    "method_args.decoder_dim": 32,
    "method_args.decoder_depth": 1,
    "method_args.decoder_heads": 2,
    "backbone.args.patch_size": 8,
}


def peak_flops(device: torch.device) -> float | None:
    """The card's dense bf16 peak, by the longest table name its device name contains; None if unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    found = [k for k in PEAK_BF16 if k in name]
    return PEAK_BF16[max(found, key=len)] if found else None


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 2048) -> float:
    """A measured ``n x n`` matmul rate (FLOP/s): the limit to compare with where the table has none (a CPU)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ a, device, 5)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, n: int) -> float:
    """Seconds per call of ``fn``, over ``n`` calls after one warm-up."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - start) / n


def _config(name: str, tiny: bool):
    recipe, batch, overrides = CASES[name]
    overrides = {
        **overrides,
        "optim.batch_size": 4 if tiny else batch,
        "budget.steps": 1000,
        "budget.epochs": None,
        "budget.minutes": None,
    }
    if tiny:
        recipe_args = load_recipe(recipe).get("method_args", {})
        overrides |= {k: v for k, v in TINY.items() if not k.startswith("method_args.") or k[12:] in recipe_args}
        overrides["backbone.name"] = "resnet18" if "resnet" in load_recipe(recipe)["backbone"]["name"] else "vit_tiny"
        if overrides["backbone.name"] == "resnet18":
            overrides.pop("backbone.args.depth"), overrides.pop("backbone.args.patch_size")
    return resolve(load_recipe(recipe), overrides)


def freelabel_case(name: str, device: torch.device, tiny: bool, steps: int, compile: bool, peak: float) -> dict:
    """One case's figures: images/s of whole steps (views + model), step FLOPs, MFU, the data path's share."""
    from torchvision.io import decode_jpeg, encode_jpeg

    from freelabel.methods import build_method

    cfg = _config(name, tiny)
    torch.manual_seed(0)
    method = build_method(cfg, 3).to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(method, cfg, world=1)
    model = torch.compile(method) if compile else method
    views = [Views(v) for v in method.views]
    n, size = cfg.optim.batch_size, max(v.size for v in method.views)
    photos = torch.randint(
        0, 256, (n, 3, size * 8 // 7, size * 8 // 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    images = photos.to(device)
    g = step_generator(0, 0)
    masks = method.masks(n, g) if method.masks else {}
    masks = {k: m.to(device) for k, m in masks.items()}

    def make_views() -> Batch:
        made = [v(images, step_generator(0, 0)).contiguous(memory_format=torch.channels_last) for v in views]
        return Batch(images, torch.zeros(n, dtype=torch.long, device=device), masks=masks, views=made)

    batch = make_views()
    autocast = bf16(device)

    def model_step() -> None:
        method.on_step(0.5)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.after_backward(0.5)
        optimizer.step()
        method.after_step(0.5)

    model_step()  # warm-up (and compilation)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(batch)["loss"]
        loss.backward()
    flops = counter.get_total_flops()
    optimizer.zero_grad(set_to_none=True)
    t_model = timed(model_step, device, steps)
    t_views = timed(make_views, device, steps)
    jpegs = [encode_jpeg(p, quality=90) for p in photos]
    on = "cuda" if device.type == "cuda" else "cpu"
    t_decode = timed(lambda: decode_jpeg(jpegs, device=on), device, max(1, steps // 4))
    step = t_model + t_views + t_decode
    return {
        "case": name,
        "recipe": CASES[name][0],
        "backbone": cfg.backbone.name,
        "batch": n,
        "images_per_s": n / (t_model + t_views),
        "step_tflop": flops / 1e12,
        "model_seconds": t_model,
        "views_seconds": t_views,
        "peak_tflop_per_s": peak / 1e12,
        "mfu": flops / t_model / peak,
        "decode_share": t_decode / step,
        "views_share": t_views / step,
    }


def bf16(device: torch.device) -> bool:
    """Whether the steps run in bf16 autocast: on GPUs, and on CPUs whose kernels compute in bf16."""
    return device.type == "cuda" or cpu_has_bf16()


def lightly_simclr(device: torch.device, tiny: bool, steps: int, workers: int) -> float:
    """Images/s of SimCLR the way lightly's example trains it: ``SimCLRTransform`` on PIL images in DataLoader
    workers, a torchvision ResNet, ``SimCLRProjectionHead``, ``NTXentLoss``, bf16 autocast on the device."""
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    cfg = _config("simclr", tiny)
    n, size = cfg.optim.batch_size, cfg.views.size
    transform = SimCLRTransform(input_size=size)
    pictures = torch.randint(0, 256, (n * 4, size * 8 // 7, size * 8 // 7, 3), dtype=torch.uint8).numpy()

    class Pictures(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(pictures)

        def __getitem__(self, i: int):
            return transform(Image.fromarray(pictures[i]))

    backbone = getattr(torchvision.models, cfg.backbone.name)()
    dim = backbone.fc.in_features
    backbone.fc = torch.nn.Identity()
    model = torch.nn.Sequential(backbone, SimCLRProjectionHead(dim, 2048 if not tiny else 64, 128))
    model = model.to(device, memory_format=torch.channels_last)
    loss_fn = NTXentLoss(temperature=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(
        Pictures(),
        batch_size=n,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )

    def epochs():
        while True:
            yield from loader

    it = epochs()

    def step() -> None:
        x0, x1 = (x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last) for x in next(it))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16(device)):
            loss = loss_fn(model(x0), model(x1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return n / timed(step, device, steps)


def run(
    tiny: bool = False,
    steps: int = 20,
    compile: bool = False,
    only: list[str] | None = None,
    workers: int = 8,
    lightly: bool = True,
) -> list[dict]:
    """Every case's figures (and lightly's SimCLR ratio, where lightly is installed), printed as a table."""
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description()
    peak, measured, dtype = peak_flops(device), False, torch.bfloat16 if bf16(device) else torch.float32
    if peak is None:
        peak, measured = matmul_rate(device, dtype), True
    print(
        f"{card}, torch {torch.__version__}, {str(dtype).removeprefix('torch.')} "
        f"{'measured 2048^2 matmul' if measured else 'dense peak'} {peak / 1e12:.3f} TFLOP/s, compile {compile}, "
        f"{'tiny models' if tiny else 'paper recipes'}"
    )
    rows = []
    for name in only or list(CASES):
        row = freelabel_case(name, device, tiny, steps, compile, peak)
        if name == "simclr" and lightly:
            try:
                row["lightly_ratio"] = row["images_per_s"] / lightly_simclr(
                    device, tiny, steps, loader_workers(workers)
                )
            except ImportError:
                row["lightly_ratio"] = None  # lightly is for comparison only: pip install lightly
        rows.append(row)
        ratio = f"  {row['lightly_ratio']:.2f}x lightly" if row.get("lightly_ratio") else ""
        print(
            f"{name:7s} {row['backbone']:10s} batch {row['batch']:4d}  {row['images_per_s']:9.1f} img/s  "
            f"{row['step_tflop'] * 1e3:9.1f} GFLOP/step  MFU {row['mfu']:6.1%}  data path: decode {row['decode_share']:.0%}, "
            f"views {row['views_share']:.0%} of a step{ratio}"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models on the CPU (checks the script end to end)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per case")
    ap.add_argument("--compile", action="store_true", help="torch.compile the method")
    ap.add_argument("--only", help="comma-separated cases: " + ",".join(CASES))
    ap.add_argument("--workers", type=int, default=8, help="lightly's DataLoader workers (at most the cores)")
    ap.add_argument("--no-lightly", action="store_true", help="skip the lightly comparison")
    args = ap.parse_args()
    run(
        args.tiny,
        args.steps,
        args.compile,
        args.only.split(",") if args.only else None,
        args.workers,
        not args.no_lightly,
    )


if __name__ == "__main__":
    main()
