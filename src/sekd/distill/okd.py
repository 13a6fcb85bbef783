"""MetricGAN-OKD (multi-metric online KD) and the single-metric MetricGAN+ baseline (methods.md §1).

The epoch schedule follows the official ``SE/train.py``:

1. The normalised scores of the noisy training utterances are computed once per utterance and
   cached (lazily: the first time an utterance is drawn, in the same parallel call as the enhanced
   scores; the values are those of an up-front pass, without scoring utterances never drawn).
2. Epoch 1 trains the discriminator only; every later epoch runs a generator then a D phase.
3. Generator phase, over ``samples_per_epoch`` shuffled utterances (batch 1, variable length):
   the peers' enhanced log1p spectrograms ``S_hat_j`` are computed first with gradients stopped,
   then each generator i takes one Adam step on
   ``L_Gi = (D_i([S, S_hat_i]) - 1)^2 + alpha * sum_{j != i} MSE(S_hat_i, sg(S_hat_j))``.
4. D phase: a random generator k enhances the same utterances; the true scores of **all** N metrics
   are computed in worker processes (a pool kept for the run); D takes one step per input type
   (enhanced, noisy, clean; clean targets 1) per utterance, then one enhanced-only step per item of
   the current set plus a random ``hist_portion`` of the history, appends the current set to the
   history, and trains once more on the current set.

The MetricGAN+ baseline is the same trainer with one metric and no peer term. As in the official
code D stays in training mode throughout (its BatchNorm always normalises with the statistics of
the pair it sees, also when it scores a generator's output), and D's inputs in the D phase are the
log1p spectrograms of the *resynthesised* waveforms (the official code re-reads the written WAVs).

Departures, each for a stated reason: model selection is on the **validation** split (each
generator by its own target metric, on ``valid_utterances`` evenly spaced utterances; the official
code picks by test PESQ); the history's audio is kept as float16 shard files in the checkpoint
folder (the official code keeps 16-bit WAVs on disk), and the current set is rounded the same way;
``segment_seconds`` optionally crops every training utterance once (a fixed crop per utterance, so
the noisy-score cache stays valid) to make the demo affordable on a CPU; ``init: nokd`` starts
every generator from the no-KD student of the same seed (its GRU and mask projection; the
learnable-sigmoid slopes keep their init of 1), so a CPU-sized budget fine-tunes a working student
instead of leaving a random one (the official code trains from scratch: ``init: scratch``).
STOI/ESTOI targets are an extension: the official SE code has no STOI target.

Cost. The discriminator dominates: on a 1 s crop at hop 128 (126 x 257 bins) a D step takes about
0.65 s of one CPU core and a generator step (D forward, backward to its input) about 0.4 s. An
epoch makes ``N * n`` generator steps and ``5 n + int(hist_portion * H)`` D steps (``n`` utterances,
``H`` the history size), plus scoring and validation, so the official 750 x 100 schedule on whole
utterances is GPU work; the demo values in params.yaml (3 epochs x 6 one-second crops) take about
a minute and a half of one core.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from sekd.data.datasets import MixtureDataset
from sekd.device import pick_device, seed_everything, set_threads
from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, atomic_dir, atomic_path, write_json
from sekd.metrics import InvalidScoreError
from sekd.metrics.composite import composite
from sekd.metrics.evaluate import (
    _init_worker,
    _single_thread_environment,
    _torch_single_thread,
    evenly_spaced,
)
from sekd.metrics.pesq_metric import pesq_score
from sekd.metrics.stoi_metric import stoi_scores
from sekd.models import build_model
from sekd.models.complexity import count_parameters, macs_per_second
from sekd.models.metricgan import MetricDiscriminator, MetricGANGRU, discriminator_input
from sekd.models.store import WEIGHTS, load_weights, save_model
from sekd.tracking import NullTracker
from sekd.train import (
    KILL_ENV,
    config_hash,
    enhance,
    evaluate_si_sdr,
    file_sha256,
    input_si_sdr,
    log_examples,
    read_checkpoint,
    rng_state,
    set_rng_state,
)

log = logging.getLogger(__name__)

METRICS = ("pesq", "csig", "cbak", "covl", "stoi", "estoi")
COMPOSITE_METRICS = ("csig", "cbak", "covl")
STOI_METRICS = ("stoi", "estoi")
GENERATOR_MODEL = "metricgan_gru"
STUDENT_MODELS = ("gru_mask", GENERATOR_MODEL)
CHECKPOINT = "last.pt"
HISTORY_DIR = "history"
GENERATORS_DIR = "generators"
AUDIO_EXAMPLES = 2
CLEAN_TARGET = 1.0
COMMON_KEYS = ("epochs", "samples_per_epoch", "hist_portion", "lr", "grad_clip", "min_mask")
OKD_KEYS = ("metrics", "alpha", *COMMON_KEYS)
METRICGAN_KEYS = ("metric", *COMMON_KEYS)
OPTIONAL_KEYS: dict[str, Any] = {
    "segment_seconds": None,
    "valid_utterances": None,
    "init": "scratch",
}
INITS = ("scratch", "nokd")  # nokd: every generator starts from the no-KD student of its seed
GENERATOR_ONLY_KEYS = ("activation.slope",)  # MetricGAN's learnable-sigmoid slopes (init 1)


# ---------------------------------------------------------------- metric normalisation


def normalize_pesq(pesq: float | np.ndarray) -> float | np.ndarray:
    """NELE-GAN's sigmoid ``1 / (1 + exp(-1.5 (PESQ - 2.5)))`` (official ``PESQ_normalize``)."""
    return 1.0 / (1.0 + np.exp(-1.5 * (np.asarray(pesq, dtype=np.float64) - 2.5)))


