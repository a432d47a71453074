import csv
import json

import pytest
import torch

from freelabel.cli import main

TINY = [
    "backbone.args.widths=[8,16]",
    "views.size=16",
    "method_args.embed_dim=16",
    "log_every=1",
    "method_args.text_args={width: 32, layers: 1, heads: 2, max_length: 16}",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, recipe",
    [("clip", "clip-emoji-captions"), ("siglip", "siglip-emoji-captions"), ("clip", "lit-emoji-captions")],
)
def test_tiny_run_then_zeroshot_retrieval_and_a_folder(method, recipe, captioned, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [a for s in TINY for a in ("--set", s)]
    assert (
        main(
            [
                "pretrain",
                method,
                "--data",
                str(captioned),
                "--recipe",
                recipe,
                "--steps",
                "3",
                "--batch-size",
                "8",
                "--out",
                str(run),
                *sets,
            ]
        )
        == 0
    )
    assert torch.isfinite(torch.tensor(json.loads((run / "metrics.json").read_text())["pretrain"]["final_loss"]))
    assert main(["eval", "zeroshot", str(run)]) == 0
    assert main(["eval", "retrieval", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    zs = metrics["zeroshot"][str(captioned)]["class"]
    assert zs["classes"] == 3 and zs["chance"] == pytest.approx(100 / 3) and 0 <= zs["top1"] <= 100
    r = metrics["retrieval"][str(captioned)]
    assert r["pairs"] == zs["images"] and r["image_to_text_r10"] >= r["image_to_text_r5"] >= r["image_to_text_r1"]
    assert 0 <= r["clip_score"] <= 2.5
    out = tmp_path / "preds.csv"
    assert (
        main(
            [
                "zeroshot",
                str(captioned / "bag"),
                "--labels",
                "bag, trouser,sneaker",
                "--model",
                str(run),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 10 and {r["label"] for r in rows} <= {"bag", "trouser", "sneaker"}
    assert all(-1 <= float(r["score"]) <= 1 for r in rows)
    # An index of the run's shared space answers text queries as the model itself ranks the images.
    from freelabel.data.sources import load_image
    from freelabel.encoder import load_encoder
    from freelabel.pipelines.search import build_index, search

    build_index(captioned / "bag", run, tmp_path / "idx", device="cpu")
    hits = search(tmp_path / "idx", text="a bag", k=10, device="cpu")
    model = load_encoder(run, device="cpu")
    images = torch.stack([load_image(captioned / "bag" / h["path"], 16) for h in hits])
    direct = (model.encode_image(images) @ model.encode_text(["a bag"]).T).squeeze(1)
    torch.testing.assert_close(torch.tensor([h["score"] for h in hits]), direct, atol=1e-4, rtol=0)
    assert direct.tolist() == sorted(direct.tolist(), reverse=True)


def tiny_transformers_clip(folder):
    """A tiny random CLIP saved like a hub checkpoint, with MiniLM's word-piece tokenizer."""
    import transformers as tf

    from freelabel.text import minilm_folder

    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_folder())
    text = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=32,
        pad_token_id=0,
        bos_token_id=101,
        eos_token_id=102,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_local_transformers_clip_takes_the_same_path(captioned, tmp_path, capsys):
    folder = tiny_transformers_clip(tmp_path / "tiny-clip")
    assert main(["eval", "zeroshot", str(folder), "--data", str(captioned)]) == 0
    assert json.loads(capsys.readouterr().out)["class"]["images"] > 0
    assert main(["zeroshot", str(captioned / "trouser"), "--labels", "bag,trouser", "--model", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "image,label,score" and len(lines) == 11


def test_image_text_commands_refuse_what_they_cannot_use(tmp_path, capsys):
    assert main(["eval", "zeroshot", str(tmp_path)]) == 2
    assert "is neither a freelabel run (no config.yaml) nor a transformers model folder" in capsys.readouterr().err
    assert main(["shards", "make", str(tmp_path / "none.csv"), str(tmp_path / "out")]) == 2
    assert "caption file" in capsys.readouterr().err
