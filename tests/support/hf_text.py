"""A tiny Hugging Face text tower for the tests: a random 2-layer BERT (width 32) with a WordPiece tokenizer of
the words the tests write, saved as an HF model folder; and its encoder tensors under CLIP names."""
from __future__ import annotations

from pathlib import Path

import torch

from common.weights.safe_load import load_weights

TEXTS = ["a photo of a sneaker.", "itap of the ankle boot.", "a coat"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "-", "/", "a", "itap", "of", "bad", "photo", "the",
         "origami", "large", "small", "in", "video", "game", "art", "t", "shirt", "top", "trouser", "pullover",
         "dress", "coat", "sandal", "sneaker", "bag", "ankle", "boot"]


def save_tiny_bert(folder: Path) -> Path:
    """A random 2-layer BERT (width 32) + a WordPiece tokenizer of VOCAB, saved as an HF model folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    return folder


def pretrained_encoder(folder: Path) -> dict[str, torch.Tensor]:
    """The HF folder's encoder tensors as a CLIP text tower names them (`text.transformer.*`)."""
    return {f"text.transformer.{k}": v for k, v in load_weights(folder / "model.safetensors").items()}
