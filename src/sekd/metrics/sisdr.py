"""SI-SDR and its improvement over the noisy input, as reported in every sekd table.

The zero-mean form (Le Roux et al. 2019; Asteroid's default) is used: both signals lose their mean
first. torchmetrics defaults to ``zero_mean=False``, which differs by about 0.04 dB on the PESQ
reference pair. The value comes from the training loss's own ``sekd.losses.sisdr.si_sdr``, so the
metric and the objective cannot drift apart.
"""

from __future__ import annotations

import numpy as np

ZERO_MEAN = True


def si_sdr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Zero-mean SI-SDR of ``estimate`` against ``reference`` in dB.

    torch loads on first use, not with the module: ``score_batch`` computes SI-SDR in the calling
    process, so its scoring workers never pay the import (seconds per worker).
    """
    import torch

    from sekd.losses.sisdr import si_sdr

    pair = torch.from_numpy(np.stack([estimate, reference]).astype(np.float32))
    return float(si_sdr(pair[0], pair[1], zero_mean=ZERO_MEAN))


def si_sdr_scores(reference: np.ndarray, estimate: np.ndarray, noisy: np.ndarray | None) -> dict:
    """``{'si_sdr', 'si_sdr_i'}``; the improvement is NaN when no noisy input is given."""
    value = si_sdr_db(estimate, reference)
    gain = value - si_sdr_db(noisy, reference) if noisy is not None else float("nan")
    return {"si_sdr": value, "si_sdr_i": gain}
