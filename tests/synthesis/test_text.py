"""The frozen sentence encoder: offline loading, shapes, masks, cache."""
from __future__ import annotations

import socket

import pytest
import torch

from synthesis.text import TEXT_DIM, TextCondition, TextEncoder, get_text_encoder


def test_loads_and_encodes_with_the_network_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    encoder = TextEncoder()  # a fresh one, not the shared instance
    cond = encoder.encode(["Synthesize a T2-weighted image from a T1-weighted image."])
    assert cond.tokens.shape[0] == 1 and cond.tokens.shape[2] == TEXT_DIM
    assert torch.isfinite(cond.tokens).all()


def test_shapes_masks_and_pooled_norm() -> None:
    encoder = get_text_encoder()
    prompts = ["short prompt.", "a noticeably longer prompt with several more words in it."]
    cond = encoder.encode(prompts)
    batch, length, width = cond.tokens.shape
    assert (batch, width) == (2, TEXT_DIM)
    assert cond.mask.dtype == torch.bool and cond.mask.shape == (2, length)
    assert cond.mask[1].all() and not cond.mask[0].all()
    assert torch.all(cond.tokens[0][~cond.mask[0]] == 0)
    torch.testing.assert_close(cond.pooled.norm(dim=1), torch.ones(2))


def test_cache_and_padding_do_not_change_embeddings() -> None:
    encoder = get_text_encoder()
    alone = encoder.encode(["short prompt."])
    together = encoder.encode(["short prompt.", "another, longer prompt that pads the first one."])
    n = int(alone.mask[0].sum())
    torch.testing.assert_close(together.tokens[0, :n], alone.tokens[0, :n])
    torch.testing.assert_close(together.pooled[0], alone.pooled[0])
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_condition_helpers() -> None:
    cond = get_text_encoder().encode(["one.", "two words."])
    row = cond.index([1])
    assert isinstance(row, TextCondition) and row.tokens.shape[0] == 1
    half = cond.to("cpu", torch.float64)
    assert half.tokens.dtype == torch.float64 and half.mask.dtype == torch.bool
    with pytest.raises(ValueError, match="at least one prompt"):
        get_text_encoder().encode([])


def test_the_cache_is_bounded_and_keeps_the_newest(monkeypatch: pytest.MonkeyPatch) -> None:
    import synthesis.text as text

    monkeypatch.setattr(text, "_CACHE_SIZE", 3)
    encoder = get_text_encoder()
    encoder._cache.clear()
    first = encoder.encode(["p0."]).pooled
    encoder.encode(["p1.", "p2.", "p3."])
    assert list(encoder._cache) == ["p1.", "p2.", "p3."]  # the oldest prompt made room
    torch.testing.assert_close(encoder.encode(["p0."]).pooled, first)  # encoded again, the same
    assert len(encoder._cache) == 3
