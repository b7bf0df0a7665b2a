"""Self-critical sequence training: captions sampled from the model, rewarded by their CIDEr-D."""
from __future__ import annotations

import torch

from ..data.text import END_ID, PAD_ID, START_ID, Vocab
from ..errors import CaptionerError
from ..models.decode import GREEDY, decode
from ..models.decoders import Decoder
from ..models.device import autocast
from ..models.search import sample, word_logprobs
from .cider import CiderD
from .config import Config, TrainConfig


def check_scst(t: TrainConfig) -> None:
    """Refuse self-critical settings that cannot run, before any epoch is spent."""
    if t.scst_start not in ("best", "last"):
        raise CaptionerError(f"[train] scst_start must be best or last, not {t.scst_start!r}")
    if t.scst_baseline not in ("mean", "greedy"):
        raise CaptionerError(f"[train] scst_baseline must be mean or greedy, not {t.scst_baseline!r}")
    if t.scst_baseline == "mean" and t.scst_samples < 2:
        raise CaptionerError("[train] scst_samples must be at least 2 with the mean baseline")


def scst_loss(cfg: Config, decoder: Decoder, pooled: torch.Tensor, grid: torch.Tensor, photos: list[int],
              cider: CiderD, vocab: Vocab, max_len: int, generator: torch.Generator):
    """Self-critical sequence training on one batch: returns the loss and each sample's reward [B * k].

    Each photo's k sampled captions are rewarded by CIDEr-D against its
    references; a caption's advantage is its reward minus the baseline (the mean
    of the photo's other samples, or its greedy caption's reward), and the loss
    is the advantage-weighted negative log-likelihood per word.
    """
    t, k = cfg.train, cfg.train.scst_samples
    words = lambda ids: [vocab.words[i] for i in ids if i not in (END_ID, PAD_ID)]  # noqa: E731
    device = decoder.device
    owner = torch.arange(len(photos), device=device).repeat_interleave(k)
    with autocast(device, enabled=t.bf16):
        samples = sample(decoder, pooled, grid, k, max_len, generator, t.scst_temperature)  # [B * k, T]
        sentences = [words(s) for s in samples.tolist()]
        rewards = torch.from_numpy(cider.scores([photos[o] for o in owner.tolist()], sentences)).to(device)
        if t.scst_baseline == "greedy":
            greedy, _ = decode(decoder, pooled, grid, GREEDY.override(max_len=max_len))
            best = [words(hyps[0].tokens) for hyps in greedy]
            baseline = torch.from_numpy(cider.scores(photos, best)).to(device).repeat_interleave(k)
        else:
            by_photo = rewards.view(-1, k)
            baseline = ((by_photo.sum(1, keepdim=True) - by_photo) / (k - 1)).view(-1)
        captions = torch.cat([torch.full((len(samples), 1), START_ID, device=device), samples], 1)
        logits, _ = decoder(pooled, grid, captions, owner)
    mask = captions[:, 1:] != PAD_ID  # [B * k, T]: the words and <end>; padding has no probability
    logp = word_logprobs(logits, t.scst_temperature).gather(2, captions[:, 1:, None]).squeeze(2).where(mask, 0.0)
    loss = -((rewards - baseline)[:, None] * logp).sum() / mask.sum()
    return loss, rewards
