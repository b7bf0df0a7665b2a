"""Training: whole captions with teacher forcing, dev-split selection by CIDEr, exact resume."""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from ..data.text import END_ID, PAD_ID, Vocab
from ..errors import CaptionerError
from ..evaluation.metrics import dev_cider
from ..extras import require
from ..features.splits import Split, TrainingData, load_training
from ..files import atomic_path, write_atomic
from ..models import confidence
from ..models.decode import GREEDY, decode
from ..models.decoders import Decoder, find_kind
from ..models.device import autocast, resolve
from ..models.encoders import load_encoder
from ..models.encoders.base import Top
from ..models.folder import TOP_FILE, Model, save_model
from ..models.glove import GLOVE_DIM, glove_vectors
from ..models.search import word_logprobs
from ..models.tags import class_words, probabilities
from . import checkpoint
from .cider import CiderD
from .config import Config
from .parallel import Workers
from .scst import check_scst, scst_loss

log = logging.getLogger(__name__)

require("train", "matplotlib")  # for curve.png: checked before training, not after its first epoch

CHECKPOINT = "checkpoint.safetensors"
LOG = "metrics.jsonl"


def caption_split(run: Run, split: Split, batch_size: int = 500) -> list[str]:
    """Greedy captions of every photo of a split (how dev scoring chooses the epoch)."""
    run.decoder.eval()
    if run.top is None:
        pooled, grid = split.pooled, split.grid
    else:
        with torch.no_grad():
            parts = [photo_features(run, split, torch.arange(i, min(i + batch_size, len(split.paths))))
                     for i in range(0, len(split.paths), batch_size)]
        pooled, grid = torch.cat([p for p, _ in parts]), torch.cat([g for _, g in parts])
    beams, _ = decode(run.decoder, pooled, grid, GREEDY.override(max_len=run.data.max_len), batch_size=batch_size)
    return [run.data.vocab.decode(hyps[0].tokens) for hyps in beams]


