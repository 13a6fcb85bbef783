"""Config validation: unknown keys, wrong types and impossible ranges fail at once, naming the key."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import paper_corpora

from sekd.config import deep_merge, load_params, params_hash, validate_params, validate_sections
from sekd.errors import SekdError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(REPO / "params.yaml")


@pytest.mark.parametrize(
    ("mutate", "key", "why"),
    [
        (lambda c: c["synth"].update(snr_db=[5.0, -5.0]), "synth.snr_db", "low 5.0 > high -5.0"),
        (lambda c: c["synth"].update(rt60=[0.0, 0.5]), "synth.rt60.0", "less than or equal"),
        (lambda c: c["synth"]["room"].update(width=[6, 3]), "synth.room.width", "low 6 > high 3"),
        (lambda c: c["synth"].update(snr=[0, 5]), "synth.snr", "snr' was unexpected"),
        (lambda c: c["teacher"]["train"].update(lr="fast"), "teacher.train.lr", "not of type"),
        (lambda c: c["student"]["model"].update(name="unet"), "student.model.name", "unet"),
        (lambda c: c["teacher"]["model"]["conf"].update(hiden=3), "teacher.model.conf.hiden", ""),
        (lambda c: c["split"].update(train=40), "split", "needs 50 speakers"),
        (lambda c: c.pop("evaluate"), "evaluate", "required"),
    ],
)
def test_invalid_params_name_the_key(params: dict, mutate, key: str, why: str) -> None:
    bad = copy.deepcopy(params)
    mutate(bad)
    with pytest.raises(SekdError, match=rf"invalid key '{key}'") as err:
        validate_params(bad)
    assert why in str(err.value)
    assert "\n" not in str(err.value)


def _space(method: str, **entry) -> object:
    return lambda c: c["tune"][method].update(space=[entry])


# Constraints the trainers once re-checked by hand (train, adapt, okd, metricgan) and the tuning
# space's cross-check: the schema and sekd.config reject each, naming the key.
@pytest.mark.parametrize(
    ("mutate", "key", "why"),
    [
        (
            lambda c: c["teacher"]["train"].update(scheduler="step"),
            "teacher.train.scheduler",
            "'step'",
        ),
        (
            lambda c: c["student"]["train"].update(momentum=0.9),
            "student.train.momentum",
            "unexpected",
        ),
        (lambda c: c["student"]["train"].pop("patience"), "student.train.patience", "required"),
        (lambda c: c["adapt"].update(loss="l1"), "adapt.loss", "'l1' is not one of"),
        (lambda c: c["adapt"].update(valid_utterances=0), "adapt.valid_utterances", "minimum of 1"),
        (lambda c: c["adapt"].update(dnsmos_drop=-0.1), "adapt.dnsmos_drop", "minimum of 0"),
        (lambda c: c["adapt"].update(guard_patience=0), "adapt.guard_patience", "minimum of 1"),
        (lambda c: c["adapt"].update(seed=0), "adapt.seed", "unexpected"),
        (lambda c: c["adapt"].pop("loss"), "adapt.loss", "required"),
        (lambda c: c["adapt"]["train"].update(scheduler="x"), "adapt.train.scheduler", "'x'"),
        (lambda c: c["distill"]["okd"].update(beta=1), "distill.okd.beta", "unexpected"),
        (lambda c: c["distill"]["okd"].pop("lr"), "distill.okd.lr", "required"),
        (lambda c: c["distill"]["okd"].update(init="warm"), "distill.okd.init", "'warm'"),
        (
            lambda c: c["distill"]["okd"].update(metrics=["pesq", "pesq"]),
            "distill.okd.metrics",
            "non-unique",
        ),
        (
            lambda c: c["distill"]["okd"].update(metrics=["pesq_wb", "csig"]),
            "distill.okd.metrics.0",
            "'pesq_wb'",
        ),
        (
            lambda c: c["distill"]["okd"].update(metrics=["pesq"]),
            "distill.okd.metrics",
            "too short",
        ),
        (
            lambda c: c["distill"]["metricgan"].update(metric="pesq_wb"),
            "distill.metricgan.metric",
            "'pesq_wb'",
        ),
        (
            lambda c: c["distill"]["metricgan"].update(alpha=1),
            "distill.metricgan.alpha",
            "unexpected",
        ),
        (lambda c: c["distill"]["metricgan"].pop("metric"), "distill.metricgan.metric", "required"),
        (
            lambda c: c["distill"]["metricgan"].update(init="warm"),
            "distill.metricgan.init",
            "'warm'",
        ),
        (
            _space("dfkd", name="beta", type="float", low=0.0, high=1.5),
            "tune.dfkd.space.0",
            "beta = 1.5: 'distill.dfkd.beta': 1.5 is greater than the maximum of 1",
        ),
        (
            _space("dfkd", name="hop", type="int", low=64, high=1024),
            "tune.dfkd.space.0",
            "'distill.dfkd.hop': 1024 is greater than n_fft (512)",
        ),
        (
            _space("dfkd", name="rise", type="categorical", choices=["absolute", "steep"]),
            "tune.dfkd.space.0",
            "rise = 'steep': 'distill.dfkd.rise': 'steep' is not one of",
        ),
        (
            _space("output_kd", name="student.model.conf.hidden", type="int", low=0, high=8),
            "tune.output_kd.space.0",
            "'student.model.conf.hidden': 0 is less than the minimum of 1",
        ),
        (
            _space("output_kd", name="lambda", type="float", low=0.1, high=1.0),
            "tune.output_kd.space.0",
            "'lambda' names no config key",
        ),
        (
            _space("output_kd", name="student.model.conf.hiden", type="int", low=1, high=8),
            "tune.output_kd.space.0",
            "'student.model.conf.hiden' names no config key",
        ),
        (
            lambda c: c["corpus"]["demo"].update(utterances_per_speaker=20),
            "synth.personal",
            "every test speaker has 20 utterances (corpus.demo.utterances_per_speaker), "
            "needs 24 (adapt 16 + test 8)",
        ),
        (
            lambda c: c["tune"]["methods"].append("nokd"),
            "tune.methods.3",
            "'nokd' is not allowed: a KD method; the no-KD baseline (tune.nokd) is tuned whenever",
        ),
        (_space("dfkd", name="beta", type="float", low=0.0), "tune.dfkd.space.0.high", "required"),
        (_space("dfkd", name="rise", type="categorical"), "tune.dfkd.space.0.choices", "required"),
    ],
)
def test_constraints_once_checked_in_code_name_the_key(params: dict, mutate, key, why) -> None:
    bad = copy.deepcopy(params)
    mutate(bad)
    with pytest.raises(SekdError, match=rf"invalid key '{key}'") as err:
        validate_params(bad)
    assert why in str(err.value)
    assert "\n" not in str(err.value)


def test_a_valid_tuning_space_passes(params: dict) -> None:
    cfg = copy.deepcopy(params)
    cfg["tune"]["dfkd"]["space"] += [
        {"name": "rise", "type": "categorical", "choices": ["relative", "absolute"]},
        {"name": "hop", "type": "int", "low": 64, "high": 512},
        {"name": "student.model.conf.hidden", "type": "int", "low": 8, "high": 64},
    ]
    assert validate_params(cfg) is cfg


def test_paper_overlay_is_valid_and_changes_scale(params: dict, tmp_path: Path) -> None:
    with pytest.raises(SekdError, match=r"'corpus.folder.root': /corpora/\S+: folder not found"):
        load_params(REPO / "params.yaml", REPO / "config/paper.yaml")  # no corpus here
    corpora = tmp_path / "corpora.yaml"
    corpora.write_text(yaml.safe_dump(paper_corpora(tmp_path)))
    paper = load_params(REPO / "params.yaml", REPO / "config/paper.yaml", corpora)
    assert paper["teacher"]["model"]["conf"]["hidden"] == 1024
    assert paper["teacher"]["model"]["conf"]["layers"] == 3
    assert paper["corpus"]["source"] == "folder"
    assert paper["tracking"] == params["tracking"]  # untouched sections survive the overlay
    assert paper["evaluate"]["dnsmos"] == params["evaluate"]["dnsmos"]  # and untouched keys


def test_deep_merge_and_hash_are_order_stable() -> None:
    merged = deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    assert merged == {"a": {"b": 1, "c": 3}}
    assert params_hash({"x": 1, "y": 2}) == params_hash({"y": 2, "x": 1})
    assert params_hash({"x": 1}) != params_hash({"x": 2})


def test_sections_are_validated_alone(params: dict) -> None:
    assert validate_sections({"synth": params["synth"]})
    with pytest.raises(SekdError, match="invalid key 'synth.snr_db'"):
        validate_sections({"synth": {**params["synth"], "snr_db": [3, 1]}})
    with pytest.raises(SekdError, match="invalid key 'bogus'"):
        validate_sections({"bogus": {}})
    # a study's rule hands tune without its method list: tune.<method> sections still validate
    study = {key: value for key, value in params["tune"].items() if key != "methods"}
    assert validate_sections({"tune": study})
    study["nokd"] = {"space": [{"name": "student.train.lr", "type": "float"}]}
    with pytest.raises(
        SekdError, match=r"invalid key 'tune.nokd.space.0.low': 'low' is a required"
    ):
        validate_sections({"tune": study})


def test_snakemake_rejects_a_bad_config_before_any_job(tmp_path: Path) -> None:
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump({"synth": {"rt60": [0.8, 0.3]}}))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["snakemake", "-n", "-c1", "--configfile", str(overlay)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    line = 2  # yaml.safe_dump writes `synth:` then `  rt60:`
    expected = f"{overlay}:{line}: invalid key 'synth.rt60': low 0.8 > high 0.3"
    assert expected in proc.stdout + proc.stderr


def _params_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (REPO / "params.yaml").read_text()
    assert old in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    lr: 2.0e-3", "    lr: 2e-3", r"invalid key 'student.train.lr': '2e-3' is not of type"
         r" 'number' \(YAML 1.1 reads 2e-3 as text: .* e.g. 2.0e-3\)"),
        ("  examples: 3 ", "  examples: 3\n  examples: 4 ", r"invalid YAML: duplicate key 'examples'"
         r" \(first given at line \d+\)"),
        ("  examples: 3 ", "  examples: -1 ", r"invalid key 'evaluate.examples': -1 is less than"),
    ],
)  # fmt: skip
def test_config_errors_name_the_file_and_line(tmp_path: Path, old, new, message) -> None:
    """A schema error, a duplicate key and a YAML 1.1 number each name the file and the line."""
    path = _params_with(tmp_path, old, new)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if new.split("\n")[-1]
                .strip() in text)  # fmt: skip
    with pytest.raises(SekdError, match=rf"^{re.escape(str(path))}:{line}: {message}"):
        load_params(path)


def test_no_config_file_runs_code(tmp_path: Path) -> None:
    """A params file marked `__use_yte__` (Snakemake's loader would run its ?expressions as
    Python): sekd validate and the workflow on params.yaml (what `dvc repro` runs) refuse it,
    naming the file, and its code never runs."""
    marker = tmp_path / "ran"
    evil = f'__use_yte__: true\nx: ?__import__("pathlib").Path("{marker}").touch()\n'
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("Snakefile", "workflow", "params.yaml"):
        target = repo / name
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, target, symlinks=True)
        else:
            target.write_text((REPO / name).read_text())
    (repo / "params.yaml").write_text(evil + (REPO / "params.yaml").read_text())
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for cmd in (["sekd", "validate"], ["snakemake", "-n", "-c1"]):
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode != 0, cmd
        assert "params.yaml: '__use_yte__' asks Snakemake to run" in proc.stdout + proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["distill"].update(methods=["toy"]), "'distill.methods': 'toy' has no section"),
        (lambda c: c["distill"].update(methods=["seeds"]), "'seeds' has no section"),
        (lambda c: c["tune"].update(methods=["okd"]), "'tune.methods': 'okd' has no section"),
        (lambda c: c["tune"].update(methods=["train"]), "'train' has no section"),
    ],
)
def test_method_lists_name_sections_no_hand_kept_list(change, message):
    """A method's name is valid because its section exists (and its schema entry validates it)."""
    cfg = load_params(REPO / "params.yaml")
    change(cfg)
    with pytest.raises(SekdError, match=message):
        validate_params(cfg)


