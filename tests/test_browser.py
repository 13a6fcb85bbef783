"""What a researcher looks at, rendered in a real headless Chromium: the MLflow compare view of the
distilled students (served by a real `mlflow server` the pipeline logged to) and the generated
report opened from disk.

Chromium comes from Debian (`apt-get install chromium`, done here when missing and root). Where it
cannot be installed the test fails and says so; SEKD_ALLOW_NO_BROWSER=1 makes that an explicit skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow_server import free_port, start_server, stop_server
from repo_copy import BIN, copy_repo, tiny_overlay
from tiny import UNTUNED

from sekd.config import deep_merge

pytestmark = pytest.mark.pipeline

METHODS = ["output_kd", "dfkd"]
OVERLAY = {"distill": {"methods": METHODS, **UNTUNED}, "tune": {"methods": []}}
CHECK = """<script>
window.sekdErrors = [];
window.addEventListener('error', e => window.sekdErrors.push(String(e.message || e.target.src)), true);
window.addEventListener('load', () => {
  const images = [...document.images];
  const result = {
    images: images.length,
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 40)),
    tables: document.querySelectorAll('table').length,
    audio: document.querySelectorAll('audio').length,
    sections: [...document.querySelectorAll('h2[id]')].map(h => h.id),
    errors: window.sekdErrors,
  };
  const out = document.createElement('pre');
  out.id = 'sekd-check';
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def _fail_or_skip(message: str) -> None:
    if os.environ.get("SEKD_ALLOW_NO_BROWSER") == "1":
        pytest.skip(message)
    pytest.fail(message + " (SEKD_ALLOW_NO_BROWSER=1 skips it knowingly)")


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True
        )
        found = shutil.which("chromium")
    if not found:
        _fail_or_skip("NO CHROMIUM: cannot install Debian's chromium (not root or no apt-get)")
    return found