def photo_features(run: Run, split: Split, photos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the decoder reads of these photos of `split`, on its device: their cached features, or with a
    fine-tuned top, its features from their cached map below it (with gradient while it trains)."""
    device = run.decoder.device
    if run.top is None:
        return split.pooled[photos].to(device), split.grid[photos].to(device)
    with autocast(device, enabled=run.cfg.train.bf16), torch.set_grad_enabled(torch.is_grad_enabled() and not run.scst):
        return run.top(split.grid[photos].to(device))


@torch.inference_mode()
def own_pooled(top: Top, cells: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The encoder's own pooled vectors [n, D] (what its classifier reads) from the map below its top, cells
    [n, N, C], computed where the cells are."""
    with autocast(cells.device):
        return torch.cat([top(cells[i:i + batch_size])[0] for i in range(0, len(cells), batch_size)])


def build_decoder(cfg: Config, vocab: Vocab, feature_dim: int, classifier: torch.nn.Linear | None) -> Decoder:
    """A new decoder as [model] says: GloVe word vectors, and the encoder's `classifier` for tags, if asked."""
    torch.manual_seed(cfg.train.seed)
    model_cfg = cfg.model
    if model_cfg.glove != "none":
        if model_cfg.glove not in ("frozen", "trained"):
            raise CaptionerError(f"[model] glove must be none, frozen or trained, not {model_cfg.glove!r}")
        if model_cfg.embed_dim != GLOVE_DIM:
            raise CaptionerError(f"[model] embed_dim must be {GLOVE_DIM} with GloVe vectors, not {model_cfg.embed_dim}")
    if model_cfg.tags and classifier is None:
        raise CaptionerError(f"[model] tags needs an encoder with an ImageNet classifier (efficientnet-lite0, 1 or 2), "
                             f"and {cfg.data.encoder} has none")
    decoder = Decoder(model_cfg, len(vocab), feature_dim, classifier.out_features if model_cfg.tags else 0)
    if model_cfg.tags:
        decoder.classifier.load_state_dict(classifier.state_dict())
    if model_cfg.glove != "none":
        vectors, _ = glove_vectors(vocab.words, cfg.train.seed)
        decoder.embedding.weight.data.copy_(vectors)
        decoder.embedding.weight.requires_grad_(model_cfg.glove == "trained")
    return decoder


def learning_rate(cfg: Config, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay from lr to min_lr over the whole run."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, total - t.warmup_steps))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))


def epoch_batches(pools: list[torch.Tensor], shares: list[float], counts: torch.Tensor, batch_captions: int,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's shuffled batches of photo indices, each of about `batch_captions` captions (whole photos).

    pools[i] holds the photos of corpus i that may be drawn and counts[p] the
    captions photo p brings. An epoch holds as many captions as the pools
    together, corpus i's share of them drawn from its pool without replacement
    (in as many fresh random orders as that takes): with one corpus, every photo once.
    """
    live = [(pool, share) for pool, share in zip(pools, shares) if share > 0 and len(pool)]
    total = sum(float(counts[pool].sum()) for pool, _ in live)
    drawn = []
    for pool, share in live:
        n = round(total * share / sum(s for _, s in live) * len(pool) / float(counts[pool].sum()))
        orders = [pool[torch.randperm(len(pool), generator=generator)] for _ in range(-(-n // len(pool)))]
        drawn.append(torch.cat(orders)[:n])
    photos = torch.cat(drawn)
    photos = photos[torch.randperm(len(photos), generator=generator)]
    batch = (counts[photos].cumsum(0) - 1) // batch_captions  # [n]: the batch each photo falls in
    return list(photos.split(batch.unique_consecutive(return_counts=True)[1].tolist()))


def loss_fn(cfg: Config, logits: torch.Tensor, attention: torch.Tensor | None, captions: torch.Tensor,
            norm: tuple[float, float, float] | None = None) -> torch.Tensor:
    """The mean word cross-entropy of `captions` (and the attention regulariser); with `norm`, the (tokens,
    captions) a data-parallel worker's part is averaged over instead (see parallel.Workers.part)."""
    target = captions[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=PAD_ID,
                           label_smoothing=cfg.train.label_smoothing, reduction="mean" if norm is None else "sum")
    loss = loss if norm is None else loss / norm[0]
    if cfg.model.kind == "attention" and cfg.train.attention_reg:
        mask = (target != PAD_ID).float()[..., None]  # [B, T, 1]
        coverage = (attention * mask).sum(1)  # [B, N]: how much each cell was looked at over the caption
        spread = ((1 - coverage) ** 2).mean() if norm is None else ((1 - coverage) ** 2).sum() / (
            norm[1] * coverage.shape[1])
        loss = loss + cfg.train.attention_reg * spread
    return loss


def xe_loss(cfg: Config, decoder: Decoder, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor,
            owner: torch.Tensor, chance: float, generator: torch.Generator,
            norm: tuple[float, float, float] | None = None) -> torch.Tensor:
    """Cross-entropy of one batch of captions [B, T], caption b of photo owner[b]; with scheduled
    sampling, each input word is the decoder's own guess with probability `chance`."""
    with autocast(decoder.device, enabled=cfg.train.bf16):
        inputs = with_own_words(decoder, pooled, grid, captions, owner, chance, generator) if chance else captions
        logits, attention = decoder(pooled, grid, inputs, owner)
    return loss_fn(cfg, logits.float(), attention.float() if attention is not None else None, captions, norm)


def with_own_words(decoder: Decoder, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor,
                   owner: torch.Tensor, chance: float, generator: torch.Generator) -> torch.Tensor:
    """Scheduled sampling, in two passes: each input word after <start> is, with probability `chance`,
    replaced by the word the decoder itself predicts there from the true words before it."""
    with torch.no_grad():
        logits, _ = decoder(pooled, grid, captions, owner)  # [B, T - 1, V]
    guesses = word_logprobs(logits[:, :-1]).argmax(-1)
    words = captions[:, 1:-1]  # inputs after <start>; the last position is never an input
    # Drawn where the generator is (the host), so a run draws the same numbers on any device.
    drawn = torch.rand(words.shape, generator=generator, device=generator.device).to(words.device)
    swap = (drawn < chance) & (words != PAD_ID) & (words != END_ID)
    return torch.cat([captions[:, :1], torch.where(swap, guesses, words), captions[:, -1:]], 1)


def plot_curve(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in log]
    xe = [r for r in log if "train_loss" in r]  # self-critical epochs have a reward instead
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["epoch"] for r in xe], [r["train_loss"] for r in xe], "o-", color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r["dev_cider"] for r in log], "s-", color="tab:red", label="dev CIDEr")
    ax2.set_ylabel("dev CIDEr (greedy)", color="tab:red")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def check_run(cfg: Config, resume: bool) -> None:
    """Refuse a run that cannot start: an existing run without `resume`, nothing to resume, bad settings."""
    out = Path(cfg.train.out)
    if (out / CHECKPOINT).exists() and not resume:
        raise CaptionerError(f"{out} already holds a training run: pass --resume to continue it, "
                             "or choose another [train] out folder")
    if resume and not (out / CHECKPOINT).exists():
        raise CaptionerError(f"{out / CHECKPOINT} does not exist: there is nothing to resume (start without --resume)")
    find_kind(cfg.model.kind)  # an unknown decoder is said before the data loads
    if cfg.train.scst_epochs:
        check_scst(cfg.train)
    if cfg.train.encoder_top < 0 or cfg.train.encoder_lr_scale < 0:
        raise CaptionerError("[train] encoder_top and encoder_lr_scale must not be negative")


