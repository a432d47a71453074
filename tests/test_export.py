"""`freelabel export`: transformers, timm, ONNX and safetensors folders that give the run's features to 1e-4.
The runs are grey (1 channel); every format but safetensors takes their images replicated to RGB."""

import json

import pytest
import torch

from freelabel.cli import main
from freelabel.config import BackboneConfig, DataConfig, RunConfig
from freelabel.data.views import ViewConfig, normalise
from freelabel.export import ExportError, export_run
from freelabel.methods import METHODS, load_backbone
from freelabel.run import RunError, save_backbone, save_checkpoint, save_config

TINY = {"patch_size": 7, "depth": 2, "embed_dim": 32, "num_heads": 2}
MEAN_POOLED = {"class_token": False, "global_pool": "avg", "fc_norm": False}


def make_run(root, method="simclr", backbone="vit_tiny", finished=True, **args):
    """A run directory as `freelabel pretrain` leaves it, with weights moved off their init (non-zero biases,
    layer scales off 1) so that a weight the export drops or misplaces shows in the features."""
    args = {**TINY, **args} if backbone == "vit_tiny" else args
    cfg = RunConfig(
        method=method, data=DataConfig(channels=1), backbone=BackboneConfig(backbone, args), views=ViewConfig(size=28)
    )
    torch.manual_seed(0)
    net = METHODS[method].make_backbone(backbone, 1, cfg.views, **args)
    state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    root.mkdir(parents=True)
    save_config(root, cfg)
    if finished:
        save_backbone(root, state)
    return root


@pytest.fixture(scope="module")
def images(fmnist):
    return fmnist.images[:6]


def features(run, images):
    backbone, cfg = load_backbone(run)
    x = normalise(images, cfg.views)
    with torch.no_grad():
        return x, backbone(x), backbone.forward_tokens(x)


def rgb(x):
    return x.expand(-1, 3, -1, -1)


def close(a, b):
    return a.shape == b.shape and (a - b).abs().max().item() < 1e-4 * max(1.0, b.abs().max().item())


AVG = {"global_pool": "avg"}  # timm's mean of the patch tokens, then its final LayerNorm (fc_norm) on the mean


@pytest.mark.parametrize(
    "method, args, cls",
    [
        ("simclr", {}, "Dinov2Model"),
        ("dino", {"init_values": 0.1}, "Dinov2Model"),  # layer scale
        ("simclr", AVG, "Dinov2Model"),
        ("simclr", {**AVG, "fc_norm": False}, "Dinov2Model"),  # final LayerNorm on the tokens, then the mean
        ("mae", {}, "ViTMAEModel"),
        ("mae", AVG, "ViTMAEModel"),  # as in the mae recipes
        ("mae", {"init_values": 0.1}, "Dinov2Model"),  # ViTMAEModel has no layer scale
        ("ijepa", {**AVG, "class_token": False}, "IJepaModel"),  # as in the ijepa recipes
        ("simclr", {**AVG, "class_token": False, "fc_norm": False}, "IJepaModel"),
        ("simclr", {"reg_tokens": 2, "init_values": 0.1}, "Dinov2WithRegistersModel"),
        ("simclr", {"reg_tokens": 2, "no_embed_class": True, **AVG}, "Dinov2WithRegistersModel"),
    ],
)
def test_transformers_automodel_gives_the_runs_features(tmp_path, images, method, args, cls):
    from transformers import AutoImageProcessor, AutoModel

    run = make_run(tmp_path / "run", method, **args)
    out = export_run(run, "transformers")
    assert out == run / "export-transformers"
    model = AutoModel.from_pretrained(out).eval()
    assert type(model).__name__ == cls
    x, pooled, tokens = features(run, images)
    pixels = AutoImageProcessor.from_pretrained(out)(rgb(images), return_tensors="pt").pixel_values
    assert (pixels - rgb(x)).abs().max() < 1e-6
    with torch.no_grad():
        o = model(pixel_values=pixels, output_hidden_states=True)
    norm_on_mean = args.get("global_pool") == "avg" and args.get("fc_norm", True)
    hidden = o.hidden_states[-1] if norm_on_mean else o.last_hidden_state  # before / after model.layernorm
    if norm_on_mean:
        assert not close(model.layernorm(hidden), hidden)
    if cls == "ViTMAEModel":  # mask_ratio 0 hides no patch but shuffles them; ids_restore unshuffles
        assert o.mask.sum() == 0
        hidden = torch.cat(
            [hidden[:, :1], hidden[:, 1:].gather(1, o.ids_restore[..., None].expand_as(hidden[:, 1:]))], 1
        )
    prefix = int(args.get("class_token", True)) + args.get("reg_tokens", 0)
    theirs = hidden[:, prefix:].mean(1) if args.get("global_pool") == "avg" else hidden[:, 0]
    assert close(model.layernorm(theirs) if norm_on_mean else theirs, pooled)
    assert close(hidden[:, prefix:], tokens)
    if cls.startswith("Dinov2") and "global_pool" not in args:
        assert close(o.pooler_output, pooled)
    assert json.loads((out / "export.json").read_text())["transformers"]["class"] == cls