def normalize_composite(score: float | np.ndarray) -> float | np.ndarray:
    """``(C - 1) / 4``: CSIG/CBAK/COVL from [1, 5] to [0, 1] (official ``CMOS_normalize``)."""
    return (np.asarray(score, dtype=np.float64) - 1.0) / 4.0


def normalize_score(metric: str, value: float) -> float:
    """The D target of a raw ``metric`` value; STOI/ESTOI are already in [0, 1]."""
    if metric == "pesq":
        return float(normalize_pesq(value))
    if metric in COMPOSITE_METRICS:
        return float(normalize_composite(value))
    if metric in STOI_METRICS:
        return float(value)
    raise SekdError(f"okd metric {metric!r}: not one of {METRICS}")


def raw_scores(reference: np.ndarray, estimate: np.ndarray, metrics: Sequence[str]) -> dict:
    """Raw values of ``metrics`` for one pair; an undefined one is NaN (never a sentinel).

    PESQ is computed once and shared with the composite measures, which need it anyway.
    """
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    values = dict.fromkeys(metrics, math.nan)
    if not np.isfinite(estimate).all():
        return values
    wanted = set(metrics)
    pesq = math.nan
    if wanted & {"pesq", *COMPOSITE_METRICS}:
        with contextlib.suppress(InvalidScoreError):
            pesq = pesq_score(reference, estimate, "wb", SAMPLE_RATE)
        if "pesq" in wanted:
            values["pesq"] = pesq
    if wanted & set(COMPOSITE_METRICS) and math.isfinite(pesq):
        with contextlib.suppress(InvalidScoreError):
            scores = composite(reference, estimate, SAMPLE_RATE, pesq_mos_lqo=pesq)
            values.update({m: getattr(scores, m) for m in COMPOSITE_METRICS if m in wanted})
    if wanted & set(STOI_METRICS):
        with contextlib.suppress(InvalidScoreError):
            stoi = stoi_scores(reference, estimate, SAMPLE_RATE)
            values.update({m: stoi[m] for m in STOI_METRICS if m in wanted})
    return values


def score_job(job: tuple) -> np.ndarray:
    """``(reference, estimate, metrics, normalise)`` -> scores in ``metrics`` order (worker side)."""
    reference, estimate, metrics, normalise = job
    values = raw_scores(reference, estimate, metrics)
    if normalise:
        values = {m: normalize_score(m, v) if math.isfinite(v) else v for m, v in values.items()}
    return np.array([values[m] for m in metrics], dtype=np.float64)