@dataclass
class Run:
    """What a training run works on, and where it is (`state`, saved in every checkpoint)."""

    cfg: Config
    data: TrainingData  # with a top: each photo's features are the map below it
    decoder: Decoder
    top: Top | None  # the encoder's top, fine-tuned in the cross-entropy phase ([train] encoder_top)
    opt: torch.optim.Optimizer
    state: dict  # epoch, step, best_cider, best_epoch, bad_epochs, scst_from (the epoch self-critical began)
    log: list[dict]  # one record per epoch, as metrics.jsonl holds them
    captions: torch.Tensor  # [m, L] every training caption's ids
    lengths: torch.Tensor  # [m] their lengths, <start> and <end> included
    owner: torch.Tensor  # [m] the photo of each
    counts: torch.Tensor  # [n] captions per photo
    rows_of: tuple[torch.Tensor, ...]  # photo -> its caption rows
    pools: list[torch.Tensor]  # per corpus, the photos cross-entropy draws
    scst_pools: list[torch.Tensor]  # per corpus, the photos with enough references for self-critical training
    cider: CiderD | None  # the self-critical reward, over the photos of scst_pools
    cider_row: dict[int, int]  # photo -> its row in `cider`
    words: list[str] | None  # the caption word of each of the encoder's classes (tags.json)
    centres: torch.Tensor  # where the training photos lie (the confidence's centroids, of the encoder's own features)
    workers: Workers | None

    @property
    def lead(self) -> bool:
        """Whether this process chooses the epoch and writes the files (the only one, or rank 0)."""
        return self.workers is None or self.workers.rank == 0

    @property
    def learned(self) -> list[torch.nn.Parameter]:
        """What the optimiser trains now: the decoder's learned parameters (and the top's, in cross-entropy)."""
        return [p for group in self.opt.param_groups for p in group["params"]]

    @property
    def scst(self) -> bool:
        return self.state["scst_from"] is not None

    @property
    def total_steps(self) -> int:
        """The cross-entropy phase's steps, over which the learning rate and scheduled sampling move."""
        return math.ceil(len(self.owner) / self.cfg.train.batch_captions) * self.cfg.train.epochs


def optimizer(cfg: Config, decoder: Decoder, lr: float, top: Top | None = None) -> torch.optim.Optimizer:
    """Adam over the decoder's learned parameters, and the top's at encoder_lr_scale x the rate (its group's
    lr_scale): a run's first, and the self-critical phase's fresh one (without the top)."""
    groups = [{"params": [p for p in decoder.parameters() if p.requires_grad]}]
    if top is not None:
        scale = cfg.train.encoder_lr_scale
        groups.append({"params": list(top.parameters()), "lr": lr * scale, "lr_scale": scale})
    return torch.optim.Adam(groups, lr=lr, weight_decay=cfg.train.weight_decay)


