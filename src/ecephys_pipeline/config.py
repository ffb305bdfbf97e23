"""Loading and checking the two inputs a person writes: the workflow config and the selection spec.

Both are YAML, both have a JSON Schema shipped inside this package (``schemas/config.schema.yaml``,
``schemas/selection.schema.yaml``; ``workflow/schemas`` in a checkout links here, and the
Snakefile validates against the same files), and both fail the same way: every problem at once,
one line each, naming the key, the problem and, for a misspelt key, the nearest valid one
("did you mean 'cache_dir'?"), never a raw jsonschema message or a traceback. A YAML file that
gives a key twice is refused (YAML would silently keep the last one).

Public API: :func:`read_yaml`, :func:`load_schema`, :func:`schema_path`, :func:`fill_defaults`,
:func:`load_spec` (-> :class:`SpecError`), :func:`check_config` and
:func:`load_workflow_config` (-> :class:`ConfigError`). Resolving a spec against the metadata
tables is :mod:`ecephys_pipeline.selection`'s.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

SCHEMAS = ("config", "selection")


# --------------------------------------------------------------------------------------- errors


class _Problems(ValueError):
    """One message per problem; the text is one line when there is one problem."""

    what = "input"

    def __init__(self, problems: Sequence[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" ({source})" if source else ""
        n = len(self.problems)
        if n == 1:
            text = f"{self.what}{where}: {self.problems[0]}"
        else:
            head = f"{self.what}{where} has {n} problems:"
            text = "\n".join([head] + [f"  - {p}" for p in self.problems])
        super().__init__(text)


class SpecError(_Problems):
    """The selection spec is invalid. ``problems`` holds one message per problem."""

    what = "selection spec"


class ConfigError(_Problems):
    """The workflow config is invalid. ``problems`` holds one message per problem."""

    what = "config"


# ----------------------------------------------------------------------------------------- YAML


class DuplicateKeyError(ValueError):
    """A YAML mapping gives the same key twice."""

    def __init__(self, key: Any, line: int, first_line: int):
        self.key, self.line, self.first_line = key, line, first_line
        super().__init__(
            f"line {line}: key '{key}' appears twice (first on line {first_line}); keep one"
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with a repeated key."""


def _unique_map(loader: _UniqueKeyLoader, node: yaml.MappingNode):
    first: dict[Any, int] = {}
    for key_node, _value in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            line = first.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key: the normal constructor reports it
            continue
        if line != key_node.start_mark.line + 1:
            raise DuplicateKeyError(key, key_node.start_mark.line + 1, line)
    yield from loader.construct_yaml_map(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_map)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file (safe types only). Raises FileNotFoundError, yaml.YAMLError, or
    :class:`DuplicateKeyError` when a mapping repeats a key."""
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A parser error in one line: where, and what."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"not valid YAML: {where}{problem}"


def _read(path: Path, error: type[_Problems], source: str | None = None) -> Any:
    """A config or spec file, with every way of failing turned into ``error``."""
    source = source or str(path)
    try:
        return read_yaml(path)
    except FileNotFoundError:
        raise error([f"file {path} does not exist"], source) from None
    except IsADirectoryError:
        raise error([f"{path} is a directory, not a YAML file"], source) from None
    except DuplicateKeyError as exc:
        raise error([str(exc)], source) from None
    except yaml.YAMLError as exc:
        raise error([_yaml_problem(exc)], source) from None


# -------------------------------------------------------------------------------------- schemas


def schema_path(name: str) -> Path:
    """Path of the package's ``<name>.schema.yaml`` (``config`` or ``selection``)."""
    if name not in SCHEMAS:
        raise ValueError(f"no schema {name!r}; the schemas are {', '.join(SCHEMAS)}")
    # the package is installed as files (never zipped), so the resource is a filesystem path
    return Path(str(resources.files(__package__).joinpath("schemas", f"{name}.schema.yaml")))


@functools.cache
def _schema(name: str) -> dict:
    return yaml.safe_load(schema_path(name).read_text(encoding="utf-8"))


def load_schema(name: str = "selection") -> dict:
    """The JSON Schema (2020-12) of the config or the selection spec, as a fresh dict."""
    return copy.deepcopy(_schema(name))