@pytest.mark.parametrize(
    "backbone, args",
    [
        ("vit_tiny", {}),
        ("vit_tiny", MEAN_POOLED),
        ("vit_tiny", {"reg_tokens": 2}),
        ("timm:resnet10t", {}),
        ("convnet", {}),
        ("resnet18", {}),
    ],
)
def test_timm_create_model_gives_the_runs_features(tmp_path, images, backbone, args):
    import timm

    run = make_run(tmp_path / "run", backbone=backbone, **args)
    out = export_run(run, "timm", tmp_path / "exported")
    call = json.loads((out / "export.json").read_text())["timm"]
    assert call["pretrained_cfg_overlay"]["file"] == str((out / "model.safetensors").resolve())
    model = timm.create_model(
        call["model_name"], pretrained=True, pretrained_cfg_overlay=call["pretrained_cfg_overlay"], **call["kwargs"]
    ).eval()
    x, pooled, tokens = features(run, images)
    with torch.no_grad():
        feats = model.forward_features(rgb(x))
        assert close(model(rgb(x)), pooled)
    feats = feats.flatten(2).transpose(1, 2) if feats.ndim == 4 else feats[:, getattr(model, "num_prefix_tokens", 0) :]
    assert close(feats, tokens)
    assert f"timm.create_model({call['model_name']!r}, pretrained=True" in (out / "README.md").read_text()


@pytest.mark.parametrize("backbone", ["convnet", "vit_tiny"])
def test_safetensors_rebuilds_with_freelabel(tmp_path, images, backbone):
    run = make_run(tmp_path / "run", backbone=backbone)
    out = export_run(run, "safetensors")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "backbone.safetensors", "config.yaml", "export.json"]
    _, pooled, tokens = features(run, images)
    _, pooled2, tokens2 = features(out, images)
    assert torch.equal(pooled, pooled2) and torch.equal(tokens, tokens2)


@pytest.mark.parametrize(
    "backbone, args, fmt, says",
    [
        ("convnet", {}, "transformers", "is not a timm model; formats that work: timm, onnx, safetensors"),
        ("resnet18", {}, "transformers", "formats that work: timm, onnx, safetensors"),
        (
            "timm:resnet10t",
            {},
            "transformers",
            "not a timm VisionTransformer; formats that work: timm, onnx, safetensors",
        ),
        ("vit_tiny", {**AVG, "class_token": False, "reg_tokens": 2}, "transformers", "neither registers"),
        ("vit_tiny", {"global_pool": "max"}, "transformers", "this ViT pools by 'max'"),
        ("vit_tiny", {"qk_norm": True}, "transformers", "attention norms"),
    ],
)
def test_unmappable_architecture_is_refused_and_leaves_nothing(tmp_path, backbone, args, fmt, says):
    run = make_run(tmp_path / "run", backbone=backbone, **args)
    before = sorted(run.iterdir())
    with pytest.raises(ExportError, match="cannot export") as e:
        export_run(run, fmt)
    assert says in str(e.value)
    assert sorted(run.iterdir()) == before  # no folder, no temporary folder


def test_a_wrong_export_is_caught_before_it_is_kept(tmp_path, monkeypatch):
    import freelabel.export as export

    run = make_run(tmp_path / "run")
    before = sorted(run.iterdir())
    state = export._hf_state
    monkeypatch.setattr(export, "_hf_state", lambda vit, cls: {**state(vit, cls), "layernorm.bias": torch.zeros(32)})
    with pytest.raises(ExportError, match="pooled features .* away from the run's backbone"):
        export_run(run, "transformers")
    assert sorted(run.iterdir()) == before


