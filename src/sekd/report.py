"""``sekd report``: one self-contained HTML page with the run's tables, plots and audio examples.

Everything is inlined (PNG figures and WAV audio as ``data:`` URIs, CSS in the page, no script),
so the page opens from disk, travels as one file (e-mail, an archive, an MLflow artifact) and
never depends on a network. Tables are rendered from the same Markdown helpers that write
``table.md``, so the report and the tracked tables cannot disagree.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import soundfile as sf
from matplotlib.figure import Figure
from scipy.signal import stft

from sekd.data.manifest import read_manifest
from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, read_audio, write_text
from sekd.metrics import METRIC_KEYS
from sekd.paired import BASELINE
from sekd.results import gains_plot, markdown_table, paired_markdown, personal_markdown
from sekd.tracking import git_commit, split_system

__all__ = ["forest_figure", "write_report"]

EXAMPLE_UTTERANCES = 2  # rows of the spectrogram grid
SPLITS = ("train", "valid", "test")
DYNAMIC_RANGE_DB = 80.0  # spectrogram colour range below each row's peak
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9}

# metric -> (name, unit): units as the literature reports them
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "pesq_wb": ("PESQ wide-band", "MOS"),
    "pesq_nb": ("PESQ narrow-band", "MOS"),
    "stoi": ("STOI", "unitless"),
    "estoi": ("ESTOI", "unitless"),
    "si_sdr": ("SI-SDR", "dB"),
    "si_sdr_i": ("SI-SDR improvement", "dB"),
    "csig": ("CSIG", "MOS"),
    "cbak": ("CBAK", "MOS"),
    "covl": ("COVL", "MOS"),
    "dnsmos_sig": ("DNSMOS SIG", "MOS"),
    "dnsmos_bak": ("DNSMOS BAK", "MOS"),
    "dnsmos_ovrl": ("DNSMOS OVRL", "MOS"),
    "dnsmos_p808": ("DNSMOS P.808", "MOS"),
}
# manifest column -> axis label: measured room acoustics, not the synthesis targets
DATASET_QUANTITIES = (
    ("rt60_measured", "RT60, measured (s)"),
    ("snr_db", "SNR (dB)"),
    ("drr_db", "DRR (dB)"),
)

CSS = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-top: 0.5em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.grid td { text-align: center; vertical-align: top; }
.scroll { overflow-x: auto; }
.figures { display: flex; flex-wrap: wrap; gap: 0.5em; }
img { max-width: 100%; } audio { width: 100%; min-width: 200px; }
.note, .meta { color: #555; font-size: 0.9em; }
"""


def write_report(root: Path, out_dir: Path, cfg: dict) -> Path:
    """Write ``out_dir/index.html`` (atomically) from a finished run's results and data folders.

    Only ``results/table.csv`` is required; sections whose inputs are absent (personalisation,
    examples, manifests) say so instead of failing, so a partial run still gets a report.
    """
    root = Path(root)
    results, data = root / cfg["paths"]["results"], root / cfg["paths"]["data"]
    table = _read_csv(results / "table.csv", "comparison table (run the evaluate phase)", "system")
    with matplotlib.rc_context(STYLE):
        sections = [
            ("comparison", "Method comparison", _comparison_section(table)),
            ("paired", f"Paired differences to {BASELINE}", _paired_section(table)),
            ("metrics", "Per-metric results", _metric_section(table)),
            ("personal", "Personalisation gains", _personal_section(results / "personal")),
            ("pareto", "Quality vs. student MACs", _pareto_section(table)),
            (
                "examples",
                "Spectrograms and audio",
                _examples_section(results / "eval", data, table),
            ),
            ("dataset", "Dataset statistics", _dataset_section(data / "mixtures")),
        ]
    path = Path(out_dir) / "index.html"
    write_text(path, _page(sections, root))
    return path


def _page(sections: list[tuple[str, str, str]], root: Path) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = git_commit(root) or "unknown"
    toc = "".join(
        f'<li><a href="#{key}">{html.escape(title)}</a></li>' for key, title, _ in sections
    )
    body = "".join(
        f'<h2 id="{key}">{html.escape(title)}</h2>\n{content}\n' for key, title, content in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>sekd report</title><style>{CSS}</style></head><body>\n"
        f'<h1>sekd report</h1><p class="meta">Generated {date} · git commit '
        f"<code>{html.escape(commit)}</code></p>\n<nav><ul>{toc}</ul></nav>\n{body}</body></html>\n"
    )


# ---- shared helpers ----------------------------------------------------------------------------


