"""Latent-mixup feature distillation (methods.md §2): a placeholder design [ours], low confidence.

The paper (Gholami et al., JSTSP 2024) gives no method section, so both plausible readings of
"latent mixup" and the FitNets baseline are built here and chosen by ``distill.latent_mixup.variant``.
Teacher and student are split at matched depths, ``T = T_dec ∘ T_enc`` and ``S = S_dec ∘ S_enc``,
through the models' ``encode``/``decode`` (for ``GRUMaskNet``: encoder = STFT feature + GRU stack,
decoder = Linear + sigmoid mask on the noisy STFT + iSTFT). A learnable adapter ``P`` (a linear map
over channels, i.e. a 1x1 convolution over frames) takes student latents to the teacher's width.

- ``teacher_student`` (variant A): ``h_mix = λ h_T + (1-λ) P(h_S)`` with ``λ ~ Beta(α, α)`` per
  item, decoded by the frozen teacher decoder against the noisy input's STFT;
  ``L = task(S(y), s) + β1 task(T_dec(h_mix), s) + β2 ||P(h_S) - h_T||²``.
- ``manifold`` (variant B): each item is paired with a shuffled partner of the batch and both
  models' latents are mixed with the same ``λ``; both decoders decode against the context of the
  *mixed noisy waveform* ``λ y_a + (1-λ) y_b`` (for the GRU that is the mixed noisy STFT, by
  linearity), so the decoded outputs are comparable;
  ``L = task + β2 ||P(h_S^mix) - h_T^mix||² + γ D(S_dec(h_S^mix), T_dec(h_T^mix))``. ``D`` is the
  negative SI-SDR (dB, the task loss's unit), soft-capped at 30 dB as output KD's ``sisdr``
  distance, by default: uncapped it runs past -40 dB and swamps the task loss, and a waveform MSE
  is ~1e-4 at speech levels and would vanish next to it; cfg ``consistency: mse`` selects that
  (an option the schema knows but params.yaml leaves out).
- ``feature_mse`` (FitNets): ``L = task + β2 ||P(h_S) - h_T||²``.

Feature MSEs average over channels and the frames that are not padding (``batch["lengths"]``); in
the manifold variant a mixed frame counts when it is real in either partner. ``λ`` and the
partner permutation come from torch's global CPU generator, which the trainer seeds and
checkpoints, so a resumed run draws the same values on any device.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from sekd.distill.base import Distiller
from sekd.errors import SekdError
from sekd.losses.distill import sisdr_distance

KEY = "distill.latent_mixup"
SPLIT_API = (
    "encode",
    "decode",
    "context",
    "frame_grid",
    "num_frames",
    "latent_dim",
    "latent_time_axis",
)


def check_splittable(model: nn.Module, role: str) -> None:
    missing = [name for name in SPLIT_API if not hasattr(model, name)]
    if missing:
        raise SekdError(
            f"{role}.model.name: {type(model).__name__} has no '{missing[0]}'; latent_mixup needs "
            "a model split into encode/decode (gru_mask, convtasnet)"
        )


def check_pair(teacher: nn.Module, student: nn.Module) -> None:
    """Latents can only be compared frame by frame when both models frame the signal alike."""
    check_splittable(teacher, "teacher")
    check_splittable(student, "student")
    if teacher.frame_grid != student.frame_grid:
        raise SekdError(
            f"{KEY}: teacher.model.conf {teacher.frame_grid} and student.model.conf "
            f"{student.frame_grid} frame the signal differently; latent KD needs the same model "
            "family and framing (n_fft/hop, or L)"
        )


def frame_mask(model: nn.Module, lengths: torch.Tensor | None, batch: int, frames: int, device):
    """``[B, frames]`` bool: True where a latent frame comes from real signal, not padding."""
    if lengths is None:
        return torch.ones(batch, frames, dtype=torch.bool, device=device)
    valid = model.num_frames(lengths.to(device)).clamp(max=frames)
    return torch.arange(frames, device=device) < valid[:, None]


def masked_mse(estimate: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over channels and the frames where ``mask`` ([B, frames]) is True."""
    weights = mask.to(torch.float32)[..., None]
    squared = (estimate.float() - target.float()).pow(2) * weights
    return squared.sum() / (weights.sum() * estimate.shape[-1]).clamp_min(1.0)