def test_unfinished_runs(tmp_path, images):
    run = make_run(tmp_path / "run", finished=False)
    with pytest.raises(RunError, match="has no trained weights yet"):
        export_run(run, "timm")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    # with a checkpoint, the newest checkpoint's backbone is exported
    done = make_run(tmp_path / "done")
    backbone, _ = load_backbone(done)
    save_checkpoint(run, 7, {f"backbone.{k}": v for k, v in backbone.state_dict().items()}, {"step": 7})
    out = export_run(run, "safetensors")
    assert "checkpoints/step-00000007" in json.loads((out / "export.json").read_text())["weights"]
    assert torch.equal(features(out, images)[1], features(done, images)[1])


def test_reexport_replaces_an_export_but_not_other_folders(tmp_path):
    run = make_run(tmp_path / "run")
    out = export_run(run, "safetensors")
    (out / "stale.txt").write_text("from an older export")
    assert export_run(run, "safetensors") == out and not (out / "stale.txt").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(ExportError, match="is not a freelabel export"):
        export_run(run, "timm", other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_cli(tmp_path, capsys):
    vit, cnn = make_run(tmp_path / "vit"), make_run(tmp_path / "cnn", backbone="convnet")
    assert main(["export", str(vit), "--format", "transformers", "--out", str(tmp_path / "hf")]) == 0
    assert f"to {tmp_path / 'hf'}" in capsys.readouterr().out
    assert (tmp_path / "hf" / "config.json").is_file()
    assert main(["export", str(cnn), "--format", "transformers"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("freelabel: error: cannot export") and err.endswith(
        "formats that work: timm, onnx, safetensors"
    )
    assert len(err.splitlines()) == 1 and not (cnn / "export-transformers").exists()
    assert main(["export", str(tmp_path / "nope"), "--format", "timm"]) == 2
    assert main(["export", str(vit), "--format", "coreml"]) == 2


@pytest.mark.parametrize("fmt", ["transformers", "timm", "onnx", "safetensors"])
def test_the_folders_readme_code_runs_and_gives_the_features(tmp_path, images, fmt):
    run = make_run(tmp_path / "run", "mae", **AVG)  # the mae recipes' ViT: ViTMAEModel, norm on the pooled mean
    out = export_run(run, fmt)
    code = (out / "README.md").read_text().split("```python\n")[1].split("```")[0]
    x, pooled, tokens = features(run, images)
    scope = {"images": images, "x": x} if fmt == "safetensors" else {"images": rgb(images), "x": rgb(x)}
    if fmt == "onnx":
        scope["x"] = scope["x"].contiguous().numpy()
    with torch.no_grad():
        exec(code, scope)
    theirs = [torch.as_tensor(scope["pooled"]), torch.as_tensor(scope.get("patch_tokens", scope.get("tokens")))]
    assert close(theirs[0], pooled)
    assert close(theirs[1][:, -tokens.shape[1] :], tokens)


@pytest.mark.parametrize(
    "method, backbone", [("simclr", "convnet"), ("jigsaw", "convnet"), ("simclr", "vit_tiny"), ("simclr", "resnet18")]
)
def test_onnxruntime_gives_the_runs_features_at_any_batch_size(tmp_path, images, method, backbone):
    import onnxruntime

    run = make_run(tmp_path / "run", method, backbone)
    out = export_run(run, "onnx")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", 3, 28, 28]]
    for n in (1, 6):
        x, pooled, tokens = features(run, images[:n])
        theirs = session.run(None, {"pixel_values": rgb(x).contiguous().numpy()})
        assert close(torch.from_numpy(theirs[0]), pooled) and close(torch.from_numpy(theirs[1]), tokens)


def test_a_grey_model_in_rgb_averages_the_channels(tmp_path, images):
    from freelabel.timm_models import rgb_stem

    colour = torch.randn(2, 3, 28, 28)
    for backbone in ("convnet", "vit_tiny"):  # a wrapper; a folded stem
        net, _ = load_backbone(make_run(tmp_path / backbone, backbone=backbone))
        with torch.no_grad():
            assert close(rgb_stem(net)(colour), net(colour.mean(1, keepdim=True)))


def test_transformers_pipeline_gives_a_grey_runs_features_from_grey_images(tmp_path, images):
    from PIL import Image
    from transformers import pipeline

    run = make_run(tmp_path / "run")
    extract = pipeline("image-feature-extraction", model=str(export_run(run, "transformers")), device="cpu")
    grey = [Image.fromarray(im[0].numpy(), "L") for im in images[:2]]  # the pipeline converts them to RGB
    _, pooled, tokens = features(run, images[:2])
    assert close(torch.tensor(extract(grey, pool=True)).reshape(2, -1), pooled)
    assert close(torch.tensor(extract(grey)).reshape(2, -1, tokens.shape[-1])[:, 1:], tokens)
