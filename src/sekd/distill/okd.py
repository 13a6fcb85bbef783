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
``generator: official`` swaps the student's GRU for the official BLSTM generator
(:mod:`sekd.models.metricgan_blstm`, Hamming 512/256), each generator from its own seed, from scratch
only; ``select: pesq`` selects every generator by validation PESQ, as the official code does.
STOI/ESTOI targets are an extension: the official SE code has no STOI target.

This module is over 500 lines because :class:`OKDTrainer` is one state machine: its generator
phase, discriminator phase, replay, validation and checkpoint hooks share the generators, the
discriminator, the noisy-score cache and the history; split across modules they would only pass
that state back and forth. What stands alone lives elsewhere: metric targets in
:mod:`sekd.metrics.targets`, the GAN losses in :mod:`sekd.losses.metricgan`, the replay history in
:mod:`sekd.distill.okd_history`, the loop, checkpoint and outputs in :mod:`sekd.engine`.

Cost. The discriminator dominates: on a 1 s crop at hop 128 (126 x 257 bins) a D step (forward,
backward, Adam) takes about 0.5 s of one CPU core and a generator step (D forward, backward to its
input) about 0.4 s; its four convolutions are about 95 % of that and already run near the core's
float32 peak, so neither batching nor caching can make a step cheaper at the same numerics. An
epoch makes ``N * n`` generator steps and ``7 n + int(hist_portion * H)`` D steps (``n``
utterances, ``H`` the history size: 3 n on the current set, n + the replay, 3 n again), plus
scoring and validation, so the official 750 x 100 schedule on whole utterances is GPU work. The
opt-in ``d_precision: bfloat16`` runs D's layers under bfloat16 autocast (about half the D step on
a CPU with AVX512-BF16; see :class:`~sekd.models.metricgan.MetricDiscriminator`); the default,
``float32``, keeps the official numerics and the config hash of a config without the key.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sekd.data.datasets import MixtureDataset
from sekd.device import pick_device, seed_everything, set_threads
from sekd.distill.job import DistillJob
from sekd.distill.okd_history import Entry, History, d_inputs
from sekd.engine import (
    EpochLoop,
    SavedModel,
    config_hash,
    enhance,
    enhance_many,
    evaluate_si_sdr,
    input_si_sdr,
    log_run_tail,
    write_model_dir,
)
from sekd.engine.state import cpu_state
from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE
from sekd.losses.metricgan import discriminator_loss, generator_loss
from sekd.metrics.scoring import evenly_spaced
from sekd.metrics.targets import score_job
from sekd.models import build_model
from sekd.models.complexity import count_parameters, macs_per_second
from sekd.models.metricgan import MetricDiscriminator, MetricGANGRU
from sekd.models.metricgan_blstm import MetricGANBLSTM
from sekd.models.store import WEIGHTS, load_weights
from sekd.parallel import WorkerPool
from sekd.tracking import NullTracker

log = logging.getLogger(__name__)

GENERATOR_MODEL = "metricgan_gru"
OFFICIAL_MODEL = "metricgan_blstm"  # generator: official (SE/model.py, SE/signal_processing.py)
OFFICIAL_CONF = {"hidden": 200, "layers": 2, "fc": 300, "dropout": 0.1, "n_fft": 512, "hop": 256}
STUDENT_MODELS = ("gru_mask", GENERATOR_MODEL)
HISTORY_DIR = "history"
GENERATORS_DIR = "generators"
DEFAULTS: dict[str, Any] = {"segment_seconds": None, "valid_utterances": None, "init": "scratch"}
GENERATOR_ONLY_KEYS = ("activation.slope",)  # MetricGAN's learnable-sigmoid slopes (init 1)
# Optional keys left out of the canonical config when at their default, so that a config without
# them keeps its identity hash (and its outputs) byte for byte.
OPTIONAL_DEFAULTS: dict[str, str] = {
    "generator": "student",
    "select": "own",
    "d_precision": "float32",
}
Generator = MetricGANGRU | MetricGANBLSTM


# ---------------------------------------------------------------- configuration