class ScoringPool:
    """Single-threaded worker processes kept for a whole run (spawning them costs seconds).

    Like ``sekd.metrics.evaluate``: the ``spawn`` start method, and thread limits in the
    environment whenever a worker may start (the executor starts workers lazily on submit), so
    numpy and torch load single-threaded. ``workers <= 1`` scores in this process instead.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))
        self._pool: ProcessPoolExecutor | None = None
        if self.workers > 1:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_init_worker
            )

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any]) -> list:
        if self._pool is None or len(jobs) < 2:
            with _torch_single_thread():
                return [fn(job) for job in jobs]
        chunksize = max(1, math.ceil(len(jobs) / (self.workers * 4)))
        with _single_thread_environment():
            return list(self._pool.map(fn, jobs, chunksize=chunksize))

    def pids(self) -> list[int]:
        """Process ids of the started workers (none before the first parallel ``map``)."""
        return [] if self._pool is None else sorted(self._pool._processes)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- configuration


def okd_config(cfg: dict) -> dict:
    """Canonical trainer config from ``distill.okd`` or ``distill.metricgan``.

    ``metricgan`` (a single ``metric``, no ``alpha``) becomes ``metrics: [metric]``, ``alpha: 0``.
    """
    single = "metric" in cfg
    section = "distill.metricgan" if single else "distill.okd"
    required = METRICGAN_KEYS if single else OKD_KEYS
    unknown = sorted(set(cfg) - set(required) - set(OPTIONAL_KEYS))
    if unknown:
        raise SekdError(f"{section} key '{unknown[0]}': unknown")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise SekdError(f"{section} key '{missing[0]}': required but missing")
    out = {**OPTIONAL_KEYS, **cfg}
    if single:
        out["metrics"], out["alpha"] = [out.pop("metric")], 0.0
    out["metrics"] = list(out["metrics"])
    if out["init"] not in INITS:
        raise SekdError(f"{section} key 'init': {out['init']!r} is not one of {INITS}")
    bad = [m for m in out["metrics"] if m not in METRICS]
    if bad or not out["metrics"] or len(set(out["metrics"])) != len(out["metrics"]):
        raise SekdError(
            f"{section} key 'metrics': {out['metrics']} must be distinct, from {METRICS}"
        )
    return out


def generator_config(student_model_cfg: dict, min_mask: float) -> dict:
    """The student's GRU conf under the MetricGAN output stage (``metricgan_gru``)."""
    if student_model_cfg.get("name") not in STUDENT_MODELS:
        raise SekdError(
            f"student.model.name: {student_model_cfg.get('name')!r}; MetricGAN generators share "
            f"the student architecture and need one of {STUDENT_MODELS}"
        )
    conf = {**(student_model_cfg.get("conf") or {}), "min_mask": float(min_mask)}
    return {"name": GENERATOR_MODEL, "conf": conf}


# ---------------------------------------------------------------- losses


def generator_loss(
    disc: nn.Module,
    head: int,
    clean: torch.Tensor,
    enhanced: torch.Tensor,
    peers: Sequence[torch.Tensor],
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L_G, adversarial, dml)``: ``(D_head([S, S_hat]) - 1)^2 + alpha * sum_j MSE(S_hat, sg(peer_j))``.

    A sum over peers, not a mean (official ``kd_type='dml'``); peers never receive gradients.
    """
    score = disc(discriminator_input(clean, enhanced))[:, head]
    adversarial = F.mse_loss(score, torch.full_like(score, CLEAN_TARGET))
    dml = enhanced.new_zeros(())
    for peer in peers:
        dml = dml + F.mse_loss(enhanced, peer.detach())
    return adversarial + alpha * dml, adversarial, dml


def discriminator_loss(
    disc: nn.Module, clean: torch.Tensor, test: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """MSE between D's N predictions for ``[clean, test]`` and the N normalised true scores."""
    return F.mse_loss(disc(discriminator_input(clean, test)), targets.expand(clean.shape[0], -1))


# ---------------------------------------------------------------- the history of enhanced outputs


class Entry(NamedTuple):
    """One D training item: training utterance ``index``, enhanced audio and its scores [N]."""

    index: int
    audio: np.ndarray
    enhanced: torch.Tensor
    noisy: torch.Tensor


def d_inputs(
    entry: Entry, noisy: np.ndarray, clean: np.ndarray
) -> list[tuple[np.ndarray, torch.Tensor]]:
    """The three (test input, N targets) pairs of one utterance: enhanced, noisy, clean (all 1)."""
    ones = torch.full_like(entry.enhanced, CLEAN_TARGET)
    return [(entry.audio, entry.enhanced), (noisy, entry.noisy), (clean, ones)]


