"""The one training engine: every trainer in sekd runs on it.

- :mod:`~sekd.engine.state`: checkpoint contents (RNG states, CPU weight copies), the job's
  identity hash, atomic write and weights-only read;
- :mod:`~sekd.engine.loop`: :class:`EpochLoop`, the resume -> epoch -> validate -> select -> save
  loop with its hooks and the kill/stop points tests use;
- :mod:`~sekd.engine.outputs`: the model folder writer and the MLflow run's tail;
- :mod:`~sekd.engine.inference`: enhancement and validation SI-SDR on whole utterances;
- :mod:`~sekd.engine.supervised`: the supervised trainer (teacher, no-KD, loss-based KD), which
  the adaptation and tuning-trial trainers extend; MetricGAN-OKD's trainer
  (:mod:`sekd.distill.okd`) runs on :class:`EpochLoop` directly.
"""

from sekd.engine.inference import enhance, enhance_many, evaluate_si_sdr, input_si_sdr
from sekd.engine.loop import KILL_ENV, PREEMPT_SIGNALS, STOP_ENV, EpochLoop, Preempted
from sekd.engine.outputs import SavedModel, log_run_tail, write_model_dir
from sekd.engine.state import CHECKPOINT, config_hash, file_sha256
from sekd.engine.supervised import LossFn, Trainer, task_loss, train_model

__all__ = [
    "CHECKPOINT",
    "KILL_ENV",
    "PREEMPT_SIGNALS",
    "STOP_ENV",
    "EpochLoop",
    "LossFn",
    "Preempted",
    "SavedModel",
    "Trainer",
    "config_hash",
    "enhance",
    "enhance_many",
    "evaluate_si_sdr",
    "file_sha256",
    "input_si_sdr",
    "log_run_tail",
    "task_loss",
    "train_model",
    "write_model_dir",
]
