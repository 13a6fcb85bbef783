"""Latent-mixup feature distillation (methods.md §2): a placeholder design [ours], low confidence.

The paper (Gholami et al., JSTSP 2024) gives no method section, so both plausible readings of
"latent mixup" and the FitNets baseline are built here and chosen by ``distill.latent_mixup.variant``.
Teacher and student are split at matched depths, ``T = T_dec ∘ T_enc`` and ``S = S_dec ∘ S_enc``,
through the models' ``encode``/``decode`` (for ``GRUMaskNet``: encoder = STFT feature + GRU stack,
decoder = Linear + sigmoid mask on the noisy STFT + iSTFT). A learnable adapter ``P`` (a linear map
over channels, i.e. a 1x1 convolution over frames) takes student latents to the teacher's width.

The split depth is an option for models with GRU layers (``gru_mask``): cfg ``split_layer: k``
splits the student after GRU layer ``k`` (encoder = the first ``k`` layers, decoder = the remaining
layers + the mask head); ``teacher_split_layer`` does the same for the teacher and defaults to
``split_layer`` (the same depth counted from the input). Either key absent means "after the whole
stack" for that model, today's split; a depth past a model's layers, or on a model without GRU
layers (``convtasnet``), stops with an error naming the key.

- ``teacher_student`` (variant A): ``h_mix = λ h_T + (1-λ) P(h_S)`` with ``λ ~ Beta(α, α)`` per
  item, decoded by the frozen teacher decoder against the noisy input's STFT;
  ``L = task(S(y), s) + β1 task(T_dec(h_mix), s) + β2 ||P(h_S) - h_T||²`` (cfg ``decoder:
  teacher``, the default). ``decoder: student`` decodes the mix with the student's own decoder
  instead, in the student's latent space: a second learnable linear map ``Q`` takes the teacher
  latent to the student's width, ``h_mix = λ Q(h_T) + (1-λ) h_S`` and the mixed term is
  ``β1 task(S_dec(h_mix), s)`` (λ = 0 gives ``S(y)`` itself); its gradient reaches the student's
  decoder, encoder and ``Q``, while ``P`` learns from the β2 term alone.
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

import inspect
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


def split_depth(model: nn.Module) -> int | None:
    """How many layers ``model`` can be split after (``split_layers``: its GRU layers), or None
    when its ``encode``/``decode`` take no ``split`` (one fixed split point)."""
    layers = getattr(model, "split_layers", None)
    takes = all(
        "split" in inspect.signature(getattr(model, name)).parameters
        for name in ("encode", "decode")
    )
    return int(layers) if layers is not None and takes else None


def check_split(model: nn.Module, role: str, key: str, split: int | None) -> int | None:
    """``split`` (after layer k, or None: the whole stack) if ``model`` can be split there;
    ``key`` (``distill.<method>.split_layer``) names the option in errors."""
    if split is None:
        return None
    depth = split_depth(model)
    if depth is None:
        raise SekdError(
            f"{key}: {role}.model.name: {type(model).__name__} has no GRU layers to split "
            "after; only gru_mask takes a split depth (leave the key out)"
        )
    if split > depth:
        raise SekdError(
            f"{key}: {split} is past the {role}'s {depth} GRU layers ({role}.model.conf.layers)"
        )
    return int(split)


def check_pair(teacher: nn.Module, student: nn.Module, section: str = KEY) -> None:
    """Latents can only be compared frame by frame when both models frame the signal alike."""
    check_splittable(teacher, "teacher")
    check_splittable(student, "student")
    if teacher.frame_grid != student.frame_grid:
        raise SekdError(
            f"{section}: teacher.model.conf {teacher.frame_grid} and student.model.conf "
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


class LazyOutLinear(nn.LazyLinear):
    """A linear map whose *output* width is set at its first use (the student's latent width)."""

    def __init__(self, in_features: int) -> None:
        super().__init__(0)
        self.in_features = in_features

    def initialize_parameters(self, input: torch.Tensor, out_features: int | None = None) -> None:
        if out_features is not None and self.has_uninitialized_params():
            self.out_features = int(out_features)
        super().initialize_parameters(input)


class LatentMixupKD(Distiller):
    """Feature KD at a matched split depth with a learnable adapter (variants A, B, FitNets).

    ``student`` is optional: with it the adapter is built now and the pair is checked at once;
    without it (``build_distiller(method, teacher, cfg)``) the adapter's input width is inferred at
    the first batch. Either way the adapter's state is trained and checkpointed by the trainer.
    ``decoder: student`` adds ``back`` (``Q``: teacher width -> student width), built the same way.
    """

    name: ClassVar[str] = "latent_mixup"
    CACHED: ClassVar[str | None] = "latent"
    DEFAULTS: ClassVar[dict] = {
        "consistency": "sisdr",
        "decoder": "teacher",
        "split_layer": None,
        "teacher_split_layer": None,
    }

    def __init__(self, teacher: nn.Module, cfg: dict, student: nn.Module | None = None) -> None:
        super().__init__(teacher, {**self.DEFAULTS, **cfg})
        check_splittable(teacher, "teacher")
        split = self.cfg["split_layer"]
        teacher_key = "split_layer"
        if self.cfg["teacher_split_layer"] is not None:
            split, teacher_key = self.cfg["teacher_split_layer"], "teacher_split_layer"
        self.teacher_split = check_split(teacher, "teacher", f"{self.section}.{teacher_key}", split)
        width = teacher.latent_dim
        student_decodes = self.cfg["decoder"] == "student"
        if student is None:
            self.adapter: nn.Module = nn.LazyLinear(width)
            if student_decodes:
                self.back: nn.Module = LazyOutLinear(width)
        else:
            check_pair(teacher, student, self.section)
            self.student_split(student)
            self.adapter = nn.Linear(student.latent_dim, width)
            if student_decodes:
                self.back = nn.Linear(width, student.latent_dim)

    # ------------------------------------------------------------ split helpers

    def student_split(self, student: nn.Module) -> int | None:
        key = f"{self.section}.split_layer"
        return check_split(student, "student", key, self.cfg["split_layer"])

    @property
    def section(self) -> str:
        """The method's params section, as errors name it."""
        return f"distill.{self.name}"

    @staticmethod
    def encode(
        model: nn.Module, wave: torch.Tensor, split: int | None = None
    ) -> tuple[torch.Tensor, object]:
        """``model``'s latent as ``[B, frames, C]`` (whatever its own layout) and its context;
        ``split``: after GRU layer k (None: the model's own split, after the whole stack)."""
        latent, context = model.encode(wave) if split is None else model.encode(wave, split=split)
        return latent.movedim(model.latent_time_axis, 1), context

    @staticmethod
    def decode(
        model: nn.Module, latent: torch.Tensor, context: object, split: int | None = None
    ) -> torch.Tensor:
        """Decode a ``[B, frames, C]`` latent (split after layer ``split``) with ``model``."""
        latent = latent.movedim(1, model.latent_time_axis)
        return (
            model.decode(latent, context)
            if split is None
            else model.decode(latent, context, split=split)
        )

    def teacher_latent_of(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.encode(self.teacher, noisy, self.teacher_split)[0]

    def prepare(self, dataset, device: torch.device, batch_size: int = 32) -> None:
        """The base cache, marked with the teacher split it holds: a cache shared from a run at
        another depth (a tuning worker's trials) is rebuilt rather than read."""
        if self.cache is not None and getattr(self.cache, "split", None) != self.teacher_split:
            self.cache = None
        super().prepare(dataset, device, batch_size)
        if self.cache is not None:
            self.cache.split = self.teacher_split

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
        check_pair(self.teacher, student, self.section)
        split = self.student_split(student)
        noisy, target = batch["noisy"], batch["target"]
        h_s, context_s = self.encode(student, noisy, split)
        task = self.task_loss(self.decode(student, h_s, context_s, split), target)
        h_t = self.teacher_latent(batch, h_s.shape[1]).to(h_s.dtype)
        mask = frame_mask(student, batch.get("lengths"), *h_s.shape[:2], h_s.device)
        variant = self.cfg["variant"]
        if variant == "manifold":
            feat, mixed = self._manifold(student, split, noisy, h_s, h_t, mask)
            total = task + self.cfg["beta2"] * feat + self.cfg["gamma"] * mixed
        else:
            projected = self.adapter(h_s)
            feat = masked_mse(projected, h_t, mask)
            total = task + self.cfg["beta2"] * feat
            mixed = None
            if variant == "teacher_student":
                lam = self.sample_lambda(noisy.shape[0]).to(h_t.device, h_t.dtype)[:, None, None]
                if self.cfg["decoder"] == "student":
                    if (
                        isinstance(self.back, LazyOutLinear)
                        and self.back.has_uninitialized_params()
                    ):
                        self.back.initialize_parameters(h_t, student.latent_dim)
                    h_mix = mix(self.back(h_t).to(h_s.dtype), h_s, lam.to(h_s.dtype))
                    estimate = self.decode(student, h_mix, context_s, split)
                else:
                    h_mix = mix(h_t, projected.to(h_t.dtype), lam)
                    context_t = self.teacher.context(noisy)
                    estimate = self.decode(self.teacher, h_mix, context_t, self.teacher_split)
                mixed = self.task_loss(estimate, target)
                total = total + self.cfg["beta1"] * mixed
        components = {"task": task, "feat": feat, "total": total, "si_sdr": -task}
        if mixed is not None:
            components["mix"] = mixed
        return total, {k: v.detach() for k, v in components.items()}

    def _manifold(
        self,
        student: nn.Module,
        split: int | None,
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
        estimate = self.decode(student, h_s_mix, student.context(noisy_mix), split)
        with torch.no_grad():
            context_t = self.teacher.context(noisy_mix)
            reference = self.decode(self.teacher, h_t_mix, context_t, self.teacher_split)
        if self.cfg["consistency"] == "mse":
            return feat, (estimate.float() - reference.float()).pow(2).mean()
        return feat, sisdr_distance(estimate, reference)


class FitNetsKD(LatentMixupKD):
    """FitNets (Romero et al., 2015), the feature-KD baseline of latent mixup as its own method
    (``distill.fitnets``): the ``feature_mse`` variant, ``L = task + β2 ||P(h_S) - h_T||²``, at
    the same split depth, so a run can report it beside latent mixup."""

    name: ClassVar[str] = "fitnets"

    def __init__(self, teacher: nn.Module, cfg: dict, student: nn.Module | None = None) -> None:
        fixed = {"variant": "feature_mse", "alpha": 1.0, "beta1": 0.0, "gamma": 0.0}
        super().__init__(teacher, {**cfg, **fixed}, student)


__all__ = [
    "FitNetsKD",
    "LatentMixupKD",
    "check_pair",
    "check_split",
    "frame_mask",
    "masked_mse",
    "mix",
]
