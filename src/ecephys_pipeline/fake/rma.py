"""The fake warehouse's own RMA parser and query engine (server side of allen-warehouse.md §1).

Deliberately independent of ``ecephys_pipeline.rma`` (the client's query builder): a bug shared by
client and fake would pass every test. Grammar handled (after URL decoding)::

    criteria   := stage ("," stage-or-item)*
    stage      := "model::" Model filters
                | "rma::criteria" filters ("," assoc)*
                | "rma::include" ("," assoc)*
                | "rma::options" options
    assoc      := name filters ["(" assoc ("," assoc)* ")"] filters
    filters    := ("[" field "$" op value "]")*
    options    := ("[" key "$eq" value "]")*

Commas inside ``[]``, ``()`` and quotes never split. Several ``rma::options`` clauses are merged
(later keys win): AllenSDK appends a paging clause after the channels query's ``tabular`` clause.

Semantics chosen where the real service is not documented (see the module constants):

- Filters on an association apply to the associated rows; a field the associated model lacks but
  the row it hangs from has applies to that row instead. That is how AllenSDK's WellKnownFile query
  ``well_known_file_type[name$eq'EcephysNwb'][attachable_type$eq..][attachable_id$eq..]`` can
  return the right file on the real service.
- ``rma::criteria,assoc(...)`` keeps a root row if at least one chain of associated rows matches.
- ``EcephysChannel`` rows with ``valid_data`` false are not served as rows (docs/architecture.md
  §1) but stay reachable through associations (units on them still belong to their probe).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Page size when the query has no num_rows option. UNCONFIRMED: commonly cited as 50 for the real
# RMA service; AllenSDK always sends num_rows$eq5000, so it never depends on this.
DEFAULT_NUM_ROWS = 50
# Largest page the fake returns (num_rows above it is capped, as is num_rows$eqall). UNCONFIRMED for
# the real service; it only has to be >= 5000, the page size AllenSDK asks for.
MAX_NUM_ROWS = 50_000

# RMA model name -> SQL table name (used by tabular columns and qualified field names).
TABLES = {
    "EcephysSession": "ecephys_sessions",
    "EcephysProbe": "ecephys_probes",
    "EcephysChannel": "ecephys_channels",
    "EcephysUnit": "ecephys_units",
    "WellKnownFile": "well_known_files",
    "Structure": "structures",
    "EcephysUnitMetricBundle": "ecephys_unit_metric_bundles",
}
# Models a query may name; a missing warehouse/<Model>.json is an empty table, not an error.
QUERYABLE = frozenset(TABLES)
# Fields known even when the model's file is absent or empty (so filters on them are not errors).
FALLBACK_FIELDS = {
    "EcephysUnitMetricBundle": {"id", "ecephys_unit_id", "data"},
    "Structure": {"id", "acronym", "name"},
    "WellKnownFile": {
        "id",
        "path",
        "download_link",
        "attachable_id",
        "attachable_type",
        "well_known_file_type_id",
    },
}

# model -> association name -> (target model, kind, key)
#   fk:     row[key] is the target's id (to-one)
#   rev:    target[key] == row id (to-many)
#   attach: WellKnownFile rows with attachable_type == key and attachable_id == row id (to-many)
# Dict-valued fields of a row (specimen, donor, age, well_known_file_type) are embedded to-one
# associations and need no entry here.
GRAPH: dict[str, dict[str, tuple[str, str, str]]] = {
    "EcephysSession": {
        "ecephys_probes": ("EcephysProbe", "rev", "ecephys_session_id"),
        "well_known_files": ("WellKnownFile", "attach", "EcephysSession"),
    },
    "EcephysProbe": {
        "ecephys_session": ("EcephysSession", "fk", "ecephys_session_id"),
        "ecephys_channels": ("EcephysChannel", "rev", "ecephys_probe_id"),
        "well_known_files": ("WellKnownFile", "attach", "EcephysProbe"),
    },
    "EcephysChannel": {
        "ecephys_probe": ("EcephysProbe", "fk", "ecephys_probe_id"),
        "structure": ("Structure", "fk", "structure_id"),
        "ecephys_units": ("EcephysUnit", "rev", "ecephys_channel_id"),
    },
    "EcephysUnit": {
        "ecephys_channel": ("EcephysChannel", "fk", "ecephys_channel_id"),
    },
    "EcephysUnitMetricBundle": {
        "ecephys_unit": ("EcephysUnit", "fk", "ecephys_unit_id"),
    },
    "Structure": {},
    "WellKnownFile": {},
}

OPERATORS = ("eq", "ne", "lt", "gt", "le", "ge", "in", "nin", "li", "il")
OPTIONS = ("start_row", "num_rows", "order", "tabular", "only", "except", "count", "debug")

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FILTER = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\$(nin|eq|ne|lt|gt|le|ge|in|li|il)(.*)$", re.DOTALL
)
_FILTER_OP = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_.]*\s*\$([A-Za-z]*)")
_OPTION = re.compile(r"^\s*([A-Za-z_]+)\s*\$eq(.*)$", re.DOTALL)


class RmaError(ValueError):
    """A query the service refuses; the message goes to the client in ``msg``."""


# ----------------------------------------------------------------------------- parsed query


@dataclass
class Literal:
    text: str
    quoted: bool


@dataclass
class Filter:
    field: str
    op: str
    values: list[Literal]
    raw: str
    _coerced: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Assoc:
    name: str
    filters: list[Filter]
    children: list[Assoc]


@dataclass
class Query:
    model: str = ""
    filters: list[Filter] = field(default_factory=list)
    criteria: list[Assoc] = field(default_factory=list)
    includes: list[Assoc] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)

    def cache_key(self) -> str:
        opts = {k: v for k, v in self.options.items() if k not in ("start_row", "num_rows")}
        return repr((self.model, self.filters, self.criteria, self.includes, sorted(opts.items())))


# ----------------------------------------------------------------------------- scanning


def _scan_to(text: str, i: int, close: str) -> int:
    """Index of the ``close`` matching the opener at ``text[i]`` (quotes and nesting respected)."""
    depth = 0
    quote = ""
    opener = text[i]
    j = i
    while j < len(text):
        c = text[j]
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == opener:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return j
        j += 1
    raise RmaError(f"unbalanced {opener!r} at position {i} in {text!r}")


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets, parentheses and quotes."""
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    for j, c in enumerate(text):
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
            if depth < 0:
                raise RmaError(f"unbalanced {c!r} at position {j} in {text!r}")
        elif c == sep and depth == 0:
            parts.append(text[start:j])
            start = j + 1
    if quote:
        raise RmaError(f"unterminated quote in {text!r}")
    if depth != 0:
        raise RmaError(f"unbalanced brackets in {text!r}")
    parts.append(text[start:])
    return parts