class History:
    """MetricGAN's historical set: one float16 shard file per epoch, memory-mapped when read.

    The checkpoint stores only which shards belong to it; a shard written by an epoch that was
    killed before its checkpoint is simply rewritten when that epoch runs again.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shards: dict[int, dict[str, torch.Tensor]] = {}
        self.keys: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.keys)

    def _path(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch:05d}.pt"

    @staticmethod
    def pack(entries: Sequence[Entry]) -> dict[str, torch.Tensor]:
        """Entries as flat tensors (``torch.load(weights_only=True)`` reads them back)."""
        lengths = torch.tensor([e.audio.size for e in entries], dtype=torch.long)
        audio = [torch.from_numpy(e.audio).half() for e in entries]
        scores = [e.enhanced.float() for e in entries]
        return {
            "index": torch.tensor([e.index for e in entries], dtype=torch.long),
            "scores": torch.stack(scores) if scores else torch.zeros(0, 0),
            "offsets": torch.cumsum(lengths, 0) - lengths,
            "lengths": lengths,
            "audio": torch.cat(audio) if audio else torch.zeros(0, dtype=torch.float16),
        }

    def append(self, epoch: int, entries: Sequence[Entry]) -> None:
        shard = self.pack(entries)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._path(epoch)) as tmp:
            torch.save(shard, tmp)
        self.shards[epoch] = shard
        self.keys += [(epoch, row) for row in range(len(entries))]

    def entry(self, key: tuple[int, int]) -> Entry:
        shard, row = self.shards[key[0]], key[1]
        start, size = int(shard["offsets"][row]), int(shard["lengths"][row])
        audio = shard["audio"][start : start + size].float().numpy()
        scores = shard["scores"][row]
        return Entry(int(shard["index"][row]), audio, scores, torch.full_like(scores, math.nan))

    def sample(self, count: int) -> list[Entry]:
        """``count`` distinct entries in random order (the official shuffle-then-slice)."""
        order = torch.randperm(len(self.keys))[:count]
        return [self.entry(self.keys[int(i)]) for i in order]

    def state(self) -> list[int]:
        return sorted(self.shards)

    def restore(self, epochs: Sequence[int]) -> None:
        self.shards, self.keys = {}, []
        for epoch in epochs:
            path = self._path(epoch)
            if not path.is_file():
                raise SekdError(f"{path}: history shard named by the checkpoint is missing")
            shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            self.shards[epoch] = shard
            self.keys += [(epoch, row) for row in range(len(shard["index"]))]

    def clear(self) -> None:
        self.shards, self.keys = {}, []
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------- the trainer


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def fixed_crop(length: int, segment: int | None, seed: int, index: int) -> tuple[int, int]:
    """(offset, size) of utterance ``index``'s crop: drawn once per (seed, index), never per epoch."""
    if segment is None or length <= segment:
        return 0, length
    rng = np.random.default_rng([seed, index, 0x6D67])  # 'mg': apart from the trainer's crops
    return int(rng.integers(0, length - segment + 1)), segment


