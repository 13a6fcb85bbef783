"""Load, overlay, validate and hash the one config tree (``params.yaml``).

The JSON schema (``schemas/params.schema.yaml``, also at ``workflow/schemas/``) holds every key,
type, range and choice list; code reads the validated config and checks none of it again. What JSON
Schema cannot express is checked here, and only here: ``[low, high]`` pairs marked ``x-range: true``
must be ordered, a number marked ``x-at-most: <key>`` must not exceed its sibling ``<key>``, the
speaker split and every test speaker's personal sets must fit the corpus, and every bound and
choice of a ``tune.<method>.space`` must be a value the key it names accepts (a trial's config is
the validated one with those values in).

A numeric key of a KD method (``distill.<method>.<key>``) may be the word ``tuned``: its value is
then the best of that method's Optuna study (``best.yaml``). Any number given there is used as it
is, tuned study or not, so ``dvc exp run -S distill.output_kd.weight=3.0`` trains at 3.0.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from sekd.errors import SekdError
from sekd.io import read_yaml

DEFAULT_PARAMS = "params.yaml"


# The no-KD baseline's study (``tune.nokd``: its own knobs, e.g. the learning rate). It runs
# whenever a KD method is tuned, with the same budget: every row of a comparison gets the same
# tuning effort (a tuned KD method against an untuned baseline would credit KD with the tuning).
BASELINE = "nokd"


def tuned_studies(tune_cfg: dict) -> list[str]:
    """The studies a config runs: each method of ``tune.methods``, plus the no-KD baseline's
    whenever that list is not empty."""
    methods = list(tune_cfg["methods"])
    return [*methods, BASELINE] if methods else []


# ``distill.<method>.<key>: tuned``: the value comes from the method's study (``best.yaml``).
TUNED = "tuned"


def schema() -> dict:
    """The params schema, where every numeric key of a KD method also accepts ``tuned``."""
    text = resources.files("sekd").joinpath("schemas/params.schema.yaml").read_text()
    sch = yaml.safe_load(text)
    for method in sch["properties"]["distill"]["properties"].values():
        for key, sub in method.get("properties", {}).items():
            if _is_numeric(_resolve(sub, sch)):
                marks = {k: v for k, v in sub.items() if k.startswith("x-")}  # sekd's own checks
                method["properties"][key] = {"anyOf": [sub, {"const": TUNED}], **marks}
    return sch


def _is_numeric(sub: dict) -> bool:
    kinds = sub.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    return bool({"number", "integer"} & set(kinds)) and "null" not in kinds


def tuned_keys(cfg: dict, method: str) -> list[str]:
    """The keys of ``distill.<method>`` whose value is ``tuned`` (taken from its study)."""
    section = cfg.get("distill", {}).get(method)
    return [k for k, v in section.items() if v == TUNED] if isinstance(section, dict) else []


def searched_as_tuned(cfg: dict, method: str) -> dict:
    """``distill.<method>`` with every key its study searches set to ``tuned``: what the study
    depends on (each trial sets those keys itself, so a value given for one never restarts it)."""
    section = dict(cfg.get("distill", {}).get(method, {}))
    study = cfg.get("tune", {}).get(method)
    for entry in study["space"] if isinstance(study, dict) else []:
        if "." not in entry["name"] and entry["name"] in section:
            section[entry["name"]] = TUNED
    return section


def _check_tuned(cfg: dict) -> list[tuple[str, str]]:
    """A distilled method's ``tuned`` value needs the method in ``tune.methods`` and the key in its
    space (otherwise no study gives it a value); a method not distilled is never read."""
    tune = cfg["tune"]
    errors = []
    for method in cfg["distill"]["methods"]:
        study = tune.get(method)
        space = {e["name"] for e in study["space"]} if isinstance(study, dict) else set()
        for key in tuned_keys(cfg, method):
            where = f"distill.{method}.{key}"
            if method not in tune["methods"]:
                errors.append(
                    (where, f"is 'tuned' but {method} is not in tune.methods: give it a number")
                )
            elif key not in space:
                errors.append((where, f"is 'tuned' but tune.{method}.space does not search it"))
    return errors


def deep_merge(base: dict, overlay: dict) -> dict:
    """Return ``base`` with ``overlay`` merged in: mappings merge key by key, other values replace.

    A model given with both ``name`` and ``conf`` replaces the earlier one whole: another model's
    conf keys mean nothing to it (a Conv-TasNet over params.yaml's GRU), and an overlay that names
    a model says all of its conf. An overlay with ``conf`` keys alone changes only those keys.
    """
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        names_model = isinstance(value, dict) and {"name", "conf"} <= set(value)
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not names_model:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_params(*paths: str | Path) -> dict:
    """Read ``params.yaml`` (or the given files, later ones overlaying earlier ones) and validate.

    A first file that is not a whole config (it lacks a top-level section, as an overlay such as
    ``config/paper.yaml`` does) is an overlay of ``./params.yaml``, which is then read first: so
    ``--params config/paper.yaml --params config/study.yaml`` means what it says."""
    paths = paths or (DEFAULT_PARAMS,)
    first = read_config_file(paths[0])
    if not set(schema()["required"]) <= set(first) and Path(DEFAULT_PARAMS).is_file():
        paths = (DEFAULT_PARAMS, *paths)
    cfg: dict = {}
    for path in paths:
        cfg = deep_merge(cfg, read_config_file(path))
    return validate_params(cfg, source=", ".join(map(str, paths)), files=paths)


# Snakemake's own config loader runs the ``?expr`` values of a file that sets this key as Python
# (YTE templating). sekd reads config files as plain YAML, and refuses the key so that a file meant
# for that loader is never taken for data.
YTE_KEY = "__use_yte__"


def read_config_file(path: str | Path) -> dict:
    """A params file or overlay, as plain safe YAML (duplicate keys refused, file and line named)."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise SekdError(f"{path}: top level must be a mapping")
    if YTE_KEY in data:
        raise SekdError(
            f"{path}: '{YTE_KEY}' asks Snakemake to run this file's ?expressions as Python; "
            "sekd config files are plain YAML (README: Configuration)"
        )
    return data


def overlay_file(target: str | Path, overlays: list[str | Path]) -> dict:
    """Merge ``overlays`` into the file ``target`` in place (as :func:`deep_merge`), keeping its
    comments and key order (a round-trip YAML load), after validating the result; return it."""
    from ruamel.yaml import YAML

    from sekd.io import write_text

    merged = load_params(target, *overlays)
    rt = YAML()  # round-trip: comments stay with their keys
    rt.width = 4096
    rt.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    doc = rt.load(Path(target).read_text())
    for path in overlays:
        _merge_in_place(doc, read_config_file(path))
    from io import StringIO

    text = StringIO()
    rt.dump(doc, text)
    write_text(target, text.getvalue())
    return merged


def _merge_in_place(node: dict, overlay: dict) -> None:
    """:func:`deep_merge` on a round-trip mapping: a model given with name and conf replaces the
    earlier one, other mappings merge key by key, other values replace."""
    for key, value in overlay.items():
        names_model = isinstance(value, dict) and {"name", "conf"} <= set(value)
        old = node.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and not names_model:
            _merge_in_place(old, value)
        elif isinstance(value, list | dict) and getattr(old, "fa", None) and old.fa.flow_style():
            node[key] = _flow(copy.deepcopy(value))  # [a, b] stays [a, b]
        else:
            node[key] = copy.deepcopy(value)


def _flow(value: list | dict) -> Any:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    out = CommentedSeq(value) if isinstance(value, list) else CommentedMap(value)
    out.fa.set_flow_style()
    return out


def _key_of(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = set(error.instance) - set(error.schema.get("properties", {}))
        parts.append("|".join(sorted(map(str, extra))))
    if error.validator == "required":
        parts.append(error.message.split("'")[1])
    return ".".join(parts) or "<root>"


def _resolve(sub: dict, root: dict) -> dict:
    while "$ref" in sub:
        sub = root["$defs"][sub["$ref"].rsplit("/", 1)[-1]]
    return sub


def _check_ranges(
    cfg: Any, sch: dict, root: dict, path: str, errors: list[tuple[str, str]]
) -> None:
    sch = _resolve(sch, root)
    if sch.get("x-range") and isinstance(cfg, list) and len(cfg) == 2 and cfg[0] > cfg[1]:
        errors.append((path, f"low {cfg[0]} > high {cfg[1]}"))
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            sub = sch.get("properties", {}).get(key)
            if sub is None and isinstance(sch.get("additionalProperties"), dict):
                sub = sch["additionalProperties"]
            if sub is None:
                continue
            where = f"{path}.{key}" if path else key
            other = sub.get("x-at-most")
            if other in cfg and _numbers(value, cfg[other]) and value > cfg[other]:
                errors.append((where, f"{value} is greater than {other} ({cfg[other]})"))
            if "x-names-siblings" in sub:
                errors += _unknown_siblings(value, cfg, sub["x-names-siblings"], where)
            _check_ranges(value, sub, root, where, errors)


def _numbers(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _unknown_siblings(names: list, cfg: dict, marker: dict, where: str) -> list[tuple[str, str]]:
    """A list marked ``x-names-siblings`` (``distill.methods``, ``tune.methods``) names mapping
    sections next to it (other than ``except``), each of which the schema validates. So a method's
    section and schema entry are what make its name valid; no list of names is kept."""
    sections = sorted(
        key
        for key, value in cfg.items()
        if isinstance(value, dict) and key not in marker.get("except", [])
    )
    parent = where.rsplit(".", 1)[0]
    return [
        (where, f"{name!r} has no section '{parent}.{name}' (sections: {', '.join(sections)})")
        for name in names
        if name not in sections
    ]


def _check_space(cfg: dict, root: dict, errors: list[tuple[str, str]]) -> None:
    """Each ``tune.<method>.space`` entry names a config key (a plain name is a key of
    ``distill.<method>``, a dotted one a path from the root) that accepts its bounds or choices."""
    validators: dict[str, jsonschema.Validator] = {}
    for method, section in cfg["tune"].items():
        if not isinstance(section, dict) or "space" not in section:
            continue
        for index, entry in enumerate(section["space"]):
            where, name = f"tune.{method}.space.{index}", entry["name"]
            top, *keys = name.split(".") if "." in name else ["distill", method, name]
            categorical = entry["type"] == "categorical"
            for value in entry["choices"] if categorical else (entry["low"], entry["high"]):
                trial = copy.deepcopy(cfg.get(top))
                node = trial
                for key in keys[:-1]:
                    node = node.get(key) if isinstance(node, dict) else None
                if not keys or not isinstance(node, dict) or keys[-1] not in node:
                    errors.append((where, f"{name!r} names no config key"))
                    break
                node[keys[-1]] = value
                sub = root["properties"][top]
                if top not in validators:
                    validators[top] = jsonschema.Draft202012Validator(
                        {**sub, "$defs": root["$defs"]}
                    )
                error = next(iter(validators[top].iter_errors(trial)), None)
                found = [(f"{top}.{_key_of(error)}", _message(error))] if error is not None else []
                _check_ranges(trial, sub, root, top, found)
                if found:
                    errors.append((where, f"{name} = {value!r}: '{found[0][0]}': {found[0][1]}"))
                    break


def _check_corpus_fits(cfg: dict) -> list[tuple[str, str]]:
    """The split needs no more speakers than the corpus has, and every test speaker has the
    ``synth.personal`` adapt + test utterances (drawn without repeats from that speaker's own).

    The demo corpus is checked from its config; a folder corpus by listing its files, named and
    filtered as ``sekd corpus`` will (no audio is read). A corpus or noise folder that does not
    exist stops here, before anything is planned.
    """
    missing = _missing_folders(cfg)
    if missing:
        return missing
    corpus, split, personal = cfg["corpus"], cfg["split"], cfg["synth"]["personal"]
    needed = sum(split[k] for k in ("train", "valid", "test", "babble"))
    need = personal["adapt"] + personal["test"]
    why = f"needs {need} (adapt {personal['adapt']} + test {personal['test']})"
    if corpus["source"] == "demo":
        speakers, per_speaker = corpus["demo"]["speakers"], corpus["demo"]["utterances_per_speaker"]
        if needed > speakers:
            return [("split", f"needs {needed} speakers but corpus.demo.speakers is {speakers}")]
        if per_speaker < need:
            return [
                (
                    "synth.personal",
                    f"every test speaker has {per_speaker} utterances "
                    f"(corpus.demo.utterances_per_speaker), {why}",
                )
            ]
        return []
    root = corpus["folder"]["root"]
    if corpus["source"] != "folder":
        return []
    from sekd.data.corpus import assign_speakers, folder_utterance_counts

    try:
        counts = folder_utterance_counts(corpus)
    except SekdError as err:
        key, _, message = str(err).partition(": ")
        return [(key, message)] if key.startswith("corpus.") else [("corpus.folder.root", str(err))]
    if needed > len(counts):
        return [
            (
                "split",
                f"needs {needed} speakers but {root} has {len(counts)} with "
                f"corpus.folder.min_utterances ({corpus['folder']['min_utterances']}) or more files",
            )
        ]
    short = [s for s in assign_speakers(list(counts), split)["test"] if counts[s] < need]
    if not short:
        return []
    more = f"; {len(short)} of {split['test']} test speakers have too few" if len(short) > 1 else ""
    cap = corpus["folder"]["max_utterances"]
    capped = f" (corpus.folder.max_utterances {cap})" if cap is not None and cap < need else ""
    return [
        (
            "synth.personal",
            f"test speaker {short[0]} has {counts[short[0]]} utterances{capped}, {why}{more}",
        )
    ]


def _missing_folders(cfg: dict) -> list[tuple[str, str]]:
    """``corpus.folder.root`` / ``noise.folder.root`` of a folder source that is not a folder."""
    for section in ("corpus", "noise"):
        if cfg[section]["source"] != "folder":
            continue
        root = cfg[section]["folder"]["root"]
        if not root:
            return [(f"{section}.folder.root", f"{section}.source is folder but no root is given")]
        if not Path(root).expanduser().is_dir():
            return [(f"{section}.folder.root", f"{root}: folder not found")]
    return []


def _yaml11_number(value: Any) -> bool:
    """A string Python reads as a number: PyYAML (YAML 1.1) leaves ``2e-3`` and ``1E5`` as text."""
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _yaml11_fix(text: str) -> str:
    mantissa, _, exponent = text.lower().partition("e")
    if exponent and "." not in mantissa:
        return f"{mantissa}.0e{exponent}"
    return text


def _message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message, or for a value a ``not`` forbids, the schema's reason."""
    reason = error.schema.get("description") if isinstance(error.schema, dict) else None
    if error.validator == "anyOf" and error.context:  # a number or 'tuned': say the number's rule
        return f"{_message(error.context[0])} (or '{TUNED}': the value of its study)"
    if error.validator == "type" and _yaml11_number(error.instance):
        return (
            f"{error.message} (YAML 1.1 reads {error.instance} as text: a float needs a dot in "
            f"its mantissa, e.g. {_yaml11_fix(error.instance)})"
        )
    if error.validator == "not" and reason:
        return f"{error.instance!r} is not allowed: {reason}"
    return error.message


def validate_params(
    cfg: dict, source: str = DEFAULT_PARAMS, files: Sequence[str | Path] = ()
) -> dict:
    """Validate ``cfg`` in place of a run; raise a one-line :class:`SekdError` naming the key and,
    when ``files`` (those merged into ``cfg``, in order) give it, the file and line that set it."""
    problem = _first_problem(cfg)
    if problem is None:
        return cfg
    key, message = problem
    where = _key_line(key, files) or source
    raise SekdError(f"{where}: invalid key '{key}': {message}")


def _key_line(key: str, files: Sequence[str | Path]) -> str | None:
    """``file:line`` of the last of ``files`` that sets ``key`` (dotted; list items by index), or
    of the nearest enclosing key it sets."""
    found = None
    for path in files:
        try:
            node = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
        except (OSError, yaml.YAMLError):
            continue
        line = None
        for part in key.split("."):
            if isinstance(node, yaml.MappingNode):
                match = [(k, v) for k, v in node.value if k.value == part]
                if not match:
                    break
                line, node = match[-1][0].start_mark.line, match[-1][1]
            elif (
                isinstance(node, yaml.SequenceNode)
                and part.isdigit()
                and int(part) < len(node.value)
            ):
                node = node.value[int(part)]
                line = node.start_mark.line
            else:
                break
        if line is not None:
            found = f"{path}:{line + 1}"
    return found


def _first_problem(cfg: dict) -> tuple[str, str] | None:
    """The first invalid key of ``cfg`` and why: the schema's errors, then what code checks."""
    sch = schema()
    validator = jsonschema.Draft202012Validator(sch)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        return _key_of(errors[0]), _message(errors[0])
    problems: list[tuple[str, str]] = []
    _check_ranges(cfg, sch, sch, "", problems)
    _check_space(cfg, sch, problems)
    if not problems:
        problems += _check_tuned(cfg)
    if not problems:
        problems += _check_corpus_fits(cfg)
    return problems[0] if problems else None


def validate_sections(sections: dict, source: str = "--config") -> dict:
    """Validate a partial config, as a workflow rule passes it: some top-level sections, each whole
    or (like ``{"distill": {"dfkd": {...}}}``) with only some of its keys, each validated."""
    root = schema()
    for name, value in sections.items():
        sub = root["properties"].get(name)
        if sub is None:
            raise SekdError(f"{source}: invalid key '{name}': unknown section")
        whole = not isinstance(value, dict) or set(sub.get("required", [])) <= set(value)
        parts = {name: (value, sub)} if whole else {}
        for key, item in ({} if whole else value).items():
            extra = sub.get("additionalProperties")  # e.g. tune.<method> sections
            item_schema = sub.get("properties", {}).get(
                key, extra if isinstance(extra, dict) else None
            )
            if item_schema is None:
                raise SekdError(f"{source}: invalid key '{name}.{key}': unknown key")
            parts[f"{name}.{key}"] = (item, item_schema)
        for path, (item, item_schema) in parts.items():
            _validate_part(item, item_schema, root, path, source)
    return sections


def _validate_part(value: Any, sub: dict, root: dict, path: str, source: str) -> None:
    validator = jsonschema.Draft202012Validator({**sub, "$defs": root["$defs"]})
    error = next(iter(validator.iter_errors(value)), None)
    if error is not None:
        key = _key_of(error)
        full = path if key == "<root>" else f"{path}.{key}"
        raise SekdError(f"{source}: invalid key '{full}': {_message(error)}")
    problems: list[tuple[str, str]] = []
    _check_ranges(value, sub, root, path, problems)
    if problems:
        raise SekdError(f"{source}: invalid key '{problems[0][0]}': {problems[0][1]}")


def params_hash(obj: Any) -> str:
    """Short content hash of a config (sub)tree, stable across key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
