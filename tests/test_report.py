"""The HTML report: every section present, inline figures and audio that decode, no network
reference, and the comparison table's numbers equal to ``table.csv``'s."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import pytest
import soundfile as sf

from sekd.data.manifest import MANIFEST_COLUMNS, write_manifest
from sekd.errors import SekdError
from sekd.io import SAMPLE_RATE, write_audio, write_json
from sekd.metrics import METRIC_KEYS
from sekd.report import write_report
from sekd.results import NOT_TRAINED, write_comparison, write_personal_table

CFG = {"paths": {"data": "data", "models": "models", "results": "results"}}
SECTIONS = ("comparison", "paired", "metrics", "personal", "pareto", "examples", "dataset")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# system -> (quality offset, MACs per second); noisy has no model, so no MACs
SYSTEMS = {
    "noisy": (0.0, None),
    "teacher": (3.0, 2.0e8),
    "nokd-0": (1.0, 2.0e6),
    "nokd-1": (1.4, 2.0e6),
    "okd-0": (1.8, 2.0e6),
}
BASE = {"pesq_wb": 1.5, "stoi": 0.6, "si_sdr": 2.0, "si_sdr_i": 0.0, "dnsmos_ovrl": 2.0}
TEST_IDS = ["t0", "t1", "t2"]
EXAMPLES = 2


def _tone(seed: int) -> np.ndarray:
    """A short sine in noise: real audio, fast to score and plot."""
    rng = np.random.default_rng(seed)
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(
        np.float32
    )


def _evaluation(folder: Path, system: str, offset: float, macs: float | None) -> None:
    """An evaluation folder as ``evaluate_system`` writes it (metrics.json, per-utterance scores
    whose means are the metrics', examples)."""
    metrics = {
        key: {"mean": base + offset * 0.1 * (1 + i), "ci95": 0.05 * (1 + i), "n": 3, "n_invalid": 0}
        for i, (key, base) in enumerate(BASE.items())
    }
    info = {"system": system, "manifest": "m.csv", "utterances": 3, "dnsmos_utterances": 3}
    if macs is not None:
        info |= {"name": "gru_mask", "params": 12345, "macs_per_second": macs}
    write_json(folder / "metrics.json", {"system": info, "metrics": metrics})
    spread = np.array([-0.02, 0.0, 0.02]) * (1 + offset)
    scores = {key: value["mean"] + spread for key, value in metrics.items()}
    pd.DataFrame({"id": TEST_IDS, **scores}).to_csv(folder / "per_utterance.csv", index=False)
    for i, uid in enumerate(TEST_IDS[:EXAMPLES]):
        write_audio(folder / "examples" / f"{uid}.wav", _tone(i) * 0.5)


def _manifest(folder: Path, split: str, count: int, rng: np.random.Generator) -> None:
    rows = []
    for i in range(count):
        uid = TEST_IDS[i] if split == "test" else f"{split}{i}"
        row = dict.fromkeys(MANIFEST_COLUMNS, "")
        row |= {"id": uid, "split": split, "speaker": "s1", "utterance": f"u{i}", "seconds": 0.5}
        row |= {"noisy": f"noisy/{uid}.wav", "target": f"target/{uid}.wav"}
        row |= {"rt60_target": 0.4, "rt60_measured": rng.uniform(0.2, 0.7)}
        row |= {"drr_db": rng.uniform(-3, 8), "snr_db": rng.uniform(-5, 5)}
        rows.append(row)
        if split == "test":
            write_audio(folder / "target" / f"{uid}.wav", _tone(i) * 0.5)
            write_audio(folder / "noisy" / f"{uid}.wav", _tone(i + 10) * 0.8)
    write_manifest(pd.DataFrame(rows), folder / "manifest.csv")


def _personal(results: Path) -> None:
    folders = []
    for speaker, values in {
        "s1": (9.0, 4.0, 6.0),
        "s2": (8.0, 5.0, 6.0),
        "s3": (7, 5, 4.5),
    }.items():
        for role, value in zip(("teacher", "unadapted", "personalised"), values, strict=True):
            folder = results / "personal" / "eval" / speaker / role
            metrics = {k: {"mean": value, "ci95": None, "n": 8, "n_invalid": 0} for k in BASE}
            write_json(folder / "metrics.json", {"system": {}, "metrics": metrics})
            folders.append(folder)
    write_personal_table(folders, results / "personal")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("run")
    results = root / "results"
    for system, (offset, macs) in SYSTEMS.items():
        _evaluation(results / "eval" / system, system, offset, macs)
    write_comparison([results / "eval" / s for s in SYSTEMS], results)
    _personal(results)
    rng = np.random.default_rng(0)
    for split, count in {"train": 12, "valid": 4, "test": 3}.items():
        _manifest(root / "data" / "mixtures" / split, split, count, rng)
    path = write_report(root, results / "report", CFG)
    return root, path.read_text()


def _section(page: str, key: str) -> str:
    start = page.index(f'<h2 id="{key}"')
    end = page.find("<h2 ", start + 1)
    return page[start : end if end > 0 else len(page)]


def _without_data(html: str) -> str:
    """The page without its base64 payloads, which may contain any short text by chance."""
    return re.sub(r"data:[^\"]*", "", html)


def _sources(page: str, tag: str) -> list[bytes]:
    return [
        base64.b64decode(s) for s in re.findall(rf'<{tag}\b[^>]*\bsrc="data:[^,]*,([^"]*)"', page)
    ]


class _Rows(HTMLParser):
    """Cell texts of the first ``<table>``'s rows."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.state = "before"  # before -> inside -> after the first table
        self.cell = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table" and self.state == "before":
            self.state = "inside"
        elif self.state == "inside" and tag == "tr":
            self.rows.append([])
        elif self.state == "inside" and tag in ("td", "th"):
            self.rows[-1].append("")
            self.cell = True

    def handle_endtag(self, tag: str) -> None:
        self.cell = self.cell and tag not in ("td", "th")
        if tag == "table" and self.state == "inside":
            self.state = "after"

    def handle_data(self, data: str) -> None:
        if self.cell:
            self.rows[-1][-1] += data


def test_report_is_written_with_every_section(report):
    root, page = report
    assert [p.name for p in (root / "results" / "report").iterdir()] == ["index.html"]
    for key in SECTIONS:
        assert f'<h2 id="{key}"' in page and f'href="#{key}"' in page
    assert "not run" not in _section(page, "personal")
    assert "| s3 |" not in page and "<td>s3</td>" in _section(page, "personal")
    assert "Pareto-optimal: teacher, okd." in _section(page, "pareto")  # nokd: okd is better


def test_figures_are_inline_pngs(report):
    _, page = report
    images = _sources(page, "img")
    assert len(images) == page.count("<img ")
    # paired forest + 5 metrics + personal gains + Pareto + 2 x (clean, noisy, teacher, nokd, okd) + data
    assert len(images) == 1 + 5 + 1 + 1 + EXAMPLES * 5 + 1
    assert all(png[:8] == PNG_SIGNATURE for png in images)
    for png in images:
        PIL.Image.open(io.BytesIO(png)).verify()  # Pillow comes with matplotlib


def test_audio_is_inline_wav_with_the_examples(report):
    _, page = report
    clips = _sources(page, "audio")
    assert len(clips) == page.count("<audio ") == EXAMPLES * 5
    for wav in clips:
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
        audio, rate = sf.read(io.BytesIO(wav))
        assert rate == SAMPLE_RATE and len(audio) == SAMPLE_RATE // 2
    examples = _without_data(_section(page, "examples"))
    assert "okd-0" in examples and "nokd-0" in examples and "nokd-1" not in examples
    assert "t0" in examples and "t1" in examples and "t2" not in examples


def test_no_network_references(report):
    _, page = report
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page


def test_comparison_table_matches_table_csv(report):
    root, page = report
    table = pd.read_csv(root / "results" / "table.csv", dtype={"system": str})
    parser = _Rows()
    parser.feed(_section(page, "comparison"))
    head, *rows = [[cell.strip() for cell in row] for row in parser.rows]
    by_system = {row[0]: dict(zip(head, row, strict=True)) for row in rows}
    assert list(by_system) == list(table["system"]) == ["noisy", "teacher", "nokd", "okd"]
    keys = [k for k in METRIC_KEYS if k in table.columns]
    assert keys == list(BASE)
    for _, expected in table.iterrows():
        cells = by_system[expected["system"]]
        for key in keys:
            assert cells[key].split(" ± ")[0] == f"{expected[key]:.3f}"
            assert cells[key].split(" ± ")[1] == f"{expected[f'{key}_ci95']:.3f}"
    assert by_system["nokd"]["seeds"] == "2"


def test_partial_run_reports_missing_sections_and_missing_table_is_an_error(report, tmp_path):
    source, _ = report
    results = tmp_path / "results"
    results.mkdir()
    (results / "table.csv").write_text((source / "results" / "table.csv").read_text())
    page = write_report(tmp_path, tmp_path / "out", CFG).read_text()
    for key in SECTIONS:
        assert f'<h2 id="{key}"' in page
    assert "not run" in _section(page, "personal")
    assert "not found" in _section(page, "examples")
    assert "No manifests" in _section(page, "dataset")
    (results / "table.csv").unlink()
    with pytest.raises(SekdError, match=re.escape(str(results / "table.csv"))):
        write_report(tmp_path, tmp_path / "out", CFG)


def test_a_model_its_method_never_updated_gets_no_numbers(tmp_path):
    """The table rule: no row of numbers for weights that received no update of their method."""
    for system, updates in {"nokd-0": 40, "metricgan-0": 0, "metricgan-1": 12}.items():
        folder = tmp_path / "eval" / system
        _evaluation(folder, system, 1.0, 2.0e6)
        result = json.loads((folder / "metrics.json").read_text())
        result["system"]["updates"] = updates
        write_json(folder / "metrics.json", result)
    systems = sorted((tmp_path / "eval").iterdir())
    table = write_comparison(systems, tmp_path)
    row = table.set_index("system").loc["metricgan"]
    assert row["status"] == NOT_TRAINED and pd.isna(row["si_sdr"]) and row["seeds"] == 2
    assert table.set_index("system").loc["nokd", "si_sdr"] > 0
    assert (
        f"| metricgan | 2 | 12,345 | 2.0 | not tuned | {NOT_TRAINED} |"
        in (tmp_path / "table.md").read_text()
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metricgan-0"] == {"status": NOT_TRAINED} and "si_sdr" in metrics["metricgan-1"]


def test_the_table_says_which_tuned_values_each_row_used(tmp_path):
    """Fair budgets made visible: each row shows its study's values and trial count, or that it
    trained with params.yaml's values."""
    tuning = {
        "nokd-0": {"values": {"student.train.lr": 0.0031234}, "study": "sekd-nokd-1", "trials": 4},
        "dfkd-0": {"values": {"weight": 7.8, "beta": 0.25}, "study": "sekd-dfkd-1", "trials": 4},
        "okd-0": None,
    }
    for system, record in tuning.items():
        folder = tmp_path / "eval" / system
        _evaluation(folder, system, 1.0, 2.0e6)
        result = json.loads((folder / "metrics.json").read_text())
        result["system"] |= {"updates": 4, "tuning": record}
        write_json(folder / "metrics.json", result)
    _evaluation(tmp_path / "eval" / "noisy", "noisy", 0.0, None)
    table = write_comparison(sorted((tmp_path / "eval").iterdir()), tmp_path)
    shown = table.set_index("system")["tuning"].to_dict()
    assert shown == {
        "nokd": "lr=0.00312 (4 trials)",
        "dfkd": "beta=0.25, weight=7.8 (4 trials)",
        "okd": "not tuned",
        "noisy": "",
    }
    assert (
        "| nokd | 1 | 12,345 | 2.0 | lr=0.00312 (4 trials) |" in (tmp_path / "table.md").read_text()
    )


def test_two_methods_reporting_the_same_weights_are_refused(tmp_path):
    for system in ("nokd-0", "okd-0"):
        folder = tmp_path / "eval" / system
        _evaluation(folder, system, 1.0, 2.0e6)
        result = json.loads((folder / "metrics.json").read_text())
        result["system"] |= {"updates": 4, "weights_sha256": "ab" * 32}
        write_json(folder / "metrics.json", result)
    with pytest.raises(SekdError, match="okd-0 and nokd-0: byte-identical weights"):
        write_comparison(sorted((tmp_path / "eval").iterdir()), tmp_path)


def test_paired_differences_join_the_table_the_report_and_methods_json(report):
    """okd-0 pairs with nokd-0 (seed 0): its differences are in table.csv, the report's paired
    section shows the same numbers, methods.json carries them; nokd itself has none."""
    root, page = report
    table = pd.read_csv(root / "results" / "table.csv").set_index("system")
    okd = table.loc["okd"]
    unpaired = okd["si_sdr"] - table.loc["nokd", "si_sdr"]  # nokd's row pools seeds 0 and 1
    # the pairing uses seed 0 alone: 0.1 * 3 * (1.8 - 1.0), utterance by utterance
    assert okd["si_sdr_diff"] == pytest.approx(0.24, abs=1e-4) and unpaired != okd["si_sdr_diff"]
    assert okd["paired_seeds"] == 1 and pd.isna(table.loc["nokd", "si_sdr_diff"])
    cell = (
        f"{okd['si_sdr_diff']:+.3f} [{okd['si_sdr_diff_low']:+.3f}, {okd['si_sdr_diff_high']:+.3f}]"
    )
    assert cell in _section(page, "paired")
    methods = json.loads((root / "results" / "methods.json").read_text())
    assert methods["okd"]["si_sdr"]["diff"] == round(okd["si_sdr_diff"], 4)
    assert "diff" not in methods["nokd"]["si_sdr"] and methods["nokd"]["seeds"] == 2