def mix(first: torch.Tensor, second: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``λ first + (1-λ) second``; ``lam`` broadcasts over the item's trailing axes."""
    return lam * first + (1 - lam) * second


class LatentMixupKD(Distiller):
    """Feature KD at a matched split depth with a learnable adapter (variants A, B, FitNets).

    ``student`` is optional: with it the adapter is built now and the pair is checked at once;
    without it (``build_distiller(method, teacher, cfg)``) the adapter's input width is inferred at
    the first batch. Either way the adapter's state is trained and checkpointed by the trainer.
    """

    name: ClassVar[str] = "latent_mixup"
    CACHED: ClassVar[str | None] = "latent"
    DEFAULTS: ClassVar[dict] = {"consistency": "sisdr"}

    def __init__(self, teacher: nn.Module, cfg: dict, student: nn.Module | None = None) -> None:
        super().__init__(teacher, {**self.DEFAULTS, **cfg})
        check_splittable(teacher, "teacher")
        width = teacher.latent_dim
        if student is None:
            self.adapter: nn.Module = nn.LazyLinear(width)
        else:
            check_pair(teacher, student)
            self.adapter = nn.Linear(student.latent_dim, width)

    # ------------------------------------------------------------ split helpers

    @staticmethod
    def encode(model: nn.Module, wave: torch.Tensor) -> tuple[torch.Tensor, object]:
        """``model``'s latent as ``[B, frames, C]`` (whatever its own layout) and its context."""
        latent, context = model.encode(wave)
        return latent.movedim(model.latent_time_axis, 1), context

    @staticmethod
    def decode(model: nn.Module, latent: torch.Tensor, context: object) -> torch.Tensor:
        """Decode a ``[B, frames, C]`` latent with ``model``'s decoder."""
        return model.decode(latent.movedim(1, model.latent_time_axis), context)

    def teacher_latent_of(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.encode(self.teacher, noisy)[0]

    @torch.no_grad()
    def teacher_latent(self, batch: dict, frames: int) -> torch.Tensor:
        """``h_T`` ``[B, frames, C]`` of the batch, from the cache when it holds these crops."""
        if self.cache is not None and "offsets" in batch:
            return self.cache.crop(batch, frames)
        return self.teacher_latent_of(batch["noisy"])

    def sample_lambda(self, batch: int) -> torch.Tensor:
        """Per-item mixing weights ``[B]`` from Beta(α, α) on the global CPU generator."""
        alpha = torch.tensor(float(self.cfg["alpha"]))
        return torch.distributions.Beta(alpha, alpha).sample((batch,))

    # ------------------------------------------------------------ the loss

    def forward(self, student: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        check_pair(self.teacher, student)
        noisy, target = batch["noisy"], batch["target"]
        h_s, context_s = self.encode(student, noisy)
        task = self.task_loss(self.decode(student, h_s, context_s), target)
        h_t = self.teacher_latent(batch, h_s.shape[1]).to(h_s.dtype)
        mask = frame_mask(student, batch.get("lengths"), *h_s.shape[:2], h_s.device)
        variant = self.cfg["variant"]
        if variant == "manifold":
            feat, mixed = self._manifold(student, noisy, h_s, h_t, mask)
            total = task + self.cfg["beta2"] * feat + self.cfg["gamma"] * mixed
        else:
            projected = self.adapter(h_s)
            feat = masked_mse(projected, h_t, mask)
            total = task + self.cfg["beta2"] * feat
            mixed = None
            if variant == "teacher_student":
                lam = self.sample_lambda(noisy.shape[0]).to(h_t.device, h_t.dtype)[:, None, None]
                h_mix = mix(h_t, projected.to(h_t.dtype), lam)
                context_t = self.teacher.context(noisy)
                mixed = self.task_loss(self.decode(self.teacher, h_mix, context_t), target)
                total = total + self.cfg["beta1"] * mixed
        components = {"task": task, "feat": feat, "total": total, "si_sdr": -task}
        if mixed is not None:
            components["mix"] = mixed
        return total, {k: v.detach() for k, v in components.items()}

    def _manifold(
        self,
        student: nn.Module,
        noisy: torch.Tensor,
        h_s: torch.Tensor,
        h_t: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Variant B's (feature, consistency) terms on latents mixed with shuffled partners."""
        size = noisy.shape[0]
        partner = torch.randperm(size).to(noisy.device)
        lam = self.sample_lambda(size).to(noisy.device)
        lam_latent = lam[:, None, None]
        h_s_mix = mix(h_s, h_s[partner], lam_latent.to(h_s.dtype))
        h_t_mix = mix(h_t, h_t[partner], lam_latent.to(h_t.dtype))
        feat = masked_mse(self.adapter(h_s_mix), h_t_mix, mask | mask[partner])
        noisy_mix = mix(noisy, noisy[partner], lam[:, None].to(noisy.dtype))
        estimate = self.decode(student, h_s_mix, student.context(noisy_mix))
        with torch.no_grad():
            reference = self.decode(self.teacher, h_t_mix, self.teacher.context(noisy_mix))
        if self.cfg["consistency"] == "mse":
            return feat, (estimate.float() - reference.float()).pow(2).mean()
        return feat, sisdr_distance(estimate, reference)


__all__ = ["LatentMixupKD", "check_pair", "frame_mask", "masked_mse", "mix"]