def train(cfg: Config, resume: bool = False, stop_after: int | None = None, progress: bool = True,
          workers: Workers | None = None, device: str | torch.device = "auto") -> Path:
    """Train a decoder as `cfg` says, on `device` (see models.device.resolve); returns the folder of the model
    selected on the dev split.

    Writes into cfg.train.out: checkpoint.safetensors (every epoch, atomically),
    metrics.jsonl, curve.png and model/ (the best epoch by dev CIDEr), all from
    host copies, so they load on any device. With `resume`, continues from the
    checkpoint exactly as if never stopped (checked on the CPU).
    `stop_after` ends this run after that many epochs (resume later).
    With `workers`, this process is one of several data-parallel workers (see
    parallel.py and distributed/train.py): rank 0 chooses the epoch and writes every file.
    """
    device = resolve(device)
    check_run(cfg, resume)
    if cfg.train.threads and workers is None:
        torch.set_num_threads(cfg.train.threads)
    run = start(cfg, resume, progress, workers, device)
    progress = progress and run.lead
    first = run.state["epoch"]
    while next_phase(run) and (stop_after is None or run.state["epoch"] - first < stop_after):
        started = time.time()
        seen, total = train_epoch(run, progress)
        end_epoch(run, seen, total, started, progress)
    return Path(cfg.train.out) / "model"


def start(cfg: Config, resume: bool, progress: bool, workers: Workers | None, device: torch.device) -> Run:
    """The run's data (encoded where not cached; held on the host), a new decoder on `device` and its optimiser,
    or the checkpoint's with `resume`."""
    out = Path(cfg.train.out)
    lead = workers is None or workers.rank == 0
    blocks = cfg.train.encoder_top
    # A worker holds only its part of the grids; with a top, every map below it (small), for the features below.
    owns = workers.owns if workers and not blocks else None
    data = load_training(cfg.data, progress and lead, owns, device, blocks)
    split, vocab = data.train, data.vocab
    # The classifier names the classes' words from every training photo's features: where those are, the host.
    encoder = load_encoder(cfg.data.encoder, cfg.data.input_size, split.pooled.device, blocks)
    classifier = encoder.classifier
    own = own_pooled(encoder.top, split.grid) if blocks else split.pooled  # the encoder's own pooled vectors
    words = class_words(probabilities(classifier, own), split.references, vocab) if classifier is not None else None
    captions, owner = split.captions(vocab, data.max_len)
    counts = torch.bincount(owner, minlength=len(split.paths))
    pools = [torch.nonzero(data.source == i).squeeze(1) for i in range(len(data.shares))]
    scst_pools = [pool[counts[pool] >= cfg.train.scst_min_refs] for pool in pools]
    cider, cider_row = None, {}
    if cfg.train.scst_epochs:
        scored = torch.cat(scst_pools).tolist()
        if not scored:
            raise CaptionerError(f"no training photo has {cfg.train.scst_min_refs} references for self-critical "
                                 "training: lower [train] scst_min_refs")
        cider = CiderD([[r.split() for r in split.references[p]] for p in scored])
        cider_row = {p: row for row, p in enumerate(scored)}
    top = copy.deepcopy(encoder.top).requires_grad_(True).to(device) if blocks else None
    decoder = build_decoder(cfg, vocab, top.dim if top else split.pooled.shape[1], classifier).to(device)
    opt = optimizer(cfg, decoder, cfg.train.lr, top)
    state = {"epoch": 0, "step": 0, "best_cider": -1.0, "best_epoch": 0, "bad_epochs": 0, "scst_from": None,
             "config": cfg.to_dict()}
    log = []
    if resume:
        state = checkpoint.load(out / CHECKPOINT, decoder, opt, top)
        if state["config"] != cfg.to_dict():
            raise CaptionerError(f"{out / CHECKPOINT} was made with a different config: resume with the same "
                                 "config file")
        if (out / LOG).exists():  # an epoch logged after the last checkpoint is redone
            log = [json.loads(line) for line in (out / LOG).read_text().splitlines()][:state["epoch"]]
    if lead:
        out.mkdir(parents=True, exist_ok=True)
    return Run(cfg, data, decoder, top, opt, state, log, captions, (captions != PAD_ID).sum(1), owner,
               counts, owner.argsort(stable=True).split(counts.tolist()), pools, scst_pools, cider, cider_row, words,
               confidence.centroids(own), workers)