def okd_config(cfg: dict) -> dict:
    """Canonical trainer config from a validated ``distill.okd`` or ``distill.metricgan``.

    ``metricgan`` (a single ``metric``, no ``alpha``) becomes ``metrics: [metric]``, ``alpha: 0``;
    optional keys get their defaults (``generator``/``select`` are dropped when at theirs). The
    result is part of the job's identity hash. ``generator: official`` with ``init: nokd`` is refused.
    """
    out = {**DEFAULTS, **cfg}
    section = "distill.metricgan" if "metric" in out else "distill.okd"
    for key, default in OPTIONAL_DEFAULTS.items():
        if out.get(key) == default:
            del out[key]
    if out.get("generator") == "official" and out["init"] == "nokd":
        raise SekdError(
            f"{section}.init: nokd, but {section}.generator: official is the official BLSTM, "
            "which has no no-KD student to start from; use init: scratch"
        )
    if "metric" in out:
        out["metrics"], out["alpha"] = [out.pop("metric")], 0.0
    out["metrics"] = list(out["metrics"])
    return out


def generator_config(student_model_cfg: dict, min_mask: float, generator: str = "student") -> dict:
    """The student's GRU conf under the MetricGAN output stage (``metricgan_gru``), or with
    ``generator: official`` the official BLSTM (``metricgan_blstm``), whatever the student is."""
    if generator == "official":
        return {"name": OFFICIAL_MODEL, "conf": {**OFFICIAL_CONF, "min_mask": float(min_mask)}}
    if student_model_cfg.get("name") not in STUDENT_MODELS:
        raise SekdError(
            f"student.model.name: {student_model_cfg.get('name')!r}; MetricGAN generators share "
            f"the student architecture and need one of {STUDENT_MODELS}"
        )
    conf = {**(student_model_cfg.get("conf") or {}), "min_mask": float(min_mask)}
    return {"name": GENERATOR_MODEL, "conf": conf}


# ---------------------------------------------------------------- the trainer


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def fixed_crop(length: int, segment: int | None, seed: int, index: int) -> tuple[int, int]:
    """(offset, size) of utterance ``index``'s crop: drawn once per (seed, index), never per epoch."""
    if segment is None or length <= segment:
        return 0, length
    rng = np.random.default_rng([seed, index, 0x6D67])  # 'mg': apart from the trainer's crops
    return int(rng.integers(0, length - segment + 1)), segment