class OKDTrainer:
    """State and phases of one MetricGAN-OKD (or MetricGAN+) run; see :func:`train_okd`."""

    def __init__(
        self,
        student_model_cfg: dict,
        okd_cfg: dict,
        train_manifest: str | Path,
        valid_manifest: str | Path,
        checkpoint_dir: str | Path,
        threads: int = 1,
        seed: int = 0,
        init_weights: str | Path | None = None,
    ) -> None:
        self.cfg = okd_config(okd_cfg)
        self.metrics: list[str] = self.cfg["metrics"]
        self.method = "metricgan" if "metric" in okd_cfg else "okd"
        self.seed = int(seed)
        set_threads(threads)
        seed_everything(self.seed)
        self.device = pick_device()
        self.model_cfg = generator_config(student_model_cfg, self.cfg["min_mask"])
        self.generators: list[MetricGANGRU] = [
            build_model(GENERATOR_MODEL, self.model_cfg["conf"]).to(self.device)
            for _ in self.metrics
        ]
        init_weights = self._init_weights(init_weights)
        for generator in self.generators:
            if init_weights is not None:
                load_weights(generator, init_weights, self.device, GENERATOR_ONLY_KEYS)
        self.g_optimizers = [
            torch.optim.Adam(g.parameters(), lr=self.cfg["lr"]) for g in self.generators
        ]
        self.disc = MetricDiscriminator(len(self.metrics)).to(self.device)
        self.d_optimizer = torch.optim.Adam(self.disc.parameters(), lr=self.cfg["lr"])
        self.train_set = MixtureDataset(train_manifest)
        self.valid_set = MixtureDataset(valid_manifest)
        self.crops = self._make_crops()
        self.valid_subset = evenly_spaced(len(self.valid_set), self.cfg["valid_utterances"])
        count = len(self.train_set)
        self.noisy_scores = torch.full((count, len(self.metrics)), math.nan, dtype=torch.float64)
        self.noisy_known = torch.zeros(count, dtype=torch.bool)
        self.checkpoint = Path(checkpoint_dir) / CHECKPOINT
        self.history = History(Path(checkpoint_dir) / HISTORY_DIR)
        self.hash = config_hash(
            self.model_cfg,
            self.cfg,
            [train_manifest, valid_manifest],
            init_weights,
            extra={"method": self.method, "seed": self.seed},
        )
        self.epoch = 0
        self.rows: list[dict] = []
        self.best = [
            {"epoch": 0, "score": -math.inf, "si_sdr": math.nan, "state": _cpu_state(g)}
            for g in self.generators
        ]
        self.valid_input: dict[str, float] = {}

    def _init_weights(self, init_weights: str | Path | None) -> Path | None:
        """The student weights to start from: required by ``init: nokd``, refused otherwise."""
        section = f"distill.{self.method}.init"
        if self.cfg["init"] == "scratch":
            if init_weights is not None:
                raise SekdError(f"{section}: scratch, but initial weights were given")
            return None
        if init_weights is None:
            raise SekdError(f"{section}: nokd needs the no-KD student's weights (--init)")
        path = Path(init_weights)
        return path / WEIGHTS if path.is_dir() else path

    # ------------------------------------------------------------ data

    def _make_crops(self) -> list[tuple[int, int]]:
        seconds = self.cfg["segment_seconds"]
        segment = None if seconds is None else max(1, round(seconds * SAMPLE_RATE))
        crops = [
            fixed_crop(noisy.size, segment, self.seed, i)
            for i, noisy in enumerate(self.train_set.noisy)
        ]
        gen = self.generators[0]
        shortest = MetricDiscriminator.min_frames()
        if gen.bins < shortest:
            raise SekdError(
                f"student.model.conf n_fft: {gen.n_fft} gives fewer than {shortest} bins"
            )
        for uid, (_, size) in zip(self.train_set.ids, crops, strict=True):
            if size // gen.hop + 1 < shortest:
                raise SekdError(
                    f"training utterance '{uid}': {size} samples give fewer than {shortest} STFT "
                    "frames, too short for the MetricGAN discriminator"
                )
        return crops

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(noisy, clean) audio of training utterance ``index`` (its fixed crop)."""
        offset, size = self.crops[index]
        window = slice(offset, offset + size)
        return self.train_set.noisy[index][window], self.train_set.target[index][window]

    def spectrogram(self, audio: np.ndarray) -> torch.Tensor:
        """``log1p|STFT|`` ``[1, frames, F]`` in the generators' STFT (D's input domain)."""
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        return self.generators[0].spectrogram(wave.to(self.device))

    # ------------------------------------------------------------ generator phase

    def generator_phase(self, chosen: torch.Tensor) -> dict:
        """One Adam step per generator and utterance; mean L_G, adversarial and DML parts."""
        for gen in self.generators:
            gen.train()
        self.disc.requires_grad_(False)  # D is only read here; its optimiser is not stepped
        sums = np.zeros((len(self.generators), 3))
        steps = np.zeros(len(self.generators))
        try:
            for index in chosen[torch.randperm(len(chosen))].tolist():
                noisy, clean = (self.spectrogram(a) for a in self.pair(index))
                with torch.no_grad():
                    peers = [g.enhance_features(noisy) for g in self.generators]
                for i, gen in enumerate(self.generators):
                    enhanced = gen.enhance_features(noisy)
                    others = [p for j, p in enumerate(peers) if j != i]
                    parts = generator_loss(self.disc, i, clean, enhanced, others, self.cfg["alpha"])
                    if self._step(parts[0], gen, self.g_optimizers[i]):
                        sums[i] += [float(p.detach()) for p in parts]
                        steps[i] += 1
        finally:
            self.disc.requires_grad_(True)
        stats = {}
        for i, metric in enumerate(self.metrics):
            mean = [float(v) for v in sums[i] / max(steps[i], 1)]
            stats.update({f"loss_g_{metric}": mean[0], f"adv_g_{metric}": mean[1]})
            stats[f"dml_g_{metric}"] = mean[2]
        return stats

    def _step(
        self, loss: torch.Tensor, module: nn.Module, optimizer: torch.optim.Optimizer
    ) -> bool:
        """Backward, clip, step; a non-finite loss is logged and skipped (returns False)."""
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            log.warning("epoch %d: non-finite loss skipped", self.epoch)
            return False
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), self.cfg["grad_clip"])
        optimizer.step()
        return True

    # ------------------------------------------------------------ discriminator phase

    def current_set(self, generator: MetricGANGRU, chosen: list[int], pool: ScoringPool) -> list:
        """Enhance ``chosen`` with ``generator``; true normalised scores of all N metrics."""
        generator.eval()
        audio = []
        for index in chosen:
            noisy, _ = self.pair(index)
            out = enhance(generator, noisy, self.device)
            audio.append(out.astype(np.float16).astype(np.float32))  # as stored in the history
        todo = [i for i in chosen if not self.noisy_known[i]]
        metrics = tuple(self.metrics)
        jobs = [(self.pair(i)[1], a, metrics, True) for i, a in zip(chosen, audio, strict=True)]
        jobs += [(self.pair(i)[1], self.pair(i)[0], metrics, True) for i in todo]
        scores = pool.map(score_job, jobs)
        for i, values in zip(todo, scores[len(chosen) :], strict=True):
            self.noisy_scores[i] = torch.from_numpy(values)
            self.noisy_known[i] = True
        entries = [
            Entry(i, a, torch.from_numpy(s).float(), self.noisy_scores[i].float())
            for i, a, s in zip(chosen, audio, scores[: len(chosen)], strict=True)
        ]
        usable = [
            e for e in entries if torch.isfinite(e.enhanced).all() and torch.isfinite(e.noisy).all()
        ]
        if len(usable) < len(entries):
            log.warning(
                "epoch %d: %d of %d utterances have an undefined score; left out of the D phase",
                self.epoch,
                len(entries) - len(usable),
                len(entries),
            )
        return usable

    def _d_update(self, clean: torch.Tensor, test: torch.Tensor, targets: torch.Tensor) -> float:
        loss = discriminator_loss(self.disc, clean, test, targets.to(self.device)[None])
        return float(loss.detach()) if self._step(loss, self.disc, self.d_optimizer) else math.nan

    def train_d_all_inputs(self, entries: Sequence[Entry]) -> list[float]:
        """Per utterance, in random order: a step on the enhanced, the noisy and the clean input."""
        losses = []
        for row in torch.randperm(len(entries)).tolist():
            noisy, clean = self.pair(entries[row].index)
            clean_spec = self.spectrogram(clean)
            for audio, target in d_inputs(entries[row], noisy, clean):
                losses.append(self._d_update(clean_spec, self.spectrogram(audio), target))
        return losses

    def train_d_enhanced(self, entries: Sequence[Entry]) -> list[float]:
        """One step per entry on its enhanced input only, in random order (the history pass)."""
        losses = []
        for row in torch.randperm(len(entries)).tolist():
            entry = entries[row]
            clean_spec = self.spectrogram(self.pair(entry.index)[1])
            losses.append(self._d_update(clean_spec, self.spectrogram(entry.audio), entry.enhanced))
        return losses

    def discriminator_phase(self, chosen: list[int], pool: ScoringPool) -> dict:
        self.disc.train()
        k = int(torch.randint(len(self.generators), (1,)))
        current = self.current_set(self.generators[k], chosen, pool)
        first = self.train_d_all_inputs(current)
        past = self.history.sample(int(len(self.history) * self.cfg["hist_portion"]))
        mixed = self.train_d_enhanced(past + current)
        self.history.append(self.epoch, current)
        second = self.train_d_all_inputs(current)
        return {
            "d_generator": k,
            "loss_d": _finite_mean(first + mixed + second),
            "loss_d_current": _finite_mean(first + second),
            "loss_d_history": _finite_mean(mixed),
            "d_items": len(current),
            "history_size": len(self.history),
            "history_sampled": len(past),
        }

    # ------------------------------------------------------------ validation

    def _valid_jobs(self, estimates: Sequence[np.ndarray], metric: str) -> list[tuple]:
        targets = [self.valid_set.target[i] for i in self.valid_subset]
        return [(t, e, (metric,), False) for t, e in zip(targets, estimates, strict=True)]

    @staticmethod
    def _mean(scores: Sequence[np.ndarray]) -> float:
        values = np.array([s[0] for s in scores], dtype=np.float64)
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else math.nan

    def valid_inputs(self, pool: ScoringPool) -> None:
        """Each target metric of the unprocessed validation inputs (the baseline, computed once)."""
        noisy = [self.valid_set.noisy[i] for i in self.valid_subset]
        for metric in self.metrics:
            self.valid_input[metric] = self._mean(
                pool.map(score_job, self._valid_jobs(noisy, metric))
            )

    def validate(self, pool: ScoringPool) -> dict:
        """Each generator's own target metric on the validation subset; keep each one's best."""
        stats = {}
        for i, (gen, metric) in enumerate(zip(self.generators, self.metrics, strict=True)):
            gen.eval()
            estimates = [
                enhance(gen, self.valid_set.noisy[j], self.device) for j in self.valid_subset
            ]
            score = self._mean(pool.map(score_job, self._valid_jobs(estimates, metric)))
            si_sdr = float(evaluate_si_sdr(gen, self.valid_set, self.device).mean())
            stats.update({f"valid_{metric}": score, f"valid_si_sdr_{metric}": si_sdr})
            if math.isfinite(score) and score >= self.best[i]["score"]:  # official: >=
                self.best[i] = {
                    "epoch": self.epoch,
                    "score": score,
                    "si_sdr": si_sdr,
                    "state": _cpu_state(gen),
                }
        return stats

    # ------------------------------------------------------------ checkpoint

    def state(self) -> dict:
        return {
            "config_hash": self.hash,
            "epoch": self.epoch,
            "generators": [_cpu_state(g) for g in self.generators],
            "g_optimizers": [o.state_dict() for o in self.g_optimizers],
            "discriminator": _cpu_state(self.disc),
            "d_optimizer": self.d_optimizer.state_dict(),
            "best": self.best,
            "rows": self.rows,
            "noisy_scores": self.noisy_scores,
            "noisy_known": self.noisy_known,
            "history": self.history.state(),
            "rng": rng_state(),
        }

    def save_checkpoint(self) -> None:
        with atomic_path(self.checkpoint) as tmp:
            torch.save(self.state(), tmp)

    def try_resume(self) -> bool:
        """Restore ``last.pt`` (and its history shards) when it belongs to this job."""
        state = read_checkpoint(self.checkpoint, self.hash)
        if state is None:
            self.history.clear()  # shards of another config or an unreadable run
            return False
        for gen, opt, g_state, o_state in zip(
            self.generators,
            self.g_optimizers,
            state["generators"],
            state["g_optimizers"],
            strict=True,
        ):
            gen.load_state_dict(g_state)
            opt.load_state_dict(o_state)
        self.disc.load_state_dict(state["discriminator"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.epoch, self.best, self.rows = state["epoch"], state["best"], state["rows"]
        self.noisy_scores, self.noisy_known = state["noisy_scores"], state["noisy_known"]
        self.history.restore(state["history"])
        set_rng_state(state["rng"])
        log.info("%s: resumed after epoch %d (config %s)", self.checkpoint, self.epoch, self.hash)
        return True

    # ------------------------------------------------------------ epochs

    def run_epoch(self, pool: ScoringPool, tracker: NullTracker) -> dict:
        start = time.perf_counter()
        count = min(self.cfg["samples_per_epoch"], len(self.train_set))
        chosen = torch.randperm(len(self.train_set))[:count]
        row: dict[str, Any] = {"epoch": self.epoch}
        if self.epoch >= 2:  # epoch 1 trains D only
            row.update(self.generator_phase(chosen))
        row["g_seconds"] = time.perf_counter() - start
        row.update(self.discriminator_phase(chosen.tolist(), pool))
        row["gd_seconds"] = time.perf_counter() - start
        row.update(self.validate(pool))
        row["seconds"] = time.perf_counter() - start
        self.rows.append(row)
        tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, self.epoch, "train")
        summary = "  ".join(f"{m} {row[f'valid_{m}']:.3f}" for m in self.metrics)
        log.info(
            "epoch %d/%d  L_D %.4f  valid %s  history %d  %.1fs",
            self.epoch,
            self.cfg["epochs"],
            row["loss_d"],
            summary,
            row["history_size"],
            row["seconds"],
        )
        return row

    def fit(self, pool: ScoringPool, tracker: NullTracker) -> None:
        self.try_resume()
        if not self.valid_input:
            self.valid_inputs(pool)
        while self.epoch < self.cfg["epochs"]:
            self.epoch += 1
            self.run_epoch(pool, tracker)
            self.save_checkpoint()
            if os.environ.get(KILL_ENV) == str(self.epoch):
                os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------ outputs

    def final_metrics(self) -> dict:
        """Validation summary of the reported student (generator 0 at its best epoch) and peers."""
        best, metric = self.best[0], self.metrics[0]
        noisy_si_sdr = input_si_sdr(self.valid_set)
        return {
            "method": self.method,
            "target_metrics": self.metrics,
            "best_epoch": best["epoch"],
            f"best_valid_{metric}": best["score"],
            f"valid_input_{metric}": self.valid_input.get(metric, math.nan),
            "best_valid_si_sdr": best["si_sdr"],
            "valid_input_si_sdr": noisy_si_sdr,
            "best_valid_si_sdr_improvement": best["si_sdr"] - noisy_si_sdr,
            "valid_utterances_scored": len(self.valid_subset),
            "generators": {
                m: {
                    "best_epoch": b["epoch"],
                    f"best_valid_{m}": b["score"],
                    f"valid_input_{m}": self.valid_input.get(m, math.nan),
                    "best_valid_si_sdr": b["si_sdr"],
                }
                for m, b in zip(self.metrics, self.best, strict=True)
            },
            "epochs_run": len(self.rows),
            "history_size": len(self.history),
            "train_seconds": float(sum(r["seconds"] for r in self.rows)),
            "params": count_parameters(self.generators[0]),
            "macs_per_second": macs_per_second(self.generators[0]),
            "discriminator_params": count_parameters(self.disc),
            "config_hash": self.hash,
            "device": str(self.device),
        }

    def write_outputs(self, out_dir: Path) -> dict:
        """Best weights of every generator; generator 0 is the student, the others go under
        ``generators/<metric>/``. Written atomically with ``metrics.json`` and ``history.csv``."""
        for gen, best in zip(self.generators, self.best, strict=True):
            gen.load_state_dict(best["state"])
            gen.eval()
        metrics = self.final_metrics()
        with atomic_dir(out_dir) as tmp:
            for i, (gen, metric) in enumerate(zip(self.generators, self.metrics, strict=True)):
                extra = {
                    "config_hash": self.hash,
                    "best_epoch": self.best[i]["epoch"],
                    "method": self.method,
                    "target_metric": metric,
                }
                folder = tmp if i == 0 else tmp / GENERATORS_DIR / metric
                save_model(folder, gen, self.model_cfg, extra)
            write_json(tmp / "metrics.json", _json_safe(metrics))
            pd.DataFrame(self.rows).to_csv(tmp / "history.csv", index=False)
        return metrics


def _json_safe(value: Any) -> Any:
    """NaN/inf (a metric undefined on every utterance) as null: ``metrics.json`` stays valid JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def train_okd(
    student_model_cfg: dict,
    okd_cfg: dict,
    train_manifest: str | Path,
    valid_manifest: str | Path,
    out_dir: str | Path,
    checkpoint_dir: str | Path,
    threads: int = 1,
    workers: int = 1,
    seed: int = 0,
    tracker: NullTracker | None = None,
    init_weights: str | Path | None = None,
) -> dict:
    """Train (or resume) MetricGAN-OKD (``distill.okd``) or MetricGAN+ (``distill.metricgan``).

    Writes ``out_dir`` atomically: generator 0 (the first target metric) as an ordinary student
    model folder that ``load_model`` reads, the other generators under ``generators/<metric>/``,
    ``metrics.json`` and ``history.csv``; returns the metrics. ``workers`` metric-scoring
    processes are kept for the run (``<= 1``: score in this process). ``init_weights`` (a model
    folder or safetensors file of the student architecture) starts every generator from it, as
    ``init: nokd`` asks.
    """
    tracker = tracker or NullTracker()
    trainer = OKDTrainer(
        student_model_cfg,
        okd_cfg,
        train_manifest,
        valid_manifest,
        checkpoint_dir,
        threads,
        seed,
        init_weights,
    )
    log.info(
        "%s: %d generator(s) %s for %s on %s, %d train / %d valid utterances, config %s",
        trainer.method,
        len(trainer.metrics),
        GENERATOR_MODEL,
        "/".join(trainer.metrics),
        trainer.device,
        len(trainer.train_set),
        len(trainer.valid_set),
        trainer.hash,
    )
    tracker.log_params(
        {
            "model": trainer.model_cfg,
            trainer.method: trainer.cfg,
            "threads": threads,
            "workers": workers,
            "seed": seed,
        }
    )
    with ScoringPool(workers) as pool:
        trainer.fit(pool, tracker)
    out_dir = Path(out_dir)
    metrics = trainer.write_outputs(out_dir)
    numbers = {
        f"final_{k}": v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    tracker.log_metrics(numbers)
    tracker.set_tags(
        {
            "sekd.phase": "distill",
            "sekd.config_hash": trainer.hash,
            "checkpoint.path": str(trainer.checkpoint.resolve()),
            "checkpoint.sha256": file_sha256(trainer.checkpoint),
            "model.dir": str(out_dir.resolve()),
        }
    )
    for name in ("metrics.json", "history.csv", "model.yaml"):
        tracker.log_artifact(out_dir / name)
    log_examples(tracker, trainer.generators[0], trainer.valid_set, trainer.device, AUDIO_EXAMPLES)
    return metrics


__all__ = [
    "METRICS",
    "History",
    "OKDTrainer",
    "ScoringPool",
    "d_inputs",
    "discriminator_loss",
    "generator_config",
    "generator_loss",
    "normalize_composite",
    "normalize_pesq",
    "normalize_score",
    "okd_config",
    "raw_scores",
    "score_job",
    "train_okd",
]
