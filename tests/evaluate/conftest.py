"""A word-level tokenizer and a hand-set causal model whose preferences the tests choose."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

WORDS = ["<|endoftext|>", "<unk>", "Question:", "Answer:", "What", "is", "the", "capital", "of", "?", ".", "\n",
         "paris", "rome", "madrid", "berlin", "france", "italy", "spain", "germany",
         "a", "very", "long", "answer", "x", "y", "z", "one", "two", "three"]


def word_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.WhitespaceSplit()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return tok


class BagModel(nn.Module):
    """logits[t] = sum of B[token_s] over s <= t: causal, so right padding never changes a row."""

    def __init__(self, vocab: int):
        super().__init__()
        self.B = torch.zeros(vocab, vocab)
        self.calls = 0

    def prefer(self, after: str, nxt: str, strength: float = 8.0) -> "BagModel":
        self.B[WORDS.index(after), WORDS.index(nxt)] += strength
        return self

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.B[tokens].cumsum(dim=1)


@pytest.fixture
def tok() -> Tokenizer:
    return word_tokenizer()


@pytest.fixture
def bag() -> BagModel:
    return BagModel(len(WORDS))


@pytest.fixture
def words() -> list[str]:
    return WORDS


@pytest.fixture
def new_bag():
    return lambda: BagModel(len(WORDS))