def next_phase(run: Run) -> bool:
    """Whether the run goes on; after the last cross-entropy epoch (or when dev stopped improving), starts the
    self-critical phase if there is one: from the best epoch or the last, with a fresh optimiser for the decoder
    (a fine-tuned top stays as it is from then on)."""
    t, s = run.cfg.train, run.state
    if not run.scst and (s["epoch"] >= t.epochs or s["bad_epochs"] >= t.patience):
        if not t.scst_epochs:
            return False
        if t.scst_start == "best":
            run.decoder.load_state_dict(load_file(str(Path(t.out) / "model" / "model.safetensors")))
            if run.top is not None:
                run.top.load_state_dict(load_file(str(Path(t.out) / "model" / TOP_FILE)))
        run.opt = optimizer(run.cfg, run.decoder, t.scst_lr)
        s.update(scst_from=s["epoch"], bad_epochs=0)
    return not (run.scst and (s["epoch"] - s["scst_from"] >= t.scst_epochs or s["bad_epochs"] >= t.patience))


def train_epoch(run: Run, progress: bool) -> tuple[int, float]:
    """One epoch of the current phase; returns the captions seen and their summed loss (or reward)."""
    t, scst, epoch = run.cfg.train, run.scst, run.state["epoch"] + 1
    run.decoder.train(not scst)  # self-critical: no dropout, so sampling and scoring see one model
    generator = torch.Generator().manual_seed(t.seed * 10_000 + epoch)
    if scst:  # each photo's k samples count as its captions
        batches = epoch_batches(run.scst_pools, run.data.shares, torch.full_like(run.counts, t.scst_samples),
                                t.batch_captions, generator)
    else:
        batches = epoch_batches(run.pools, run.data.shares, run.counts, t.batch_captions, generator)
    last = (run.state["scst_from"] + t.scst_epochs) if scst else t.epochs
    bar = tqdm(batches, desc=f"{'self-critical ' if scst else ''}epoch {epoch}/{last}", unit="batch",
               disable=not progress, dynamic_ncols=True)
    started, seen, total = time.time(), 0, 0.0
    for photos in bar:
        count, value = train_step(run, photos, generator)
        seen, total = seen + count, total + value
        if seen:
            shown = {"reward": f"{total / seen:.3f}"} if scst else {"loss": f"{total / seen:.3f}"}
            bar.set_postfix(**shown, caps_s=f"{seen / (time.time() - started):.0f}")
    bar.close()
    return run.workers.sum(total, seen)[::-1] if run.workers else (seen, total)


def train_step(run: Run, photos: torch.Tensor, generator: torch.Generator) -> tuple[int, float]:
    """One optimiser step on a batch of photos (this worker's part of it); returns what it counts and sums."""
    cfg, s, workers, device = run.cfg, run.state, run.workers, run.decoder.device
    split, lengths, total_steps = run.data.train, run.lengths, run.total_steps
    norm = None  # one worker: the batch's own means
    if workers:
        photos, norm = workers.part(photos, run.counts, lengths, run.rows_of)
    if not run.scst:
        for group in run.opt.param_groups:
            group["lr"] = learning_rate(cfg, s["step"], total_steps) * group.get("lr_scale", 1.0)
    run.opt.zero_grad(set_to_none=True)
    count, value = 0, 0.0
    if len(photos):  # a worker's part of a small batch may be empty
        pooled, grid = photo_features(run, split, photos)  # the batch, on the decoder's device
        idx = torch.cat([run.rows_of[p] for p in photos.tolist()])  # the batch's reference captions
        which = torch.repeat_interleave(torch.arange(len(photos)), run.counts[photos]).to(device)  # caption -> photo
        references = run.captions[idx, :int(lengths[idx].max())].to(device)
        if run.scst:
            loss, rewards = scst_loss(cfg, run.decoder, pooled, grid, [run.cider_row[p] for p in photos.tolist()],
                                      run.cider, run.data.vocab, run.data.max_len, generator)
            if norm:  # a part's mean, weighed by its share of the batch's photos
                loss = loss * len(photos) / norm[2]
            if cfg.train.scst_xe:
                loss = loss + cfg.train.scst_xe * xe_loss(cfg, run.decoder, pooled, grid, references, which, 0.0,
                                                          generator, norm)
            count, value = len(rewards), float(rewards.sum())  # the mean reward is what is shown
        else:
            chance = cfg.train.scheduled_sampling * s["step"] / total_steps
            loss = xe_loss(cfg, run.decoder, pooled, grid, references, which, chance, generator, norm)
            count, value = len(idx), loss.item() * (norm[1] if norm else len(idx))
        loss.backward()
    if workers:
        workers.average_gradients(run.learned)
    if cfg.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.learned, cfg.train.grad_clip)
    run.opt.step()
    s["step"] += 1
    return count, value