def _librispeech_tree(root: Path, counts: dict[str, int]) -> None:
    """``speaker/chapter/speaker-chapter-NNNN.flac``, two chapters per speaker; the files are
    empty: validation only lists them (reading one would fail)."""
    for speaker, count in counts.items():
        for i in range(count):
            chapter = f"{speaker}{i % 2}"
            folder = root / speaker / chapter
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{speaker}-{chapter}-{i:04d}.flac").touch()
        (root / speaker / f"{speaker}0" / f"{speaker}-{speaker}0.trans.txt").write_text("")


def test_paper_overlay_personal_counts_are_checked_against_the_corpus(tmp_path: Path) -> None:
    """An overlay asking 120 + 60 personal utterances per test speaker (config/paper.yaml did, and
    LibriSpeech train-clean-100 has ~113 per speaker): validation stops naming the speaker and
    the numbers; config/paper.yaml itself now asks what every kept speaker has."""
    from sekd.data.corpus import assign_speakers

    root = tmp_path / "train-clean-100"
    speakers = [str(s) for s in (103, 1034, 1040, 1069, 1081, 1088, 1098)]
    _librispeech_tree(root, dict.fromkeys(speakers, 113) | {"1183": 10})  # 1183: < min 40
    split = {"train": 3, "valid": 1, "test": 1, "babble": 1, "seed": 0}
    overlay = tmp_path / "here.yaml"
    personal = {"synth": {"personal": {"adapt": 120, "test": 60}}}
    (tmp_path / "noise").mkdir()
    noise = {"noise": {"folder": {"root": str(tmp_path / "noise")}}}
    here = {"corpus": {"folder": {"root": str(root)}}, "split": split, **personal, **noise}
    overlay.write_text(yaml.safe_dump(here))
    files = [REPO / "params.yaml", REPO / "config/paper.yaml", overlay]
    paper = [REPO / "params.yaml", REPO / "config/paper.yaml", tmp_path / "paper_only.yaml"]
    (tmp_path / "paper_only.yaml").write_text(yaml.safe_dump({**here, "synth": {}}))
    assert load_params(*paper)  # 24 + 16 <= min_utterances: every kept speaker can serve
    (test,) = assign_speakers(speakers, split)["test"]  # as `sekd synth` will deal them
    why = f"test speaker {test} has 113 utterances, needs 180 (adapt 120 + test 60)"
    with pytest.raises(SekdError, match=rf"invalid key 'synth.personal': {re.escape(why)}$"):
        load_params(*files)
    proc = subprocess.run(
        [BIN / "sekd", "validate", *(a for f in files for a in ("--params", str(f)))],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and why in proc.stdout + proc.stderr

    _librispeech_tree(root, {test: 180})  # only the test speaker needs them
    assert load_params(*files)["corpus"]["folder"]["root"] == str(root)

    split["test"] = 3  # 3 + 1 + 3 + 1 > the 7 speakers with 40 or more files
    overlay.write_text(yaml.safe_dump({**here, "split": split}))
    with pytest.raises(SekdError, match=r"invalid key 'split': needs 8 speakers but .* has 7 with"):
        load_params(*files)


def test_a_tuned_value_needs_its_study(params: dict) -> None:
    """`tuned` takes the study's value, so it needs a study of that method that searches the key;
    a number works anywhere, and a method that is not distilled is never read."""
    assert params["distill"]["output_kd"]["weight"] == "tuned"
    untuned = deep_merge(params, {"tune": {"methods": ["dfkd", "latent_mixup"]}})
    with pytest.raises(SekdError, match=r"'distill.output_kd.weight': is 'tuned' but output_kd is"):
        validate_params(untuned)
    given = deep_merge(untuned, {"distill": {"output_kd": {"weight": 3.0}}})
    assert validate_params(given)["distill"]["output_kd"]["weight"] == 3.0
    not_distilled = deep_merge(untuned, {"distill": {"methods": ["dfkd", "latent_mixup"]}})
    assert validate_params(not_distilled)
    unsearched = deep_merge(params, {"distill": {"dfkd": {"low_weight": "tuned"}}})
    with pytest.raises(SekdError, match=r"'distill.dfkd.low_weight': .*space does not search it"):
        validate_params(unsearched)
    bad = deep_merge(params, {"distill": {"output_kd": {"weight": -1}}})
    with pytest.raises(SekdError, match=r"-1 is less than the minimum of 0 \(or 'tuned'"):
        validate_params(bad)


def test_the_final_student_takes_only_the_keys_marked_tuned(params: dict, tmp_path: Path) -> None:
    from sekd.tune import apply_tuned

    best = tmp_path / "best.yaml"
    doc = {"values": {"weight": 7.5, "beta": 0.25}, "study": "dfkd-x", "trials": {"COMPLETE": 4}}
    best.write_text(yaml.safe_dump(doc))
    cfg = deep_merge(params, {"distill": {"dfkd": {"weight": 2.0}}})
    applied, record = apply_tuned(cfg, "dfkd", best)
    assert applied["distill"]["dfkd"]["weight"] == 2.0  # the number given wins
    assert applied["distill"]["dfkd"]["beta"] == 0.25  # the key marked tuned takes the study's
    assert record["values"] == {"beta": 0.25}
    with pytest.raises(SekdError, match="distill.output_kd.weight is 'tuned': give --tuned"):
        apply_tuned(params, "output_kd", None)
    given = deep_merge(params, {"distill": {"output_kd": {"weight": 3.0}}})
    assert apply_tuned(given, "output_kd", None) == (given, None)


def test_a_study_does_not_depend_on_the_values_of_the_keys_it_searches(params: dict) -> None:
    from sekd.tune import config_key

    given = deep_merge(params, {"distill": {"output_kd": {"weight": 3.0}}})
    assert config_key(given, "output_kd") == config_key(params, "output_kd")
    other = deep_merge(params, {"distill": {"output_kd": {"distance": "mrstft"}}})
    assert config_key(other, "output_kd") != config_key(params, "output_kd")


def test_overlays_may_come_without_params_yaml_and_in_any_number(
    tmp_path: Path, monkeypatch
) -> None:
    """`sekd validate --params A --params B` merges both over ./params.yaml (a first file that is
    not a whole config is an overlay); the last wins."""
    second = tmp_path / "second.yaml"
    hidden = {"teacher": {"model": {"conf": {"hidden": 640}}}}
    second.write_text(yaml.safe_dump({**hidden, **paper_corpora(tmp_path)}))
    cmd = [str(BIN / "sekd"), "validate", "--params", "config/paper.yaml", "--params", str(second)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "config OK" in proc.stdout, proc.stderr
    monkeypatch.chdir(REPO)
    merged = load_params("config/paper.yaml", second)
    assert merged["teacher"]["model"]["conf"]["hidden"] == 640  # the second file's
    assert merged["corpus"]["source"] == "folder"  # the first's
    assert merged["tracking"] == load_params()["tracking"]  # params.yaml's


def test_sekd_overlay_keeps_params_yaml_comments(tmp_path: Path) -> None:
    target = tmp_path / "params.yaml"
    target.write_text((REPO / "params.yaml").read_text())
    corpora = tmp_path / "corpora.yaml"
    corpora.write_text(yaml.safe_dump(paper_corpora(tmp_path)))
    overlays = [str(REPO / "config/paper.yaml"), str(corpora)]
    cmd = [str(BIN / "sekd"), "overlay", "--target", str(target), *overlays]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = target.read_text()
    assert yaml.safe_load(text) == load_params(REPO / "params.yaml", *overlays)
    comments = [line for line in (REPO / "params.yaml").read_text().splitlines() if "#" in line]
    kept = [line.split("#", 1)[1] for line in comments if line.split("#", 1)[1] in text]
    assert len(kept) == len(comments)  # every comment is still there
    assert "extensions: [flac, wav]" in text  # a flow list stays a flow list