class OKDTrainer(EpochLoop):
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
        workers: int = 1,
    ) -> None:
        self.cfg = okd_config(okd_cfg)
        self.workers = workers
        self.pool: WorkerPool | None = None
        self.metrics: list[str] = self.cfg["metrics"]
        self.method = "metricgan" if "metric" in okd_cfg else "okd"
        self.seed = int(seed)
        set_threads(threads)
        seed_everything(self.seed)
        self.device = pick_device()
        self.official = self.cfg.get("generator") == "official"
        self.model_cfg = generator_config(
            student_model_cfg, self.cfg["min_mask"], self.cfg.get("generator", "student")
        )
        self.generators: list[Generator] = [
            self._build_generator(i) for i in range(len(self.metrics))
        ]
        init_weights = self._init_weights(init_weights)
        for generator in self.generators:
            if init_weights is not None:
                load_weights(generator, init_weights, self.device, GENERATOR_ONLY_KEYS)
        self.g_optimizers = [
            torch.optim.Adam(g.parameters(), lr=self.cfg["lr"]) for g in self.generators
        ]
        precision = self.cfg.get("d_precision", OPTIONAL_DEFAULTS["d_precision"])
        self.disc = MetricDiscriminator(len(self.metrics), precision).to(self.device)
        self.d_optimizer = torch.optim.Adam(self.disc.parameters(), lr=self.cfg["lr"])
        self.train_set = MixtureDataset(train_manifest)
        self.valid_set = MixtureDataset(valid_manifest)
        self.crops = self._make_crops()
        self.valid_subset = evenly_spaced(len(self.valid_set), self.cfg["valid_utterances"])
        count = len(self.train_set)
        self.noisy_scores = torch.full((count, len(self.metrics)), math.nan, dtype=torch.float64)
        self.noisy_known = torch.zeros(count, dtype=torch.bool)
        self.history = History(Path(checkpoint_dir) / HISTORY_DIR)
        identity = config_hash(
            self.model_cfg,
            self.cfg,
            [train_manifest, valid_manifest],
            init_weights,
            extra={"method": self.method, "seed": self.seed},
        )
        super().__init__(checkpoint_dir, identity)
        self.rows: list[dict] = []
        self.best = [
            {
                "epoch": 0,
                "score": -math.inf,
                "si_sdr": math.nan,
                "updates": 0,
                "state": cpu_state(g),
            }
            for g in self.generators
        ]
        self.valid_input: dict[str, float] = {}
        self.g_updates = [0] * len(self.generators)  # generator steps so far, per generator

    def _build_generator(self, i: int) -> Generator:
        """Generator ``i``. ``generator: official``: built right after ``torch.manual_seed(seed *
        1000 + i)``, so every generator (and every seed) starts from its own weights, as separate
        official runs would; the student GRU keeps today's draw from the one seeded stream."""
        if self.official:
            torch.manual_seed(self.seed * 1000 + i)
        return build_model(self.model_cfg["name"], self.model_cfg["conf"]).to(self.device)

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
                        self.g_updates[i] += 1
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
        self.count_step(update=module is not self.disc)
        return True

    # ------------------------------------------------------------ discriminator phase

    def current_set(self, generator: Generator, chosen: list[int], pool: WorkerPool) -> list:
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
            e
            for e in entries
            if torch.isfinite(e.audio_scores).all() and torch.isfinite(e.noisy_scores).all()
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
            losses.append(
                self._d_update(clean_spec, self.spectrogram(entry.audio), entry.audio_scores)
            )
        return losses

    def discriminator_phase(self, chosen: list[int], pool: WorkerPool) -> dict:
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

    def _pesq(self, estimates: Sequence[np.ndarray], pool: WorkerPool) -> float:
        """Mean wide-band PESQ of ``estimates`` on the validation subset (``select: pesq``)."""
        return self._mean(pool.map(score_job, self._valid_jobs(estimates, "pesq")))

    def valid_inputs(self, pool: WorkerPool) -> None:
        """Each target metric of the unprocessed validation inputs (the baseline, computed once)."""
        noisy = [self.valid_set.noisy[i] for i in self.valid_subset]
        for metric in self.metrics:
            self.valid_input[metric] = self._mean(
                pool.map(score_job, self._valid_jobs(noisy, metric))
            )

    def validate(self, pool: WorkerPool) -> dict:
        """Each generator's own target metric on the validation subset; keep each one's best by
        it (``select: own``) or, with ``select: pesq`` (official), by validation PESQ."""
        stats = {}
        by_pesq = self.cfg.get("select") == "pesq"
        for i, (gen, metric) in enumerate(zip(self.generators, self.metrics, strict=True)):
            gen.eval()
            estimates = enhance_many(
                gen, [self.valid_set.noisy[j] for j in self.valid_subset], self.device
            )
            score = self._mean(pool.map(score_job, self._valid_jobs(estimates, metric)))
            si_sdr = float(evaluate_si_sdr(gen, self.valid_set, self.device).mean())
            stats.update({f"valid_{metric}": score, f"valid_si_sdr_{metric}": si_sdr})
            key, best_key = score, self.best[i]["score"]
            if by_pesq:
                key = score if metric == "pesq" else self._pesq(estimates, pool)
                best_key = self.best[i].get("pesq", -math.inf)
                stats[f"valid_pesq_{metric}"] = key
            trained = self.g_updates[i] > 0  # never select weights its loss has not updated
            if trained and math.isfinite(key) and key >= best_key:  # official >=
                self.best[i] = {
                    "epoch": self.epoch,
                    "score": score,
                    "si_sdr": si_sdr,
                    "updates": self.g_updates[i],
                    "state": cpu_state(gen),
                }
                if by_pesq:
                    self.best[i]["pesq"] = key
        return stats

    # ------------------------------------------------------------ checkpoint hooks

    def state(self) -> dict:
        return {
            "generators": [cpu_state(g) for g in self.generators],
            "g_optimizers": [o.state_dict() for o in self.g_optimizers],
            "discriminator": cpu_state(self.disc),
            "d_optimizer": self.d_optimizer.state_dict(),
            "best": self.best,
            "rows": self.rows,
            "noisy_scores": self.noisy_scores,
            "noisy_known": self.noisy_known,
            "history": self.history.state(),
            "g_updates": list(self.g_updates),
        }

    def load_state(self, state: dict) -> None:
        """Also reopens the history shards the checkpoint names."""
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
        self.best, self.rows = state["best"], state["rows"]
        self.noisy_scores, self.noisy_known = state["noisy_scores"], state["noisy_known"]
        self.history.restore(state["history"])
        self.g_updates = list(state["g_updates"])

    def done(self) -> bool:
        return self.epoch >= self.cfg["epochs"]

    def on_start(self, resumed: bool) -> None:
        """A fresh start drops history shards of another config; score the inputs once."""
        if not resumed:
            self.history.clear()
        if not self.valid_input:
            self.valid_inputs(self.pool)

    def fit(self, tracker) -> None:
        """The engine's loop, with ``workers`` scoring processes kept for the whole run."""
        with WorkerPool(self.workers) as self.pool:
            super().fit(tracker)
        self.pool = None

    # ------------------------------------------------------------ epochs

    def run_epoch(self, tracker) -> None:
        pool = self.pool
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

    # ------------------------------------------------------------ outputs

    def final_metrics(self) -> dict:
        """Validation summary of the reported student (generator 0 at its best epoch) and peers."""
        best, metric = self.best[0], self.metrics[0]
        noisy_si_sdr = input_si_sdr(self.valid_set)
        out = {
            "method": self.method,
            "target_metrics": self.metrics,
            "best_epoch": best["epoch"],
            "updates": best["updates"],
            f"best_valid_{metric}": best["score"],
            f"valid_input_{metric}": self.valid_input.get(metric, math.nan),
            "best_valid_si_sdr": best["si_sdr"],
            "valid_input_si_sdr": noisy_si_sdr,
            "best_valid_si_sdr_improvement": best["si_sdr"] - noisy_si_sdr,
            "valid_utterances_scored": len(self.valid_subset),
            "generators": {
                m: {
                    "best_epoch": b["epoch"],
                    "updates": b["updates"],
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
        if self.cfg.get("select") == "pesq":  # absent with select: own (outputs unchanged)
            out["selected_by"] = "pesq"
            for m, b in zip(self.metrics, self.best, strict=True):
                out["generators"][m]["best_valid_pesq"] = b.get("pesq", math.nan)
        return out

    def write_outputs(self, out_dir: Path) -> dict:
        """Best weights of every generator; generator 0 is the student, the others go under
        ``generators/<metric>/``. Written atomically with ``metrics.json`` and ``history.csv``."""
        saved = []
        for i, (gen, metric, best) in enumerate(
            zip(self.generators, self.metrics, self.best, strict=True)
        ):
            gen.load_state_dict(best["state"])
            gen.eval()
            extra = {
                "config_hash": self.hash,
                "best_epoch": best["epoch"],
                "updates": best["updates"],
                "method": self.method,
                "target_metric": metric,
            }
            subdir = "" if i == 0 else f"{GENERATORS_DIR}/{metric}"
            saved.append(SavedModel(subdir, gen, self.model_cfg, extra))
        metrics = self.final_metrics()
        write_model_dir(out_dir, saved, metrics, self.rows)
        return metrics


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
        workers,
    )
    log.info(
        "%s: %d generator(s) %s for %s on %s, %d train / %d valid utterances, config %s",
        trainer.method,
        len(trainer.metrics),
        trainer.model_cfg["name"],
        "/".join(trainer.metrics),
        trainer.device,
        len(trainer.train_set),
        len(trainer.valid_set),
        trainer.hash,
    )
    tracker.log_params(
        {
            "model": trainer.model_cfg,
            # the trainer's canonical config (defaults filled in) under the run's own
            # `distill.<method>.*` keys: one key per param, the same values where both have one
            "distill": {trainer.method: trainer.cfg},
            "threads": threads,
            "workers": workers,
            "seed": seed,
        }
    )
    trainer.fit(tracker)
    out_dir = Path(out_dir)
    metrics = trainer.write_outputs(out_dir)
    examples = (trainer.generators[0], trainer.valid_set)
    log_run_tail(tracker, "distill", trainer, out_dir, metrics, examples)
    return metrics


__all__ = [
    "GENERATOR_MODEL",
    "OFFICIAL_MODEL",
    "OKDTrainer",
    "fixed_crop",
    "generator_config",
    "okd_config",
    "train_okd",
]


def run(job: DistillJob, tracker: Any) -> dict:
    """``sekd distill`` for ``okd`` and ``metricgan`` (see :mod:`sekd.distill`)."""
    return train_okd(
        job.student["model"],
        job.method_cfg,
        job.train_manifest,
        job.valid_manifest,
        job.out_dir,
        job.checkpoint_dir,
        threads=job.threads,
        workers=job.workers,
        seed=job.seed,
        tracker=tracker,
        init_weights=job.init,
    )


RUNNERS = {"okd": run, "metricgan": run}
