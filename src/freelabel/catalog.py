"""The named backbones, one line each, without importing torch (``freelabel backbones`` lists them at
once); :func:`freelabel.backbones.build_backbone` builds them."""

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VITS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12), "vit_large": (1024, 24, 16)}
NAMED = {
    "convnet": "small CNN for CPU runs on small images (1.2M params, 256-d)",
    **{n: "torchvision ResNet, small-image stem at <=64 px" for n in TORCHVISION_RESNETS},
    **{n: f"timm ViT, {d}-d, depth {L}, {h} heads; any patch_size" for n, (d, L, h) in VITS.items()},
}