def _read_csv(path: Path, what: str, text_column: str) -> pd.DataFrame:
    """A writer's CSV with empty cells as NaN (``read_table`` keeps them as text, breaking numbers)."""
    if not path.is_file():
        raise SekdError(f"{path}: {what} not found")
    try:
        return pd.read_csv(path, dtype={text_column: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise SekdError(f"{path}: cannot read {what}: {err}") from None


def _img(figure: Figure, alt: str) -> str:
    """The figure as an inline PNG ``<img>`` (a bare ``Figure``: no pyplot state to close)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return _png_tag(buffer.getvalue(), alt)


def _png_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _audio_tag(audio: np.ndarray) -> str:
    """An inline 16-bit WAV player: half the size of the 24-bit files, plenty for listening."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<audio controls preload="none" src="data:audio/wav;base64,{data}"></audio>'


def _markdown_html(text: str) -> str:
    """A ``table.md`` (pipe table plus notes) as HTML, cell for cell."""
    rows, notes = [], []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([_inline(c.strip()) for c in line.strip().strip("|").split("|")])
        elif line.strip() and not line.startswith("|"):
            notes.append(_inline(line.strip()))
    head, *body = rows
    cells = "".join(f"<th>{c}</th>" for c in head)
    lines = [f"<table><thead><tr>{cells}</tr></thead><tbody>"]
    lines += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body]
    lines.append("</tbody></table>")
    lines += [f'<p class="note">{note}</p>' for note in notes]
    return "\n".join(lines)


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def _metric_axis_label(key: str) -> str:
    name, unit = METRIC_LABELS.get(key, (key, ""))
    return f"{name} ({unit})" if unit else name


def _values(table: pd.DataFrame, column: str) -> np.ndarray:
    """A numeric column with missing values (no CI, no MACs) as NaN."""
    if column not in table.columns:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)


# ---- sections ----------------------------------------------------------------------------------


def _comparison_section(table: pd.DataFrame) -> str:
    return _markdown_html(markdown_table(table))


FOREST_COLUMNS = 4  # metric panels per row of the forest plot
SIGNIFICANT = 0.05  # Holm-adjusted p below which a difference is drawn filled


def _paired_section(table: pd.DataFrame) -> str:
    text = paired_markdown(table)
    if not text:
        return f"<p>No method shares seeds with {BASELINE}: no paired differences.</p>"
    return _forest_plot(table) + _markdown_html(text)


def _forest_plot(table: pd.DataFrame) -> str:
    return _img(forest_figure(table), f"paired differences to {BASELINE} with 95% CIs")


