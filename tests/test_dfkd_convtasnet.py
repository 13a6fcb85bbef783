"""config/settings/dfkd_convtasnet.yaml: DFKD from a Conv-TasNet teacher into a smaller Conv-TasNet
student (issue 16, dfkd (b)), and the overlay merge that lets a setting change the model family."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from repo_copy import copy_repo, run, tiny_overlay
from tiny import UNTUNED, paper_corpora

from sekd.config import deep_merge, load_params, validate_params
from sekd.distill import build_distiller
from sekd.errors import SekdError
from sekd.losses.stft import stft
from sekd.models import build_model
from sekd.models.complexity import count_parameters
from sekd.stream import require_causal_gru

REPO = Path(__file__).resolve().parents[1]
SETTING = REPO / "config/settings/dfkd_convtasnet.yaml"
TINY_SETTING = REPO / "tests/config/tiny_dfkd_convtasnet.yaml"
SHRINK = {"N": 16, "B": 8, "H": 16, "X": 2, "R": 1}  # tiny sizes for a quick training step


def setting_params(*middle: str) -> dict:
    return load_params(REPO / "params.yaml", *(REPO / path for path in middle), SETTING)


@pytest.mark.parametrize("middle", [(), ("config/paper.yaml",)])
def test_overlay_validates_as_a_convtasnet_pair(middle, tmp_path):
    corpora = tmp_path / "corpora.yaml"  # the paper's corpus folders, as empty stand-ins
    corpora.write_text(yaml.safe_dump(paper_corpora(tmp_path)))
    cfg = setting_params(*middle, *([corpora] if middle else []))
    setting = yaml.safe_load(SETTING.read_text())
    assert cfg["distill"]["methods"] == ["output_kd", "dfkd"]
    assert cfg["tune"]["methods"] == ["output_kd", "dfkd"]
    assert cfg["distill"]["dfkd"]["rise"] == "absolute"
    sizes = {}
    for role in ("teacher", "student"):
        model_cfg = cfg[role]["model"]
        assert model_cfg == setting[role]["model"]  # not merged with params.yaml's GRU conf
        assert model_cfg["name"] == "convtasnet"
        sizes[role] = count_parameters(build_model(model_cfg["name"], model_cfg["conf"]))
    assert sizes["student"] < sizes["teacher"] / 4


def test_a_model_named_with_its_conf_replaces_the_earlier_one():
    base = {"model": {"name": "gru_mask", "conf": {"hidden": 256, "n_fft": 512}}, "x": 1}
    swapped = deep_merge(base, {"model": {"name": "convtasnet", "conf": {"N": 64}}})
    assert swapped == {"model": {"name": "convtasnet", "conf": {"N": 64}}, "x": 1}
    resized = deep_merge(base, {"model": {"conf": {"hidden": 32}}})
    assert resized["model"] == {"name": "gru_mask", "conf": {"hidden": 32, "n_fft": 512}}
    # tests/config/tiny.yaml's GRU `hidden` lands in the Conv-TasNet conf; the tiny setting
    # file, a model named with its conf, replaces it again.
    merged = deep_merge(
        deep_merge(setting_params(), tiny_overlay()), yaml.safe_load(TINY_SETTING.read_text())
    )
    assert merged["student"]["model"]["conf"].keys() == {*"NLBHPXR", "causal", "mask_act"}
    assert validate_params(merged)["distill"]["methods"] == ["output_kd", "dfkd"]


def test_snakemake_merges_the_setting_over_params_yaml(tmp_path):
    """Snakemake merges --configfile key by key; the workflow re-merges with sekd's merge."""
    repo = copy_repo(tmp_path / "repo", {})
    setting = "config/settings/dfkd_convtasnet.yaml"
    out = run(["snakemake", "-n", "-c2", "--quiet", "rules", "--configfile", setting], repo).stdout
    assert "train_teacher" in out and "distill" in out


def tiny_pair(cfg: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The setting's teacher and student with every width and depth cut (a quick test step)."""
    models = []
    for role, scale in (("teacher", 2), ("student", 1)):
        conf = copy.deepcopy(cfg[role]["model"]["conf"])
        conf.update({key: value * scale for key, value in SHRINK.items()})
        models.append(build_model(cfg[role]["model"]["name"], conf))
    return models[0], models[1]


def test_one_dfkd_step_trains_the_student():
    cfg = setting_params()
    torch.manual_seed(0)
    teacher, student = tiny_pair(cfg)
    method_cfg = {**cfg["distill"]["dfkd"], **UNTUNED["dfkd"]}  # tune.methods is the setting's
    distiller = build_distiller("dfkd", teacher, method_cfg, cache_teacher=False)
    target = 0.1 * torch.sin(torch.arange(8000) * 0.05).repeat(2, 1)
    batch = {"noisy": target + 0.05 * torch.randn(2, 8000), "target": target}
    before = [p.detach().clone() for p in student.parameters()]
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    loss, parts = distiller(student, batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and parts["kd"] > 0 and parts["kd_low"] > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


def test_student_estimates_phase():
    """Conv-TasNet's output phase is its own, not the noisy phase a real mask keeps (gru_mask turns
    it by ~0.02 rad here, gru_mask_complex at initialisation by ~0.06, this student by ~1.6)."""
    cfg = setting_params()
    torch.manual_seed(0)
    model_cfg = cfg["student"]["model"]
    student = build_model(model_cfg["name"], model_cfg["conf"]).eval()
    noisy = 0.1 * torch.randn(1, 16000)
    with torch.no_grad():
        out = student(noisy)
    spec_in, spec_out = stft(noisy, 512, 128), stft(out, 512, 128)
    strong = (spec_out.abs() > 0.1 * spec_out.abs().max()) & (spec_in.abs() > 0)
    turn = torch.angle(spec_out * spec_in.conj())[strong].abs()
    assert strong.sum() > 100 and turn.mean() > 0.3  # radians; a real mask gives ~0.02
    with pytest.raises(SekdError, match="ConvTasNet"):
        require_causal_gru(student)  # streaming and ONNX export: GRU mask students only