def _brackets(text: str, i: int) -> tuple[list[str], int]:
    """Consecutive ``[...]`` groups starting at ``text[i]``; returns contents and the end index."""
    groups = []
    while i < len(text) and text[i] == "[":
        j = _scan_to(text, i, "]")
        groups.append(text[i + 1 : j])
        i = j + 1
    return groups, i


def parse_literal(text: str) -> Literal:
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return Literal(t[1:-1].replace(t[0] * 2, t[0]), True)
    return Literal(t, False)


def parse_filter(text: str) -> Filter:
    m = _FILTER.match(text)
    if not m:
        bad = _FILTER_OP.match(text)
        if not bad:
            raise RmaError(f"cannot parse filter [{text}]: expected [field$opvalue]")
        op = bad.group(1)
        raise RmaError(
            f"unknown operator ${op} in filter [{text}]; known: "
            + ", ".join("$" + o for o in OPERATORS)
        )
    name, op, rest = m.group(1), m.group(2), m.group(3)
    if op in ("in", "nin"):
        values = [parse_literal(v) for v in split_top(rest)]
    else:
        values = [parse_literal(rest)]
    if any(v.text == "" and not v.quoted for v in values):
        raise RmaError(f"missing value in filter [{text}]")
    return Filter(name, op, values, text)