def forest_figure(table: pd.DataFrame) -> Figure:
    """One panel per metric: each method's mean paired difference to the baseline with its 95%
    bootstrap CI, a line at zero; filled where Holm's p < ``SIGNIFICANT``. ``table`` is
    ``table.csv`` (its ``<metric>_diff*`` and ``_p_holm`` columns)."""
    rows = table[pd.notna(_values(table, "paired_seeds"))]
    keys = [k for k in METRIC_KEYS if np.isfinite(_values(rows, f"{k}_diff")).any()]
    columns = min(FOREST_COLUMNS, len(keys))
    panels = -(-len(keys) // columns)
    height = 0.35 * len(rows) + 1.2
    figure = Figure(figsize=(3.4 * columns, height * panels), layout="constrained")
    axes = np.atleast_1d(figure.subplots(panels, columns, squeeze=False)).ravel()
    positions = np.arange(len(rows))[::-1]
    for axis, key in zip(axes, keys, strict=False):
        diff = _values(rows, f"{key}_diff")
        low, high = _values(rows, f"{key}_diff_low"), _values(rows, f"{key}_diff_high")
        significant = _values(rows, f"{key}_p_holm") < SIGNIFICANT
        axis.axvline(0.0, color="0.5", linewidth=1)
        axis.errorbar(
            diff, positions, xerr=[diff - low, high - diff], fmt="none", ecolor="tab:blue"
        )
        for filled, marker_face in ((True, "tab:blue"), (False, "white")):
            keep = significant == filled
            axis.plot(diff[keep], positions[keep], "o", color="tab:blue", mfc=marker_face)
        axis.set_yticks(positions, rows["system"])
        axis.set_title(_metric_axis_label(key))
        axis.grid(axis="x", alpha=0.3)
    for axis in axes[len(keys) :]:
        axis.set_visible(False)
    return figure


def _metric_section(table: pd.DataFrame) -> str:
    keys = [k for k in METRIC_KEYS if k in table.columns and np.isfinite(_values(table, k)).any()]
    if not keys:
        return "<p>No metric columns in the comparison table.</p>"
    images = "".join(_metric_plot(table, key) for key in keys)
    return f'<p class="note">Mean ± 95% CI per system.</p><div class="figures">{images}</div>'


def _metric_plot(table: pd.DataFrame, key: str) -> str:
    mean, ci = _values(table, key), np.nan_to_num(_values(table, f"{key}_ci95"))
    figure = Figure(figsize=(max(4.0, 0.6 * len(table) + 1.5), 3.2))
    axis = figure.subplots()
    positions = np.arange(len(table))
    axis.errorbar(positions, mean, yerr=ci, fmt="o", capsize=4, color="tab:blue")
    axis.set_xticks(positions, table["system"], rotation=30, ha="right")
    axis.set_xlabel("system")
    axis.set_ylabel(_metric_axis_label(key))
    axis.set_title(f"{METRIC_LABELS.get(key, (key,))[0]}: mean ± 95% CI")
    axis.grid(axis="y", alpha=0.3)
    return _img(figure, f"{key} per system")


def _personal_section(folder: Path) -> str:
    if not ((folder / "table.csv").is_file() and (folder / "metrics.json").is_file()):
        return "<p>Personalisation not run (no <code>personal/table.csv</code>, <code>metrics.json</code>).</p>"
    table = _read_csv(folder / "table.csv", "personalisation table", "speaker")
    summary = json.loads((folder / "metrics.json").read_text())
    gains = summary["mean_gain"]
    with tempfile.TemporaryDirectory() as tmp:  # the writer's own plot, redrawn from the CSV
        gains_plot(table, gains, Path(tmp) / "gains.png")
        image = _png_tag((Path(tmp) / "gains.png").read_bytes(), "SI-SDR gain per speaker")
    return image + _markdown_html(personal_markdown(table, gains))


def _pareto_section(table: pd.DataFrame) -> str:
    macs, quality = _values(table, "macs_per_second"), _values(table, "si_sdr")
    keep = np.isfinite(macs) & np.isfinite(quality) & (macs > 0)
    if not keep.any():
        return "<p>No system with both MACs and SI-SDR in the comparison table.</p>"
    ci = np.nan_to_num(_values(table, "si_sdr_ci95"))[keep]
    names, macs, quality = table["system"][keep].tolist(), macs[keep], quality[keep]
    optimal = _pareto_optimal(macs, quality)
    figure = Figure(figsize=(6.0, 4.0))
    axis = figure.subplots()
    axis.errorbar(macs, quality, yerr=ci, fmt="o", capsize=4, color="tab:blue", label="system")
    axis.plot(
        macs[optimal],
        quality[optimal],
        "o",
        ms=11,
        mfc="none",
        mec="tab:red",
        mew=2,
        label="Pareto-optimal",
    )
    gap = 0.08 * max(float(np.ptp(quality)), 0.5)
    for name, x, y, label_y in zip(names, macs, quality, _spread(macs, quality, gap), strict=True):
        axis.annotate(
            name, (x, y), xytext=(x * 1.3, label_y), fontsize=8, va="center",
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"},
        )  # fmt: skip
    axis.set_xscale("log")
    axis.set_xlabel("MACs per second of audio")
    axis.set_ylabel("SI-SDR (dB)")
    axis.set_title("Quality vs. compute (mean ± 95% CI)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(loc="best")
    best = ", ".join(html.escape(n) for n, o in zip(names, optimal, strict=True) if o)
    note = (
        f'<p class="note">Pareto-optimal: {best}. A system is Pareto-optimal when no other is at '
        "least as cheap and as good, and strictly one of them. Systems without a MAC count (the "
        "noisy input) are left out.</p>"
    )
    return _img(figure, "SI-SDR vs MACs per second") + note


def _spread(x: np.ndarray, y: np.ndarray, gap: float) -> np.ndarray:
    """Label heights: points with equal ``x`` (students of one size) get labels ``gap`` apart."""
    heights = y.astype(float).copy()
    for value in np.unique(x):
        rows = np.flatnonzero(x == value)
        rows = rows[np.argsort(y[rows])]
        placed = np.maximum.accumulate(y[rows] - gap * np.arange(len(rows))) + gap * np.arange(
            len(rows)
        )
        heights[rows] = placed - (placed - y[rows]).mean()
    return heights


def _pareto_optimal(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Mask of points that no other point dominates (lower-or-equal cost, higher-or-equal value)."""
    no_worse = (cost[None, :] <= cost[:, None]) & (value[None, :] >= value[:, None])
    better = (cost[None, :] < cost[:, None]) | (value[None, :] > value[:, None])
    return ~(no_worse & better).any(axis=1)


def _examples_section(eval_dir: Path, data: Path, table: pd.DataFrame) -> str:
    manifest_path = data / "mixtures" / "test" / "manifest.csv"
    if not manifest_path.is_file():
        return f"<p>Test manifest <code>{html.escape(str(manifest_path))}</code> not found.</p>"
    manifest = read_manifest(manifest_path)
    systems = _example_systems(eval_dir, table)
    ids = [
        uid
        for uid in manifest["id"]
        if all((eval_dir / s / "examples" / f"{uid}.wav").is_file() for s in systems)
    ][:EXAMPLE_UTTERANCES]
    if not ids:
        return "<p>No test utterance has enhanced examples for every system.</p>"
    columns = ["clean (target)", "noisy", *systems]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["utterance", *columns])
    rows = []
    for uid in ids:
        row = manifest[manifest["id"] == uid].iloc[0]
        signals = [read_audio(row["target"], allow_silent=True), read_audio(row["noisy"])]
        signals += [
            read_audio(eval_dir / s / "examples" / f"{uid}.wav", allow_silent=True) for s in systems
        ]
        cells = "".join(f"<td>{cell}</td>" for cell in _example_cells(signals, columns))
        rows.append(f"<tr><th>{html.escape(uid)}</th>{cells}</tr>")
    note = (
        f'<p class="note">Log-magnitude spectrograms (512-point STFT, {DYNAMIC_RANGE_DB:.0f} dB range'
        " below each row's peak) of the first test utterances; one seed per method.</p>"
    )
    body = "\n".join(rows)
    grid = f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    return f'{note}<div class="scroll">{grid}</div>'


def _example_systems(eval_dir: Path, table: pd.DataFrame) -> list[str]:
    """Evaluated systems shown: the teacher and each method's lowest seed, in table order."""
    folders = [p.name for p in sorted(eval_dir.glob("*")) if (p / "examples").is_dir()]
    parsed = [(*split_system(folder), folder) for folder in folders]
    chosen = []
    for method in table["system"]:
        if method == "noisy":  # shown from the manifest, next to its clean target
            continue
        seeds = sorted((-1 if s is None else s, f) for m, s, f in parsed if m == method)
        if seeds:  # the teacher has no seed: -1 keeps it
            chosen.append(seeds[0][1])
    return chosen


def _example_cells(signals: list[np.ndarray], columns: list[str]) -> Iterator[str]:
    spectra = [_log_spectrogram(x) for x in signals]
    top = max(float(s.max()) for s in spectra)
    for audio, spectrum, name in zip(signals, spectra, columns, strict=True):
        figure = Figure(figsize=(2.8, 2.0))
        axis = figure.subplots()
        extent = (0.0, len(audio) / SAMPLE_RATE, 0.0, SAMPLE_RATE / 2000)
        axis.imshow(
            spectrum,
            origin="lower",
            aspect="auto",
            extent=extent,
            cmap="magma",
            vmin=top - DYNAMIC_RANGE_DB,
            vmax=top,
        )
        axis.set_xlabel("time (s)")
        axis.set_ylabel("frequency (kHz)")
        yield _img(figure, f"spectrogram: {name}") + "<br>" + _audio_tag(audio)


def _log_spectrogram(audio: np.ndarray) -> np.ndarray:
    _, _, spectrum = stft(audio, fs=SAMPLE_RATE, nperseg=512, noverlap=384)
    return 20 * np.log10(np.abs(spectrum) + 1e-8)


def _dataset_section(mixtures: Path) -> str:
    frames = {
        split: read_manifest(mixtures / split / "manifest.csv")
        for split in SPLITS
        if (mixtures / split / "manifest.csv").is_file()
    }
    if not frames:
        return f"<p>No manifests under <code>{html.escape(str(mixtures))}</code>.</p>"
    figure = Figure(figsize=(12.0, 3.4))
    for axis, (column, label) in zip(figure.subplots(1, 3), DATASET_QUANTITIES, strict=True):
        values = {s: _finite(df[column]) for s, df in frames.items()}
        edges = np.histogram_bin_edges(np.concatenate(list(values.values())), bins=20)
        for split, x in values.items():
            weights = np.full(len(x), 1 / max(len(x), 1))  # fractions: splits differ in size
            axis.hist(x, bins=edges, weights=weights, alpha=0.45, label=f"{split} ({len(x)})")
        axis.set_xlabel(label)
        axis.set_ylabel("fraction of the split's mixtures")
        axis.set_title(label.split(" (")[0].split(",")[0])
        axis.legend(loc="best")
    figure.tight_layout()
    return _img(figure, "RT60, SNR and DRR histograms") + _dataset_table(frames)


def _finite(column: pd.Series) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    return values[np.isfinite(values)]


def _dataset_table(frames: dict[str, pd.DataFrame]) -> str:
    head = "".join(f"<th>{html.escape(label)} mean</th>" for _, label in DATASET_QUANTITIES)
    rows = []
    for split, df in frames.items():
        means = "".join(f"<td>{_mean_text(_finite(df[c]))}</td>" for c, _ in DATASET_QUANTITIES)
        rows.append(f"<tr><td>{split}</td><td>{len(df)}</td>{means}</tr>")
    return f"<table><tr><th>split</th><th>mixtures</th>{head}</tr>{''.join(rows)}</table>"


def _mean_text(values: np.ndarray) -> str:
    return f"{values.mean():.2f}" if len(values) else ""