def resolve_ref(schema: dict, root: dict) -> dict:
    """Merge a ``$ref``'d definition with the sibling keywords of the referring schema."""
    ref = schema.get("$ref")
    if not ref:
        return schema
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}


def fill_defaults(value: Any, schema: dict, root: dict) -> Any:
    """``value`` with every missing key that has a schema default filled in, recursively."""
    schema = resolve_ref(schema, root)
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    out = dict(value)
    for key, sub in schema["properties"].items():
        sub_r = resolve_ref(sub, root)
        if key not in out and "default" in sub_r:
            out[key] = copy.deepcopy(sub_r["default"])
        if key in out:
            out[key] = fill_defaults(out[key], sub_r, root)
    return out


def _plain(value: Any) -> Any:
    """YAML dates -> ISO strings, tuples -> lists (so the value is JSON)."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, str) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------ schema problems


def _non_finite(data: Any, path: tuple = ()) -> list[str]:
    """NaN and infinity are not values a filter or a setting can mean (YAML's .nan, .inf)."""
    if isinstance(data, float) and not math.isfinite(data):
        return [f"'{_loc(path)}' is {data}, not a number; use null to switch it off"]
    if isinstance(data, Mapping):
        return [p for k, v in data.items() for p in _non_finite(v, (*path, k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _non_finite(v, (*path, i))]
    return []


def _loc(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true/false",
    "null": "null",
}


def _schema_problems(data: Any, schema: dict) -> list[tuple[tuple, str]]:
    """(key path, one-line message) for every way ``data`` breaks ``schema``."""
    from jsonschema import Draft202012Validator, validators

    # JSON Schema counts 1.0 as an integer; the code behind an integer key (a count, a limit)
    # does not, so a float is refused here with the key's name instead of failing later.
    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    strict = validators.extend(Draft202012Validator, type_checker=checker)
    validator = strict(schema)
    out: list[tuple[tuple, str]] = []
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(e.absolute_path), e.message))
    for err in errors:
        path = tuple(err.absolute_path)
        loc = _loc(path)
        sub = resolve_ref(err.schema, schema) if isinstance(err.schema, dict) else {}
        desc = sub.get("description", "")
        if err.validator == "additionalProperties":
            allowed = sorted(sub.get("properties", {}))
            extra = sorted(set(err.instance) - set(allowed))
            where = "at the top level" if not path else f"under '{loc}'"
            for key in extra:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                out.append(
                    (
                        (*path, key),
                        f"unknown key '{key}' {where}{hint} (valid keys: {', '.join(allowed)})",
                    )
                )
        elif err.validator == "type":
            types = (
                err.validator_value
                if isinstance(err.validator_value, list)
                else [err.validator_value]
            )
            words = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
            allowed = ""
            if "enum" in sub:
                allowed = f"; allowed values: {', '.join(map(str, sub['enum']))}"
            what = f" ({' '.join(desc.split())})" if desc else ""
            out.append(
                (
                    path,
                    f"'{loc}' must be {words}, got {_type_name(err.instance)} "
                    f"{json.dumps(err.instance, default=str)}{allowed}{what}",
                )
            )
        elif err.validator == "enum":
            close = difflib.get_close_matches(str(err.instance), map(str, err.validator_value), 1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            out.append(
                (
                    path,
                    f"'{loc}' is {json.dumps(err.instance)}, not an allowed value{hint} "
                    f"(allowed: {', '.join(map(str, err.validator_value))})",
                )
            )
        elif err.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            op = {
                "minimum": ">=",
                "maximum": "<=",
                "exclusiveMinimum": ">",
                "exclusiveMaximum": "<",
            }[err.validator]
            out.append((path, f"'{loc}' must be {op} {err.validator_value}, got {err.instance}"))
        elif err.validator == "minItems":
            hint = "use null, or leave the key out, for 'any'"
            out.append((path, f"'{loc}' must not be an empty list ({hint})"))
        elif err.validator == "uniqueItems":
            out.append((path, f"'{loc}' lists the same value more than once: {err.instance}"))
        elif err.validator == "minLength":
            out.append((path, f"'{loc}' must not be an empty string"))
        elif err.validator == "pattern":
            rule = " ".join(sub.get("x-pattern-says", f"must match {err.validator_value}").split())
            out.append((path, f"'{loc}' is {json.dumps(err.instance)}: it {rule}"))
        elif err.validator == "required":
            missing = [k for k in err.validator_value if k not in err.instance]
            props = sub.get("properties", {})
            for key in missing:
                key_desc = " ".join(props.get(key, {}).get("description", "").split())
                what = f" ({key_desc})" if key_desc else ""
                where = "at the top level" if not path else f"under '{loc}'"
                out.append(((*path, key), f"key '{key}' is required {where}{what}"))
        else:  # pragma: no cover - every keyword the schemas use is handled above
            out.append((path, f"'{loc}': {err.message.splitlines()[0]}"))
    return out


def schema_problems(data: Any, schema: dict) -> list[str]:
    """One line per way ``data`` breaks ``schema`` (empty: valid)."""
    return _non_finite(data) + [message for _path, message in _schema_problems(data, schema)]


# ----------------------------------------------------------------------------- selection spec


def timestamp_utc(value: Any):
    """A date or timestamp (ISO 8601 string) as a UTC ``pandas.Timestamp`` (naive = UTC)."""
    import pandas as pd

    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _spec_semantic_problems(spec: dict) -> list[str]:
    """Checks the schema cannot express (they need no metadata tables)."""
    problems = []
    for key in ("age_in_days", "unit_count", "channel_count", "probe_count"):
        r = spec.get(key)
        if not isinstance(r, dict):
            continue
        lo = [(k, r[k]) for k in ("min", "gt") if r.get(k) is not None]
        hi = [(k, r[k]) for k in ("max", "lt") if r.get(k) is not None]
        if not lo and not hi:
            problems.append(f"'{key}' gives no bound; set min/max/gt/lt, or use null for 'any'")
        for lk, lv in lo:
            for hk, hv in hi:
                if lv > hv or (lv == hv and (lk == "gt" or hk == "lt")):
                    problems.append(f"'{key}' can never match: {lk} {lv} and {hk} {hv}")
    pub = spec.get("published_at")
    bounds = {"": pub} if isinstance(pub, str) else (pub or {})
    parsed = {}
    for k, v in bounds.items():
        if v is None:
            continue
        try:
            parsed[k] = timestamp_utc(v)
        except (ValueError, TypeError):
            name = f"published_at.{k}" if k else "published_at"
            problems.append(
                f"'{name}' is {v!r}, not an ISO 8601 date or timestamp "
                "(e.g. 2019-10-03 or 2019-10-03T00:00:00Z)"
            )
    if isinstance(pub, dict) and not any(v is not None for v in pub.values()):
        problems.append("'published_at' gives no bound; set min/max, or use null for 'any'")
    if "min" in parsed and "max" in parsed and parsed["min"] > parsed["max"]:
        problems.append(f"'published_at' can never match: min {pub['min']} > max {pub['max']}")
    for key in ("sex", "genotype"):
        f = spec.get(key)
        if isinstance(f, dict):
            if all(f.get(k) is None for k in ("equals", "contains", "matches")):
                problems.append(
                    f"'{key}' gives no condition; set equals/contains/matches, or use null"
                )
            if f.get("matches") is not None:
                try:
                    re.compile(f["matches"])
                except re.error as exc:
                    problems.append(f"'{key}.matches' is not a valid regular expression: {exc}")
    ids = spec.get("session_ids") or {}
    both = sorted(set(ids.get("include") or []) & set(ids.get("exclude") or []))
    if both:
        problems.append(f"session ids {both} are both included and excluded in 'session_ids'")
    return problems


#: Top-level spec keys that do not narrow the set of sessions.
NOT_NARROWING = frozenset({"all", "fetch_lfp", "unit_filters", "order_by"})


def _whole_dataset_problems(data: Mapping[str, Any]) -> list[str]:
    """A spec file must say which sessions it wants: the whole dataset only with ``all: true``."""
    narrowing = sorted(k for k, v in data.items() if k not in NOT_NARROWING and v is not None)
    if data.get("all") and narrowing:
        return [
            f"'all: true' selects every session, but the spec also narrows it with "
            f"{', '.join(narrowing)}; remove one or the other"
        ]
    if not data.get("all") and not narrowing:
        return [
            "the spec names no filter, session id or limit, so it would select the whole "
            "dataset (58 sessions, ~147 GB of session files, ~855 GB with LFP); write "
            "'all: true' to mean that, or add a filter (e.g. 'limit: 2')"
        ]
    return []


def load_spec(spec: str | Path | Mapping[str, Any] | None, *, source: str | None = None) -> dict:
    """Read (a path to YAML, or a dict), validate, and fill in defaults from the schema.

    A spec read from a file must narrow the selection or say ``all: true`` (an empty file does
    not silently mean 855 GB); a mapping passed in code is taken as it is. Raises
    :class:`SpecError` listing every problem at once.
    """
    from_file = isinstance(spec, str | Path)
    if spec is None:
        spec = {}
    if isinstance(spec, str | Path):
        source = source or str(spec)
        data = _read(Path(spec), SpecError, source)
        if data is None:
            data = {}
    else:
        data = spec
    if not isinstance(data, Mapping):
        raise SpecError(
            [f"the spec must be a mapping of keys to values, got {_type_name(data)}"], source
        )
    data = _plain(data)
    schema = _schema("selection")
    problems = schema_problems(data, schema)
    if from_file and not problems:
        problems = _whole_dataset_problems(data)
    if problems:
        raise SpecError(problems, source)
    filled = fill_defaults(data, schema, schema)
    problems = _spec_semantic_problems(filled)
    if problems:
        raise SpecError(problems, source)
    return filled


# ------------------------------------------------------------------------------ workflow config


def merge(base: Mapping, override: Mapping) -> dict:
    """Snakemake's config merge: nested mappings merged key by key, the override winning."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _holds(data: Any, path: tuple) -> bool:
    for part in path:
        if not isinstance(data, Mapping) or part not in data:
            return False
        data = data[part]
    return True


def _shown(path: str | Path) -> str:
    """A path as a person would type it: relative to the working directory when under it."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd())) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def check_config(
    config: Mapping[str, Any],
    *,
    files: Sequence[str | Path] = (),
    command_line: Mapping[str, Any] | None = None,
) -> dict:
    """Validate a (merged) workflow config; return a copy with the schema's defaults filled in.

    ``files``: the YAML files it was merged from, in merge order (a later file overrides an
    earlier one): each is checked for repeated keys, and the error names the file whose value
    is at fault (the last one holding the offending key). ``command_line``: the values given
    with Snakemake's ``--config``, merged last. Raises :class:`ConfigError` listing every problem
    at once.
    """
    loaded = {_shown(f): _read(Path(f), ConfigError, _shown(f)) for f in files}
    if not isinstance(config, Mapping):
        raise ConfigError([f"the config must be a mapping, got {_type_name(config)}"])
    data = _plain(config)
    schema = _schema("config")
    found = [((), message) for message in _non_finite(data)] + _schema_problems(data, schema)
    if found:
        layers = {**loaded, "--config": command_line or {}}
        blamed = set()
        for path, _message in found:
            holders = [name for name, doc in layers.items() if _holds(doc, path)]
            blamed.update(holders[-1:])
        source = ", ".join(name for name in layers if name in blamed) or ", ".join(loaded)
        raise ConfigError([message for _path, message in found], source or None)
    return fill_defaults(data, schema, schema)


def load_workflow_config(
    configfile: str | Path, *, base: str | Path = "config/config.yaml"
) -> dict:
    """The config a ``snakemake --configfile <configfile>`` run sees, validated, defaults filled.

    As in Snakemake, ``base`` (the Snakefile's ``configfile:``) is read first if it exists and
    ``configfile`` is merged over it. Raises :class:`ConfigError`.
    """
    configfile, base = Path(configfile), Path(base)
    files = [base] if base.is_file() and base.resolve() != configfile.resolve() else []
    files.append(configfile)
    config: dict = {}
    for path in files:
        doc = _read(path, ConfigError)
        if doc is None:
            doc = {}
        if not isinstance(doc, Mapping):
            raise ConfigError(
                [f"a config file must be a mapping of keys to values, got {_type_name(doc)}"],
                str(path),
            )
        config = merge(config, doc)
    return check_config(config, files=files)