def _parse_assoc(text: str, i: int) -> tuple[Assoc, int]:
    while i < len(text) and text[i].isspace():
        i += 1
    m = _IDENT.match(text, i)
    if not m:
        raise RmaError(f"expected an association name at position {i} in {text!r}")
    name = m.group(0)
    groups, i = _brackets(text, m.end())
    children: list[Assoc] = []
    if i < len(text) and text[i] == "(":
        j = _scan_to(text, i, ")")
        for part in split_top(text[i + 1 : j]):
            child, k = _parse_assoc(part, 0)
            if k != len(part.rstrip()):
                raise RmaError(f"unexpected {part[k:]!r} in association {part!r}")
            children.append(child)
        more, i = _brackets(text, j + 1)
        groups += more
    return Assoc(name, [parse_filter(g) for g in groups], children), i


def parse_assoc(text: str) -> Assoc:
    node, i = _parse_assoc(text, 0)
    if text[i:].strip():
        raise RmaError(f"unexpected {text[i:]!r} after association {text[:i]!r}")
    return node


def _head(item: str, prefix: str) -> tuple[str, list[str]]:
    rest = item[len(prefix) :]
    m = _IDENT.match(rest)
    if not m:
        raise RmaError(f"expected a name after {prefix!r} in {item!r}")
    groups, i = _brackets(rest, m.end())
    if rest[i:].strip():
        raise RmaError(f"unexpected {rest[i:]!r} in {item!r}")
    return m.group(0), groups


def parse_query(text: str) -> Query:
    """Parse a URL-decoded ``criteria`` value into a :class:`Query` (raises :class:`RmaError`)."""
    if not text or not text.strip():
        raise RmaError("empty criteria: expected model::<Model>")
    q = Query()
    stage = ""
    for raw in split_top(text.strip()):
        item = raw.strip()
        if not item:
            raise RmaError(f"empty clause (stray comma) in {text!r}")
        if item.startswith("model::"):
            if q.model:
                raise RmaError("more than one model:: stage")
            q.model, groups = _head(item, "model::")
            q.filters += [parse_filter(g) for g in groups]
            stage = "model"
        elif item.startswith("rma::"):
            if not q.model:
                raise RmaError(f"{item!r} before model::<Model>")
            name, groups = _head(item, "rma::")
            if name == "criteria":
                q.filters += [parse_filter(g) for g in groups]
            elif name == "include":
                if groups:
                    raise RmaError("rma::include takes associations, not filters")
            elif name == "options":
                for g in groups:
                    m = _OPTION.match(g)
                    if not m:
                        raise RmaError(f"cannot parse option [{g}]: expected [name$eqvalue]")
                    key = m.group(1)
                    if key not in OPTIONS:
                        raise RmaError(f"unknown option {key!r}; known: {', '.join(OPTIONS)}")
                    q.options[key] = parse_literal(m.group(2)).text
            else:
                raise RmaError(f"unsupported stage rma::{name} (criteria, include, options)")
            stage = name
        elif "::" in item.split("[", 1)[0].split("(", 1)[0]:
            raise RmaError(
                f"unsupported stage {item.split('::', 1)[0]}:: (fake supports model/rma)"
            )
        elif stage == "criteria":
            q.criteria.append(parse_assoc(item))
        elif stage == "include":
            q.includes.append(parse_assoc(item))
        else:
            raise RmaError(f"unexpected {item!r} after {stage or 'start'} stage")
    if not q.model:
        raise RmaError("criteria must start with model::<Model>")
    if q.model not in QUERYABLE:
        raise RmaError(
            f"unknown model {q.model!r}; this service knows: {', '.join(sorted(QUERYABLE))}"
        )
    return q


# ----------------------------------------------------------------------------- data


