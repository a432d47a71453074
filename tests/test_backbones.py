import pytest
import torch

from freelabel.backbones import BackboneError, build_backbone


@pytest.mark.parametrize(
    "name, kwargs, size, tokens",
    [
        ("convnet", {}, 28, 16),  # 28 -> 14 -> 7 -> 4: 4x4 spatial tokens
        ("resnet18", {}, 32, 16),  # small-image stem: 32 -> 4 after three stride-2 stages
        ("resnet18", {}, 96, 9),  # ImageNet stem: 96 / 32 = 3
        ("vit_tiny", {"patch_size": 4, "depth": 2}, 28, 49),
        ("timm:resnet10t", {}, 64, 4),
    ],
)
def test_one_interface(name, kwargs, size, tokens):
    net = build_backbone(name, in_chans=1, image_size=size, **kwargs).eval()
    x = torch.randn(2, 1, size, size)
    assert net(x).shape == (2, net.embed_dim)
    assert net.forward_tokens(x).shape == (2, tokens, net.embed_dim)


def test_vit_mask_drops_hidden_patches_before_the_blocks():
    net = build_backbone("vit_tiny", in_chans=3, image_size=32, patch_size=8, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :12], mask[1, 4:] = True, True  # 4 visible patches each
    visible = net.forward_tokens(x, mask)
    assert visible.shape == (2, 4, net.embed_dim)
    # The visible tokens depend only on the visible pixels: change a hidden patch, nothing moves.
    x2 = x.clone()
    x2[0, :, :8, :8] += 5.0  # patch 0 of image 0 is hidden
    torch.testing.assert_close(net.forward_tokens(x2, mask)[0], visible[0])


def test_unknown_backbone_names_the_choices():
    with pytest.raises(BackboneError, match="valid: convnet"):
        build_backbone("not_a_model")
