"""Pivotal tuning's new tokens: ``TOK`` → ``<s0><s1>``, learned in *both* SDXL text encoders.

Each new token gets one embedding row per encoder (``clip_l``: text encoder 1, ``clip_g``:
text encoder 2). Rows start as small random vectors with the spread of the existing
vocabulary (as diffusers' advanced DreamBooth script does), so training starts from "some
word" rather than a copy of one. The whole embedding matrix has to require grad for autograd
to reach the rows, so after every optimizer step the old rows are put back: weight decay and
the optimizer's momentum must not drift the rest of the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genserve.lora_format import TokenEmbeddings


def token_names(n: int) -> list[str]:
    """The new tokens' names, the diffusers/fal convention: ``<s0>``, ``<s1>``, …"""
    return [f"<s{i}>" for i in range(n)]


@dataclass
class NewTokens:
    """New tokens added to a pair of tokenizers and text encoders."""

    token_abstraction: str
    tokens: list[str]
    ids: list[list[int]] = field(default_factory=list)       # per encoder
    _frozen_rows: list[torch.Tensor] = field(default_factory=list)
    _encoders: list[torch.nn.Module] = field(default_factory=list)

    @classmethod
    def add(cls, token_abstraction: str, n: int, tokenizers: list, text_encoders: list,
            generator: torch.Generator) -> NewTokens:
        """Add ``n`` tokens to every tokenizer/encoder pair and initialise their rows."""
        new = cls(token_abstraction, token_names(n))
        for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
            added = tokenizer.add_tokens(new.tokens, special_tokens=False)
            if added != n:
                raise ValueError(f"tokenizer already knows some of {new.tokens}; pick another "
                                 "`token_abstraction` setup")
            encoder.resize_token_embeddings(len(tokenizer))
            ids = tokenizer.convert_tokens_to_ids(new.tokens)
            weight = encoder.get_input_embeddings().weight
            with torch.no_grad():
                old = weight[: min(ids)]
                rows = torch.randn(n, weight.shape[1], generator=generator) * old.std()
                weight[ids] = rows.to(weight.dtype)
            new.ids.append(ids)
            new._encoders.append(encoder)
            new._frozen_rows.append(weight.detach().clone())
        return new

    def parameters(self) -> list[torch.nn.Parameter]:
        """The embedding matrices (whole: autograd has no row-level parameters)."""
        return [e.get_input_embeddings().weight for e in self._encoders]

    def set_trainable(self, trainable: bool) -> None:
        for weight in self.parameters():
            weight.requires_grad_(trainable)

    def new_row_grads(self) -> list[torch.Tensor]:
        """Views of the gradient rows that matter (for a cheap all-reduce across workers)."""
        out = []
        for weight, ids in zip(self.parameters(), self.ids, strict=True):
            if weight.grad is not None:
                out.append(weight.grad[ids])
        return out

    def set_new_row_grads(self, grads: list[torch.Tensor]) -> None:
        """Write reduced rows back and zero every other row's gradient."""
        for weight, ids, rows in zip(self.parameters(), self.ids, grads, strict=True):
            keep = torch.zeros_like(weight.grad)
            keep[ids] = rows
            weight.grad.copy_(keep)

    @torch.no_grad()
    def restore_frozen_rows(self) -> None:
        """Put every row but the new tokens' back (call after each optimizer step)."""
        for weight, frozen, ids in zip(self.parameters(), self._frozen_rows, self.ids,
                                       strict=True):
            keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
            keep[ids] = False
            weight[keep] = frozen.to(weight.device, weight.dtype)[keep]

    def embeddings(self) -> TokenEmbeddings:
        """The learned rows as the ``clip_l``/``clip_g`` file layout."""
        rows = [w.detach()[ids].float().cpu() for w, ids in zip(self.parameters(), self.ids,
                                                                 strict=True)]
        return TokenEmbeddings(self.token_abstraction, list(self.tokens), rows[0], rows[1])

    @torch.no_grad()
    def load_rows(self, emb: TokenEmbeddings) -> None:
        """Set the new rows from saved embeddings (resuming from a checkpoint)."""
        for weight, ids, rows in zip(self.parameters(), self.ids, (emb.clip_l, emb.clip_g),
                                     strict=True):
            weight[ids] = rows.to(weight.device, weight.dtype)