class Store:
    """The rows of ``warehouse/<Model>.json``, reloaded when a file changes."""

    def __init__(self, warehouse_dir: Path):
        self.dir = Path(warehouse_dir)
        self._lock = threading.RLock()
        self._tables: dict[str, tuple[int, list[dict]]] = {}
        self._derived: dict[tuple, Any] = {}
        self._results: OrderedDict[tuple, list] = OrderedDict()

    def _stamp(self, model: str) -> int:
        try:
            st = (self.dir / f"{model}.json").stat()
        except FileNotFoundError:
            return -1
        return st.st_mtime_ns ^ (st.st_size << 1)

    def generation(self) -> tuple:
        return tuple(self._stamp(m) for m in sorted(TABLES))

    def rows(self, model: str) -> list[dict]:
        """All rows of a model (including channels with valid_data false)."""
        stamp = self._stamp(model)
        with self._lock:
            cached = self._tables.get(model)
            if cached and cached[0] == stamp:
                return cached[1]
            path = self.dir / f"{model}.json"
            rows = json.loads(path.read_text()) if stamp != -1 else []
            if not isinstance(rows, list):
                raise RmaError(f"warehouse/{model}.json is not a JSON list")
            self._tables[model] = (stamp, rows)
            self._derived = {k: v for k, v in self._derived.items() if k[0] != model}
            return rows

    def served(self, model: str) -> list[dict]:
        rows = self.rows(model)
        if model != "EcephysChannel":
            return rows
        return self._derive(
            model, "served", lambda: [r for r in rows if r.get("valid_data", True) is not False]
        )

    def _derive(self, model: str, what: Any, build):
        stamp = self._stamp(model)
        key = (model, what, stamp)
        with self._lock:
            if key not in self._derived:
                self._derived[key] = build()
            return self._derived[key]

    def by_id(self, model: str) -> dict:
        rows = self.rows(model)
        return self._derive(model, "by_id", lambda: {r.get("id"): r for r in rows})

    def index(self, model: str, key: str) -> dict:
        rows = self.rows(model)

        def build():
            idx: dict = {}
            for r in rows:
                idx.setdefault(r.get(key), []).append(r)
            return idx

        return self._derive(model, ("index", key), build)

    def fields(self, model: str) -> set[str]:
        rows = self.rows(model)

        def build():
            keys: set[str] = set()
            for r in rows:
                keys.update(r)
            out = set(FALLBACK_FIELDS.get(model, ()))
            for k in keys:  # a key is an embedded association if its first non-null value is
                v = next((r[k] for r in rows if r.get(k) is not None), None)
                if not _embedded(v):
                    out.add(k)
            return out

        return self._derive(model, "fields", build)

    def attached_index(self) -> dict:
        rows = self.rows("WellKnownFile")
        return self._derive(
            "WellKnownFile",
            "attached",
            lambda: _group(rows, lambda r: (r.get("attachable_type"), r.get("attachable_id"))),
        )

    def attached(self, attachable_type: str, attachable_id: Any) -> list[dict]:
        return self.attached_index().get((attachable_type, attachable_id), [])

    def cached_result(self, key: tuple, build) -> list:
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
        result = build()
        with self._lock:
            self._results[key] = result
            while len(self._results) > 16:
                self._results.popitem(last=False)
        return result


def _group(rows, keyfn) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(keyfn(r), []).append(r)
    return out


def _embedded(v: Any) -> bool:
    return isinstance(v, dict) or (isinstance(v, list) and bool(v) and isinstance(v[0], dict))


# ----------------------------------------------------------------------------- evaluation

_TRUE = {"true", "t", "1", "yes"}
_FALSE = {"false", "f", "0", "no"}


def _coerce(lit: Literal, sample: Any, flt: Filter) -> Any:
    """The literal as a value comparable with ``sample`` (the row's value)."""
    if not lit.quoted and lit.text.lower() == "null":
        return None
    if isinstance(sample, bool):
        low = lit.text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise RmaError(f"invalid boolean {lit.text!r} for field {flt.field!r} in [{flt.raw}]")
    if isinstance(sample, int | float):
        try:
            num = float(lit.text)
        except ValueError:
            raise RmaError(
                f"invalid number {lit.text!r} for field {flt.field!r} in [{flt.raw}]"
            ) from None
        return int(num) if num.is_integer() and isinstance(sample, int) else num
    return lit.text


