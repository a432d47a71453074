import pytest
import torch

from freelabel.backbones import Backbone, BackboneError, build_backbone
from freelabel.methods.colorization import LightnessInput
from freelabel.methods.jigsaw import Standardised, standardise


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
    assert isinstance(net, Backbone) and net.in_chans == 1
    assert net(x).shape == (2, net.embed_dim)
    assert net.forward_tokens(x).shape == (2, tokens, net.embed_dim)
    pooled, both = net.forward_pooled_tokens(x)
    torch.testing.assert_close(pooled, net(x))
    torch.testing.assert_close(both, net.forward_tokens(x))
    if net.grid is None:  # no patches: the masked entry points say what to use
        mask = torch.zeros(2, tokens, dtype=torch.bool)
        with pytest.raises(BackboneError, match="use a ViT"):
            net.forward_visible(x, mask)
        with pytest.raises(BackboneError, match="use a ViT"):
            net.forward_masked(x, mask, torch.zeros(net.embed_dim))
    else:
        assert net.grid == (size // net.patch_size,) * 2 and tokens == net.grid[0] * net.grid[1]


def test_input_wrappers_change_the_input_of_every_entry_point_and_pass_the_rest_on():
    vit = build_backbone("vit_tiny", in_chans=1, image_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2)
    vit.eval()
    x = torch.rand(2, 3, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :6] = True
    token = torch.randn(32)
    for wrapper, inner in (
        (
            Standardised(build_backbone("vit_tiny", 3, 16, patch_size=4, depth=1, embed_dim=32, num_heads=2).eval()),
            None,
        ),
        (LightnessInput(vit, (0.0,) * 3, (1.0,) * 3), vit),
    ):
        assert isinstance(wrapper, Backbone) and wrapper.in_chans == 3 and wrapper.grid == (4, 4)
        net = inner or wrapper.net
        y = wrapper.transform(x)
        assert not torch.equal(y, x) and y.shape[1] == net.in_chans
        torch.testing.assert_close(wrapper(x), net(y))
        torch.testing.assert_close(wrapper.forward_visible(x, mask), net.forward_visible(y, mask))
        assert wrapper.forward_visible(x, mask).shape == (2, 10, 32)  # the mask reached the ViT
        for a, b in zip(wrapper.forward_masked(x, mask, token), net.forward_masked(y, mask, token)):
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(Standardised(vit).transform(x), standardise(x, (1, 2, 3)))


def test_vit_mask_drops_hidden_patches_before_the_blocks():
    net = build_backbone("vit_tiny", in_chans=3, image_size=32, patch_size=8, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :12], mask[1, 4:] = True, True  # 4 visible patches each
    visible = net.forward_visible(x, mask)
    assert visible.shape == (2, 4, net.embed_dim)
    # The visible tokens depend only on the visible pixels: change a hidden patch, nothing moves.
    x2 = x.clone()
    x2[0, :, :8, :8] += 5.0  # patch 0 of image 0 is hidden
    torch.testing.assert_close(net.forward_visible(x2, mask)[0], visible[0])


def test_unknown_backbone_names_the_choices():
    with pytest.raises(BackboneError, match="valid: convnet"):
        build_backbone("not_a_model")
