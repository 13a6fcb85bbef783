"""Speech-enhancement metrics: PESQ, STOI/ESTOI, SI-SDR, composite (CSIG/CBAK/COVL) and DNSMOS.

One module per metric plus ``evaluate`` (per-utterance scoring, a process pool, summaries). This
package file holds only the shared vocabulary, so that importing it stays cheap: the metric keys
used in every table, CSV and JSON, and the exception a metric raises when a value is undefined
(it becomes NaN plus a note, never a sentinel such as PESQ's -1 or STOI's 1e-5).
"""

from __future__ import annotations

METRIC_KEYS: tuple[str, ...] = (
    "pesq_wb",
    "pesq_nb",
    "stoi",
    "estoi",
    "si_sdr",
    "si_sdr_i",
    "csig",
    "cbak",
    "covl",
    "dnsmos_sig",
    "dnsmos_bak",
    "dnsmos_ovrl",
    "dnsmos_p808",
)


class InvalidScoreError(ValueError):
    """A metric is undefined for this input (silent reference, too short, PESQ error, ...).

    The message is a short note for the per-utterance ``note`` column.
    """