def end_epoch(run: Run, seen: int, total: float, started: float, progress: bool) -> None:
    """Score the epoch on the dev sets, keep the model if it is the best, and write the checkpoint and the log."""
    cfg, s, workers, out = run.cfg, run.state, run.workers, Path(run.cfg.train.out)
    epoch, scst = s["epoch"] + 1, run.scst
    dev = -1.0
    if run.lead:
        predictions = {name: caption_split(run, split) for name, split in run.data.dev.items()}
        scores = {name: dev_cider(predictions[name], split.references) for name, split in run.data.dev.items()}
        dev = sum(scores.values()) / len(scores)  # what chooses the epoch
        sample = next(iter(predictions.values()))[0]
        record = {"epoch": epoch, "phase": "scst" if scst else "xe",
                  "train_reward" if scst else "train_loss": total / seen, "dev_cider": dev, "dev": scores,
                  "lr": run.opt.param_groups[0]["lr"], "seconds": time.time() - started,  # training and dev decoding
                  "captions_per_s": seen / (time.time() - started), "sample": sample}
    if workers:
        dev = workers.from_first(dev)
    if dev > s["best_cider"]:
        s.update(best_cider=dev, best_epoch=epoch, bad_epochs=0)
        if run.lead:
            top = None if run.top is None else run.top.state_dict()
            save_model(out / "model", Model(run.decoder, run.data.vocab, cfg.data.encoder, cfg.data.input_size,
                                            cfg.decode, run.words, top_blocks=cfg.train.encoder_top, top=top),
                       card=training_card(cfg, record))
            confidence.save(out / "model", run.centres)
    else:
        s["bad_epochs"] += 1
    s["epoch"] = epoch
    if not run.lead:
        workers.from_first(0.0)  # wait for rank 0's checkpoint (and model) before the next epoch may read them
        return
    checkpoint.save(out / CHECKPOINT, run.decoder, run.opt, s, run.top)
    run.log.append(record)
    write_atomic(out / LOG, "".join(json.dumps(r) + "\n" for r in run.log))
    plot_curve(run.log, out / "curve.png")
    if progress:
        last = (s["scst_from"] + cfg.train.scst_epochs) if scst else cfg.train.epochs
        left = (last - epoch + (0 if scst else cfg.train.scst_epochs)) * sum(r["seconds"] for r in run.log) / len(
            run.log)
        trained = f"reward {total / seen:.3f}" if scst else f"loss {total / seen:.3f}"
        each = f" ({', '.join(f'{name} {v:.1f}' for name, v in scores.items())})" if len(scores) > 1 else ""
        log.info(f"epoch {epoch}: {trained}, dev CIDEr {dev:.1f}{each} "
                 f"(best {s['best_cider']:.1f} at epoch {s['best_epoch']}), "
                 f"at most {left / 60:.0f} min left; e.g. \"{sample}\"")
    if workers:
        workers.from_first(0.0)


def training_card(cfg: Config, record: dict) -> str:
    """A first model card: how this model was trained; `captioner evaluate` adds test metrics."""
    t = cfg.train
    blocks = f"{t.encoder_top} blocks" if t.encoder_top > 1 else "block"
    tuned = f"its last {blocks} and head fine-tuned at {t.encoder_lr_scale:g}x the decoder's learning rate" \
        if t.encoder_top else "frozen"
    return (f"# captioner model\n\n"
            f"- encoder: {cfg.data.encoder} at {cfg.data.input_size}x{cfg.data.input_size} ({tuned})\n"
            f"- decoder: {cfg.model.kind}, {json.dumps(asdict(cfg.model))}\n"
            f"- corpora: {', '.join(f'{c.prepared} (share {c.share:g})' for c in cfg.data.corpora)}; "
            f"dev: {', '.join(cfg.data.dev)}\n"
            f"- selected at epoch {record['epoch']} by dev CIDEr (greedy) {record['dev_cider']:.1f}\n"
            f"- training config: {json.dumps(cfg.to_dict())}\n")