def _like(pattern: str, value: str, fold: bool) -> bool:
    rx = "".join(".*" if c in "*%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, re.IGNORECASE if fold else 0) is not None


def _test(flt: Filter, value: Any) -> bool:
    kind = type(value).__name__ if value is not None else "none"
    if kind not in flt._coerced:
        flt._coerced[kind] = [_coerce(v, value, flt) for v in flt.values]
    lits = flt._coerced[kind]
    op = flt.op
    if op == "in":
        return value is not None and value in lits
    if op == "nin":
        return value is not None and value not in lits
    lit = lits[0]
    if op == "eq":
        return value == lit if lit is not None else value is None
    if op == "ne":
        return value != lit if lit is not None else value is not None
    if value is None or lit is None:
        return False
    if op in ("li", "il"):
        return _like(str(lit), str(value), op == "il")
    try:
        if op == "lt":
            return value < lit
        if op == "gt":
            return value > lit
        if op == "le":
            return value <= lit
        return value >= lit
    except TypeError:
        return False


def _strip_table(name: str, model: str | None) -> str:
    if "." in name:
        table, fld = name.rsplit(".", 1)
        if model is None or table in (TABLES.get(model), model):
            return fld
        raise RmaError(f"field {name!r}: table {table!r} is not {TABLES.get(model, model)!r}")
    return name


class _Snapshot:
    """Per-query memo of the store's tables and indexes (one stat per table, not per row)."""

    def __init__(self, store: Store):
        self._store = store
        self._memo: dict[tuple, Any] = {}

    def _get(self, key: tuple, fn, *args):
        if key not in self._memo:
            self._memo[key] = fn(*args)
        return self._memo[key]

    def by_id(self, model: str) -> dict:
        return self._get(("by_id", model), self._store.by_id, model)

    def index(self, model: str, key: str) -> dict:
        return self._get(("index", model, key), self._store.index, model, key)

    def fields(self, model: str) -> set[str]:
        return self._get(("fields", model), self._store.fields, model)

    def attached(self, attachable_type: str, attachable_id: Any) -> list[dict]:
        rows = self._get(("attached_all",), self._store.attached_index)
        return rows.get((attachable_type, attachable_id), [])

    def served(self, model: str) -> list[dict]:
        return self._get(("served", model), self._store.served, model)

    def generation(self) -> tuple:
        return self._store.generation()

    def cached_result(self, key: tuple, build) -> list:
        return self._store.cached_result(key, build)


class Engine:
    def __init__(self, store: Store):
        self.store = _Snapshot(store)

    # -- associations -------------------------------------------------------------------------

    def related(self, model: str | None, row: dict, name: str) -> tuple[str | None, list, bool]:
        """(target model or None if embedded, target rows, to_one)."""
        if name in row and (_embedded(row[name]) or row[name] is None or row[name] == []):
            v = row[name]
            if isinstance(v, dict):
                return None, [v], True
            return None, list(v or []), isinstance(v, dict) or v is None
        spec = GRAPH.get(model or "", {}).get(name)
        if spec is None:
            known = sorted(GRAPH.get(model or "", {}))
            known += sorted(k for k, v in row.items() if _embedded(v))
            raise RmaError(
                f"unknown association {name!r} for {model or 'embedded object'}"
                + (f"; known: {', '.join(known)}" if known else "")
            )
        target, kind, key = spec
        if kind == "fk":
            hit = self.store.by_id(target).get(row.get(key))
            return target, [hit] if hit is not None else [], True
        if kind == "rev":
            return target, self.store.index(target, key).get(row.get("id"), []), False
        return target, self.store.attached(key, row.get("id")), False

    def _fields(self, model: str | None, row: dict) -> set[str]:
        if model is None:
            return {k for k, v in row.items() if not _embedded(v)}
        return self.store.fields(model)

    def _check_field(self, model: str | None, row: dict | None, flt: Filter) -> str:
        name = _strip_table(flt.field, model)
        if model is not None and name not in self.store.fields(model):
            raise RmaError(f"unknown field {flt.field!r} for model {model} in [{flt.raw}]")
        if model is None and row is not None and name not in row:
            raise RmaError(f"unknown field {flt.field!r} in [{flt.raw}]")
        return name

    def _assoc_match(self, model: str | None, row: dict, node: Assoc) -> bool:
        target, rows, _ = self.related(model, row, node.name)
        own: list[tuple[str, Filter]] = []
        parent: list[tuple[str, Filter]] = []
        for flt in node.filters:
            name = _strip_table(flt.field, None)
            if target is not None and name in self.store.fields(target):
                own.append((name, flt))
            elif target is None and rows and name in rows[0]:
                own.append((name, flt))
            elif name in self._fields(model, row):
                parent.append((name, flt))
            elif target is None and not rows:
                own.append((name, flt))  # embedded association absent: nothing can match
            else:
                raise RmaError(
                    f"unknown field {flt.field!r} for association {node.name!r} in [{flt.raw}]"
                )
        if not all(_test(flt, row.get(name)) for name, flt in parent):
            return False
        for r in rows:
            if all(_test(flt, r.get(name)) for name, flt in own) and all(
                self._assoc_match(target, r, child) for child in node.children
            ):
                return True
        return False

    # -- rendering ----------------------------------------------------------------------------

    def _render(self, model: str | None, row: dict, includes: list[Assoc]) -> dict:
        out = {k: v for k, v in row.items() if not _embedded(v)}
        for node in includes:
            target, rows, to_one = self.related(model, row, node.name)
            if node.filters:
                rows = [
                    r
                    for r in rows
                    if all(_test(f, r.get(self._check_field(target, r, f))) for f in node.filters)
                ]
            rendered = [self._render(target, r, node.children) for r in rows]
            out[node.name] = (rendered[0] if rendered else None) if to_one else rendered
        return out

    def _tabular(self, q: Query) -> list[tuple[str, Any, str]]:
        """Columns as (alias, source, field); source None = root row, else an Assoc include."""
        cols = []
        for part in q.options["tabular"].split(","):
            spec = part.strip()
            m = re.fullmatch(r"([A-Za-z_][\w.]*)(?:\s+as\s+([A-Za-z_]\w*))?", spec, re.IGNORECASE)
            if not m:
                raise RmaError(f"cannot parse tabular column {spec!r}")
            ref, alias = m.group(1), m.group(2)
            table, _, fld = ref.rpartition(".")
            if not table or table in (TABLES[q.model], q.model):
                if fld not in self.store.fields(q.model):
                    raise RmaError(f"unknown column {ref!r} for model {q.model} in tabular")
                cols.append((alias or fld, None, fld))
                continue
            source = None
            for node in q.includes:
                target = GRAPH.get(q.model, {}).get(node.name, (None,))[0]
                if table in (node.name, TABLES.get(target or "", "")):
                    source = node
            if source is None:
                raise RmaError(
                    f"tabular column {ref!r}: table {table!r} is not part of the query "
                    "(add it with rma::include)"
                )
            target = GRAPH[q.model][source.name][0]
            if fld not in self.store.fields(target):
                raise RmaError(f"unknown column {ref!r} for model {target} in tabular")
            cols.append((alias or fld, source, fld))
        return cols

    # -- execution ----------------------------------------------------------------------------

    def execute(self, q: Query) -> list[dict]:
        """All matching rows of the query, ordered and rendered (no paging)."""
        key = (self.store.generation(), q.cache_key())
        return self.store.cached_result(key, lambda: self._execute(q))

    def _execute(self, q: Query) -> list[dict]:
        model = q.model
        rows = self.store.served(model)
        names = [(self._check_field(model, None, f), f) for f in q.filters]
        for node in q.criteria:  # validate association names even when there are no rows
            if node.name not in GRAPH[model] and not any(
                node.name in r and _embedded(r[node.name]) for r in rows[:1]
            ):
                self.related(model, rows[0] if rows else {}, node.name)
        matched = [
            r
            for r in rows
            if all(_test(f, r.get(n)) for n, f in names)
            and all(self._assoc_match(model, r, node) for node in q.criteria)
        ]
        if "tabular" in q.options:
            cols = self._tabular(q)
            rendered = []
            for r in matched:
                out = {}
                cache: dict[int, dict | None] = {}
                for alias, source, fld in cols:
                    if source is None:
                        out[alias] = r.get(fld)
                        continue
                    if id(source) not in cache:
                        _, rel, _ = self.related(model, r, source.name)
                        cache[id(source)] = rel[0] if rel else None
                    obj = cache[id(source)]
                    out[alias] = obj.get(fld) if obj is not None else None
                rendered.append(out)
        else:
            rendered = [self._render(model, r, q.includes) for r in matched]
            if "only" in q.options:
                keep = [_strip_table(k.strip(), model) for k in q.options["only"].split(",")]
                rendered = [{k: o[k] for k in keep if k in o} for o in rendered]
            if "except" in q.options:
                drop = {_strip_table(k.strip(), model) for k in q.options["except"].split(",")}
                rendered = [{k: v for k, v in o.items() if k not in drop} for o in rendered]
        pairs = list(zip(matched, rendered, strict=True))
        for fld, desc in reversed(self._order(q)):
            in_root = fld in self.store.fields(model)

            def sort_key(p, fld=fld, in_root=in_root):
                v = (p[0] if in_root else p[1]).get(fld)
                return (v is None, v if v is not None else 0)

            try:
                pairs.sort(key=sort_key, reverse=desc)
            except TypeError:
                pairs.sort(key=lambda p, f=fld: str(p[0].get(f)), reverse=desc)
        return [p[1] for p in pairs]

    def _order(self, q: Query) -> list[tuple[str, bool]]:
        text = q.options.get("order", "id")
        out = []
        for part in text.split(","):
            spec = part.strip()
            if not spec:
                continue
            desc = False
            m = re.fullmatch(r"(.+?)(?:\s+|\$)(asc|desc)", spec, re.IGNORECASE)
            if m:
                spec, desc = m.group(1).strip(), m.group(2).lower() == "desc"
            fld = _strip_table(spec, q.model)
            aliases = set()
            if "tabular" in q.options:
                aliases = {a for a, _, _ in self._tabular(q)}
            if fld not in self.store.fields(q.model) and fld not in aliases:
                raise RmaError(f"cannot order by unknown field {spec!r} of model {q.model}")
            out.append((fld, desc))
        return out or [("id", False)]


def _int_option(q: Query, key: str, default: int) -> int:
    raw = q.options.get(key)
    if raw is None:
        return default
    if key == "num_rows" and raw.lower() == "all":
        return MAX_NUM_ROWS
    try:
        value = int(raw)
    except ValueError:
        raise RmaError(f"option {key} must be an integer, got {raw!r}") from None
    if value < 0:
        raise RmaError(f"option {key} must not be negative, got {value}")
    return value


def error_envelope(msg: str) -> dict:
    return {"success": False, "id": 0, "start_row": 0, "num_rows": 0, "total_rows": 0, "msg": msg}


def run(
    store: Store, criteria: str, params: dict[str, str] | None = None, *, start_row=None
) -> dict:
    """Answer one RMA request: the JSON envelope (``success`` false on any error).

    ``start_row`` overrides the request's (the ``rma_repeat_page`` fault)."""
    try:
        q = parse_query(criteria)
        for key in ("start_row", "num_rows", "order"):  # URL parameters; clauses take precedence
            if params and key in params and key not in q.options:
                q.options[key] = params[key]
        start = _int_option(q, "start_row", 0) if start_row is None else start_row
        count = min(_int_option(q, "num_rows", DEFAULT_NUM_ROWS), MAX_NUM_ROWS)
        rows = Engine(store).execute(q)
    except RmaError as exc:
        return error_envelope(str(exc))
    page = rows[start : start + count]
    return {
        "success": True,
        "id": 0,
        "start_row": start,
        "num_rows": len(page),
        "total_rows": len(rows),
        "msg": page,
    }