def render(chromium: str, url: str, tmp_path: Path) -> str:
    """The DOM after the page's scripts ran (virtual time lets the MLflow UI finish loading)."""
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--window-size=1400,900",
        "--virtual-time-budget=20000", "--dump-dom", url,
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on loopback in its lean form (one worker, job execution off)."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = start_server(root, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def pipeline(mlflow_server, tmp_path_factory) -> Path:
    """The tiny pipeline, two KD methods, logging to the server; the report included."""
    repo = copy_repo(tmp_path_factory.mktemp("repo"), deep_merge(tiny_overlay(), OVERLAY))
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": mlflow_server,
    }
    proc = subprocess.run(
        ["snakemake", "-c2", "--quiet", "rules"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return repo


def test_mlflow_compare_view_lists_both_students_with_the_same_keys(
    pipeline, mlflow_server, chromium, tmp_path
):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("sekd/distill")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    names = {r.info.run_name: r for r in runs}
    assert set(names) == {f"distill/{m}/seed0" for m in ["nokd", *METHODS]}  # baseline beside
    keys = [{k for k in r.data.metrics if k.startswith("test/")} for r in runs]
    assert all(k == keys[0] for k in keys) and {"test/si_sdr", "test/pesq_wb"} <= keys[0]
    ids = json.dumps([r.info.run_id for r in runs], separators=(",", ":"))
    query = urllib.parse.urlencode(
        {"runs": ids, "experiments": json.dumps([experiment.experiment_id])}
    )
    dom = render(chromium, f"{mlflow_server}/#/compare-runs?{query}", tmp_path)
    text = re.sub(r"<[^>]+>", " ", dom)
    for name in names:
        assert name in text, f"{name} is not on the compare page"
    # the page's metric table (a scrolling box: about 17 rows render) lists the shared test keys
    shown = set(re.findall(r"\btest/\w+", text))
    assert {"test/pesq_wb", "test/csig", "test/dnsmos_ovrl"} <= shown <= keys[0], shown


def test_the_printed_comparison_address_shows_every_students_si_sdr(
    pipeline, mlflow_server, chromium, tmp_path
):
    """`sekd summary` prints the MLflow UI address of the comparison; opened as it is, with no
    clicks, the runs table shows every student's test SI-SDR, the no-KD baseline's included."""
    from mlflow import MlflowClient

    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": mlflow_server,
    }
    proc = subprocess.run(
        ["sekd", "summary"], cwd=pipeline, env=env, capture_output=True, text=True, check=True
    )
    url = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("compare:"))
    assert url.startswith(f"{mlflow_server}/#/experiments/"), url
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("sekd/distill")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    scores = {r.info.run_name: r.data.metrics["test/si_sdr"] for r in runs}
    assert set(scores) == {f"distill/{method}/seed0" for method in ["nokd", *METHODS]}
    text = re.sub(r"<[^>]+>", " ", render(chromium, url, tmp_path))
    for name, value in scores.items():
        assert f" {value!r} " in text, f"{name}: test/si_sdr {value!r} is not in the run table"
        assert name in text
    shot = tmp_path / "mlflow-comparison.png"  # kept with the test's temporary files
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile-shot'}", "--window-size=1600,900",
        "--virtual-time-budget=20000", f"--screenshot={shot}", url,
    ]  # fmt: skip
    subprocess.run(command, capture_output=True, timeout=180, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")


def test_compare_prints_the_report_numbers(pipeline, mlflow_server, monkeypatch):
    from sekd.cli import main
    from sekd.compare import compare_text, method_table, runs_frame

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    table = method_table(runs_frame("distill")).set_index("system")
    compared = compare_text("distill")
    assert main(["compare", "--phase", "distill", "--params", str(pipeline / "params.yaml")]) == 0
    report = pd.read_csv(pipeline / "results/table.csv").set_index("system")
    for method in [*METHODS, "nokd"]:
        for key in ("si_sdr", "pesq_wb", "stoi"):
            assert table.loc[method, key] == pytest.approx(report.loc[method, key], abs=5e-5)
    # the paired differences, from the per-utterance scores logged on the training runs
    shown = _paired_cells(compared)
    assert shown == _paired_cells((pipeline / "results/table.md").read_text())
    assert {method for _, method in shown} == set(METHODS) and len(shown) >= 3 * len(METHODS)


@pytest.mark.parametrize(
    "filters",
    [
        [],
        ["--method", "dfkd"],
        ["--seed", "0"],
        ["--method", "output_kd", "--seed", "0"],
        ["--method", "nokd", "--method", "dfkd"],
    ],
)
def test_compare_with_every_filter_prints_table_md_numbers(
    pipeline, mlflow_server, capsys, monkeypatch, filters
):
    """Each filter's printed rows: the methods asked for, with table.md's params, MMAC/s and
    metric means (one seed: compare shows the mean, table.md mean ± CI over utterances), and
    the shown KD methods' paired differences to no-KD equal table.md's."""
    from sekd.cli import main

    argv = ["compare", "--phase", "distill", "--params", str(pipeline / "params.yaml"), *filters]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table_md = (pipeline / "results/table.md").read_text()
    shown, expected = _method_rows(printed), _method_rows(table_md)
    asked = [f for flag, f in zip(filters, filters[1:], strict=False) if flag == "--method"]
    assert set(shown) == set(asked or [*METHODS, "nokd"])
    for system, cells in shown.items():
        for column, cell in cells.items():
            if column not in ("system", "seeds", "tuned values"):
                assert cell == expected[system][column].split(" ± ")[0], (system, column)
    kd_shown = set(shown) - {"nokd"}
    paired = _paired_cells(printed) if kd_shown else {}
    assert {m for _, m in paired} == kd_shown
    assert paired == {k: v for k, v in _paired_cells(table_md).items() if k[1] in kd_shown}


def test_compare_with_a_seed_that_has_no_run_says_so(pipeline, mlflow_server, capsys, monkeypatch):
    from sekd.cli import main

    argv = ["compare", "--phase", "distill", "--params", str(pipeline / "params.yaml")]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert main([*argv, "--seed", "7"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("sekd compare: error: MLflow: no finished run") and "seeds [7]" in error


def _method_rows(markdown: str) -> dict[str, dict[str, str]]:
    """``{system: {column: cell}}`` of the method table (the first table) in ``markdown``."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        if line.startswith("| metric |"):
            break  # the paired table
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells, strict=True))
    return rows


def _paired_cells(markdown: str) -> dict[tuple[str, str], str]:
    """``{(metric, method): cell}`` of the paired-difference table in ``markdown``."""
    lines = markdown[markdown.index("Paired difference") :].splitlines()
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")
    ]
    (_, *methods), *body = rows
    return {
        (row[0], method): cell
        for row in body
        for method, cell in zip(methods, row[1:], strict=True)
    }


def test_dvc_plots_show_renders_offline(pipeline, chromium, tmp_path):
    """`dvc plots show` writes a page that draws every plot with no network: .dvc/config names
    sekd's template, which carries Vega inline (DVC's own loads it from a CDN)."""
    out = tmp_path / "plots"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    subprocess.run(
        ["dvc", "plots", "show", "-o", str(out)], cwd=pipeline, env=env, check=True, text=True,
        capture_output=True,
    )  # fmt: skip
    page = (out / "index.html").read_text()
    assert not re.findall(r"<script[^>]+src=", page), "the page loads a script from elsewhere"
    dom = render(chromium, (out / "index.html").as_uri(), tmp_path)
    drawn = len(re.findall(r"<svg[^>]*class=\"marks\"", dom))
    assert drawn == 3, (
        f"{drawn} of 3 plots drawn (teacher_curve, student_curves, method_comparison)"
    )


def test_report_renders_every_figure_and_table_offline(pipeline, chromium, tmp_path):
    index = pipeline / "results/report/index.html"
    html = index.read_text()
    assert not re.search(r"""(src|href)=["']https?://""", html)  # nothing fetched from the network
    probe = index.with_name("probe.html")
    probe.write_text(html.replace("<head>", "<head>" + CHECK, 1))
    dom = render(chromium, probe.as_uri(), tmp_path)
    found = re.search(r'<pre id="sekd-check">(.*?)</pre>', dom, re.S)
    assert found, "the probe never ran: the page did not finish loading"
    check = json.loads(found.group(1).replace("&quot;", '"'))
    assert check["errors"] == [] and check["broken"] == [], check
    assert check["images"] >= 8 and check["tables"] >= 2 and check["audio"] >= 4, check
    assert len(check["sections"]) >= 6, check
