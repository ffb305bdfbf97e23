"""A stand-in for the DANDI Archive API, serving the synthetic NWB files as dandisets 000021/000022.

Test and demo side only (the catalogue and digests are in ``dandi_catalog.py``). Its own code: it
shares nothing with the pipeline's DANDI client, so a bug cannot hide in shared code. The facts
it implements, each with its source in dandi-archive / dandi-cli / dandi-schema, are in
``docs/dandi.md``; the short version:

- ``GET /api/info/``; ``GET /api/dandisets/`` and ``/api/dandisets/{id}/``;
  ``/api/dandisets/{id}/versions/`` (+ ``{version}/`` = the version metadata, ``{version}/info/``);
  ``/api/dandisets/{id}/versions/{version}/assets/`` (paginated ``count/next/previous/results``,
  ``page``, ``page_size`` <= 1000, ``metadata``, ``path``, ``glob``, ``order``; ``count`` only
  on page 1, as the archive's ``LazyPagination`` does), ``.../assets/paths/``,
  ``.../assets/{asset_id}/`` (+ ``info/``, ``download/``); ``/api/assets/{asset_id}/`` (+ ``info/``,
  ``download/``).
- ``download/`` answers ``302`` to the blob, ``/dandiarchive/blobs/<3>/<3>/<blob uuid>`` on the
  same server, served like an S3 object (``Range``, ``If-Range``, ``ETag`` = the dandi-etag) with
  the server's body faults (``flip_byte`` = a mirror serving other bytes).
- Dandiset 000021 holds the ``brain_observatory_1.1`` sessions, 000022 the
  ``functional_connectivity`` ones: every session NWB and LFP NWB, at
  ``sub-<subject>/sub-<subject>_ses-<session>.nwb`` and ``..._probe-<probe>_ecephys.nwb``, where
  ``<subject>`` is the file's NWB ``subject_id`` (the donor id), as on the real archive.
- Digests (``dandi:sha2-256``, ``dandi:dandi-etag``) are computed from the files, once per
  (path, size, mtime). Generatable (lazy) files are generated when a response needs their size.

Faults (``FakeWarehouse.set_faults``): ``{"kind": "dandi_wrong_digest", "match": <asset path
substring>}`` publishes wrong digests (well-formed, one hex digit changed) for the matching assets
in listings and metadata; ``dandi_wrong_sha256`` / ``dandi_wrong_etag`` only the one. ``match`` is
tested against the asset path, ``times`` counts assets served. A mirror serving other bytes is the
server's ``flip_byte`` on the blob route (its query names the file).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from .dandi_catalog import (
    CREATED,
    DANDISETS,
    DRAFT,
    PUBLISHED_VERSIONS,
    Asset,
    archive_for,
    digests,
)
from .faults import BODY_KINDS, DANDI_KINDS, BodyPlan
from .files import FileInfo, NotGeneratable

VERSION_RE = re.compile(r"0\.\d{6}\.\d{4}|draft")
DANDISET_RE = re.compile(r"\d{6}")
UUID4_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

PAGE_SIZE = 100  # DandiPagination / LazyPagination.page_size
MAX_PAGE_SIZE = 1000  # .max_page_size
BLOB_PREFIX = "/dandiarchive/blobs/"  # path-style stand-in for the dandiarchive S3 bucket
API_PREFIXES = ("/api/info", "/api/dandisets", "/api/assets")

SCHEMA_VERSION = "0.6.10"  # UNCONFIRMED: the schemaVersion the real asset metadata carries
CONTACT_PERSON = "Siegle, Josh"  # contributor with dcite:ContactPerson in the 000022 metadata
# UNCONFIRMED timestamps: dandiset/draft creation and the publication of the pinned versions.
DRAFT_MODIFIED = datetime(2025, 11, 16, 22, 40, 3, tzinfo=UTC)
# DRF BooleanField's accepted spellings
_BOOL_TRUE = {"t", "y", "yes", "true", "on", "1"}
_BOOL_FALSE = {"f", "n", "no", "false", "off", "0"}
_BOOL_TRUE |= {v.upper() for v in _BOOL_TRUE} | {v.title() for v in _BOOL_TRUE}
_BOOL_FALSE |= {v.upper() for v in _BOOL_FALSE} | {v.title() for v in _BOOL_FALSE}


def _bump_hex(h: str) -> str:
    """The same hex string with its last digit changed (stays well-formed)."""
    return h[:-1] + ("0" if h[-1] != "0" else "1")


def _iso(t: datetime) -> str:
    """DRF's DateTimeField rendering: ISO 8601, microseconds, ``Z``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ------------------------------------------------------------------------------------ requests


class _HTTPError(Exception):
    def __init__(self, status: int, body: Any):
        super().__init__(status)
        self.status, self.body = status, body


def _not_found(detail: str = "Not found.") -> _HTTPError:
    return _HTTPError(404, {"detail": detail})


def handles(path: str) -> bool:
    """True if ``path`` is a DANDI route of the stand-in."""
    return path.startswith(API_PREFIXES) or path.startswith(BLOB_PREFIX)


class _Request:
    """One API request: what the views need from the handler."""

    def __init__(self, handler, path: str, raw_query: str):
        self.h = handler
        self.path = path
        self.raw_query = raw_query
        self.params = dict(parse_qsl(raw_query, keep_blank_values=True))
        self.arc = archive_for(handler.server.fake)
        fake = handler.server.fake
        self.base = "http://" + (handler.headers.get("Host") or f"{fake.host}:{fake.port}")

    @property
    def api(self) -> str:
        return self.base + "/api"

    def absolute(self) -> str:
        return self.base + self.path + (("?" + self.raw_query) if self.raw_query else "")


def route(handler, path: str, raw_query: str) -> None:
    """Answer one DANDI request on ``handler`` (a fake server request handler)."""
    req = _Request(handler, path, raw_query)
    if path.startswith(BLOB_PREFIX):
        return _blob(req, unquote(path[len(BLOB_PREFIX) :]))
    if handler.command not in ("GET", "HEAD"):
        return _respond(req, 405, {"detail": f'Method "{handler.command}" not allowed.'})
    try:
        status, body, extra = _api(req)
    except _HTTPError as e:
        status, body, extra = e.status, e.body, {}
    except Exception as e:  # e.g. generating a lazy file failed: say so, do not hang the client
        status, body, extra = 500, {"detail": f"the DANDI stand-in failed: {e}"}, {}
    _respond(req, status, body, extra)


def _respond(req: _Request, status: int, body: Any, extra: dict | None = None) -> None:
    extra = {"Vary": "Accept", "Allow": "GET, HEAD, OPTIONS", **(extra or {})}
    if status in (301, 302):
        return req.h._simple(status, b"", "text/html; charset=utf-8", extra)
    plan = BodyPlan(req.h._claim(BODY_KINDS))
    req.h._json(status, body, plan, extra)


def _api(req: _Request) -> tuple[int, Any, dict]:  # noqa: C901 - a URL table
    parts = [p for p in req.path[len("/api/") :].split("/") if p]
    if not parts or parts[0] not in ("info", "dandisets", "assets"):
        raise _not_found()
    if not req.path.endswith("/"):  # Django's APPEND_SLASH redirects a GET without the slash
        return 301, None, {"Location": req.base + req.path + "/" + _q(req.raw_query)}
    if parts == ["info"]:
        return 200, _info(req), {}
    if parts[0] == "assets":
        if len(parts) < 2 or not UUID4_RE.fullmatch(parts[1]):
            raise _not_found()
        a = req.arc.by_id(parts[1])
        if a is None:
            raise _not_found("No Asset matches the given query.")
        return _asset_view(req, a, parts[2:])
    # dandisets
    if len(parts) == 1:
        return 200, _dandiset_list(req), {}
    did = parts[1]
    if not DANDISET_RE.fullmatch(did) or did not in DANDISETS:
        raise _not_found("No Dandiset matches the given query.")
    if len(parts) == 2:
        return 200, _dandiset_detail(req, did), {}
    if parts[2] != "versions":
        raise _not_found()
    if len(parts) == 3:
        return 200, _page(req, _versions(req, did), lazy=False), {}
    version = parts[3]
    if not VERSION_RE.fullmatch(version) or version not in (DRAFT, PUBLISHED_VERSIONS[did]):
        raise _not_found("No Version matches the given query.")
    rest = parts[4:]
    if not rest:
        return 200, _version_metadata(req, did, version), {}
    if rest == ["info"]:
        return 200, _version_detail(req, did, version), {}
    if rest[0] != "assets":
        raise _not_found()
    if len(rest) == 1:
        return 200, _asset_list(req, did), {}
    if rest[1:] == ["paths"]:
        return 200, _asset_paths(req, did, version), {}
    a = req.arc.by_id(rest[1]) if UUID4_RE.fullmatch(rest[1]) else None
    if a is None or a.dandiset != did:
        raise _not_found("No Asset matches the given query.")
    return _asset_view(req, a, rest[2:])


def _q(raw_query: str) -> str:
    return ("?" + raw_query) if raw_query else ""


def _asset_view(req: _Request, a: Asset, rest: list[str]) -> tuple[int, Any, dict]:
    if not rest:
        return 200, _asset_metadata(req, a), {}
    if rest == ["info"]:
        return 200, {**_asset_row(req, a), "metadata": _asset_metadata(req, a)}, {}
    if rest == ["download"]:
        disp = req.params.get("content_disposition", "attachment")
        if disp not in ("attachment", "inline"):
            raise _HTTPError(400, {"content_disposition": [f'"{disp}" is not a valid choice.']})
        name = a.path.rsplit("/", 1)[-1]
        q = urlencode(
            {"response-content-disposition": f'{disp}; filename="{name}"'}, quote_via=quote
        )
        return 302, None, {"Location": f"{req.base}{BLOB_PREFIX}{a.blob_key}?{q}"}
    raise _not_found()


# ------------------------------------------------------------------------------------ views


def _info(req: _Request) -> dict:
    return {
        "instance_config": {
            "instance_name": "DANDI-STAND-IN",
            "instance_identifier": None,
            "instance_url": req.base,
            "doi_prefix": None,
            "licenses": ["spdx:CC0-1.0", "spdx:CC-BY-4.0"],
        },
        "schema_version": SCHEMA_VERSION,
        "schema_url": f"{req.base}/api/schemas/?model=Dandiset",
        "allowed_schema_versions": [SCHEMA_VERSION],
        "version": "0.0.0+ecephys-pipeline-stand-in",
        "cli-minimal-version": "0.74.0",
        "cli-requires-python": ">=3.10",
        "cli-bad-versions": [],
        "services": {
            "api": {"url": req.api},
            "webui": {"url": req.base},
            "jupyterhub": {"url": req.base},
        },
    }


def _sizes(req: _Request, assets: list[Asset]) -> int:
    return sum(req.arc.file(a).stat().st_size for a in assets)


def _version_row(req: _Request, did: str, version: str, *, nested: bool = True) -> dict:
    """VersionSerializer (``nested``: with its dandiset) fields."""
    assets = req.arc.assets(did)
    published = version != DRAFT
    row = {
        "version": version,
        "name": DANDISETS[did][1],
        "asset_count": len(assets),
        "active_uploads": 0,
        "size": _sizes(req, assets),
        # publishing leaves the new version Valid and marks the draft Published (services/publish)
        "status": "Valid" if published else "Published",
        "created": _iso(_version_time(version)),
        "modified": _iso(_version_time(version) if published else DRAFT_MODIFIED),
    }
    if nested:
        row["dandiset"] = _dandiset_row(did)
    row["release_notes"] = ""
    return row


def _version_time(version: str) -> datetime:
    if version == DRAFT:
        return CREATED
    return datetime.strptime(version[2:], "%y%m%d.%H%M").replace(tzinfo=UTC)


def _dandiset_row(did: str) -> dict:
    return {
        "identifier": did,
        "created": _iso(CREATED),
        "modified": _iso(DRAFT_MODIFIED),
        "contact_person": CONTACT_PERSON,
        "embargo_status": "OPEN",
        "star_count": 0,
        "is_starred": False,
    }


def _dandiset_detail(req: _Request, did: str) -> dict:
    row = _dandiset_row(did)
    row["most_recent_published_version"] = _version_row(
        req, did, PUBLISHED_VERSIONS[did], nested=False
    )
    row["draft_version"] = _version_row(req, did, DRAFT, nested=False)
    return row


def _dandiset_list(req: _Request) -> dict:
    rows = []
    for did in DANDISETS:
        row = _dandiset_row(did)
        for key, version in (
            ("most_recent_published_version", PUBLISHED_VERSIONS[did]),
            ("draft_version", DRAFT),
        ):
            v = _version_row(req, did, version, nested=False)
            row[key] = {k: v[k] for k in ("version", "name", "asset_count", "size", "status")}
            row[key] |= {"created": v["created"], "modified": v["modified"]}
        rows.append(row)
    return _page(req, rows, lazy=False)


def _versions(req: _Request, did: str) -> list[dict]:
    rows = [_version_row(req, did, v) for v in (DRAFT, PUBLISHED_VERSIONS[did])]
    order = req.params.get("order")
    if order not in (None, "", "created", "-created"):
        raise _HTTPError(400, {"order": [_bad_choice(order)]})
    return sorted(rows, key=lambda r: r["created"], reverse=order == "-created")


def _version_metadata(req: _Request, did: str, version: str) -> dict:
    assets = req.arc.assets(did)
    name = DANDISETS[did][1]
    vid = version if version != DRAFT else DRAFT
    meta = {
        "@context": "https://raw.githubusercontent.com/dandi/schema/master/releases/"
        f"{SCHEMA_VERSION}/context.json",
        "schemaKey": "Dandiset",
        "schemaVersion": SCHEMA_VERSION,
        "id": f"DANDI:{did}/{vid}",
        "identifier": f"DANDI:{did}",
        "name": name,
        "description": f"Synthetic stand-in for {name} (Allen Brain Observatory Visual Coding - "
        "Neuropixels); served by ecephys_pipeline.fake, not by the DANDI Archive.",
        "version": vid,
        "url": f"{req.base}/dandiset/{did}/{vid}",
        "license": ["spdx:CC-BY-4.0"],
        "access": [{"schemaKey": "AccessRequirements", "status": "dandi:OpenAccess"}],
        "contributor": [
            {
                "schemaKey": "Person",
                "name": CONTACT_PERSON,
                "roleName": ["dcite:Author", "dcite:ContactPerson", "dcite:ProjectLeader"],
                "includeInCitation": True,
            }
        ],
        "dateCreated": _iso(CREATED),
        "assetsSummary": {
            "schemaKey": "AssetsSummary",
            "numberOfBytes": _sizes(req, assets),
            "numberOfFiles": len(assets),
            "numberOfSubjects": len({a.subject for a in assets}),
            "dataStandard": [
                {
                    "schemaKey": "StandardsType",
                    "name": "Neurodata Without Borders (NWB)",
                    "identifier": "RRID:SCR_015242",
                }
            ],
        },
        "manifestLocation": [f"{req.base}/dandiarchive/dandisets/{did}/{vid}/assets.yaml"],
    }
    if version != DRAFT:
        meta["datePublished"] = _iso(_version_time(version))
        meta["doi"] = f"10.48324/dandi.{did}/{version}"
    return meta


def _version_detail(req: _Request, did: str, version: str) -> dict:
    row = _version_row(req, did, version)
    row["asset_validation_errors"] = []
    row["version_validation_errors"] = []
    row["metadata"] = _version_metadata(req, did, version)
    row["contact_person"] = CONTACT_PERSON
    return row


def _asset_row(req: _Request, a: Asset) -> dict:
    """AssetSerializer fields (without metadata)."""
    f = req.arc.file(a)
    return {
        "asset_id": a.asset_id,
        "blob": a.blob_id,
        "zarr": None,
        "path": a.path,
        "size": f.stat().st_size,
        "created": _iso(a.created),
        "modified": _iso(a.created + timedelta(seconds=2)),
    }


def _published_digests(req: _Request, a: Asset) -> dict[str, str]:
    sha, etag = digests(req.arc.file(a))
    for f in req.h.server.fake.claim_faults([a.path], DANDI_KINDS):
        req.h._entry["faults"].append(f["kind"])
        if f["kind"] in ("dandi_wrong_digest", "dandi_wrong_sha256"):
            sha = _bump_hex(sha)
        if f["kind"] in ("dandi_wrong_digest", "dandi_wrong_etag"):
            hexpart, _, nparts = etag.partition("-")
            etag = f"{_bump_hex(hexpart)}-{nparts}"
    return {"dandi:dandi-etag": etag, "dandi:sha2-256": sha}


def _asset_metadata(req: _Request, a: Asset) -> dict:
    """Asset.full_metadata: the stored metadata plus the computed fields."""
    f = req.arc.file(a)
    st = f.stat()
    mtime = datetime.fromtimestamp(st.st_mtime, tz=UTC)
    probe = "_probe-" in a.path
    return {
        "schemaKey": "Asset",
        "schemaVersion": SCHEMA_VERSION,
        "encodingFormat": "application/x-nwb",
        "blobDateModified": mtime.isoformat(),
        "dateModified": _iso(a.created),
        "wasAttributedTo": [
            {
                "schemaKey": "Participant",
                "identifier": a.subject,
                "species": {
                    "schemaKey": "SpeciesType",
                    "identifier": "http://purl.obolibrary.org/obo/NCBITaxon_10090",
                    "name": "Mus musculus - House mouse",
                },
            }
        ],
        "wasGeneratedBy": [
            {"schemaKey": "Session", "identifier": str(a.session_id), "name": str(a.session_id)}
        ],
        "variableMeasured": ["LFP", "ElectricalSeries"] if probe else ["Units"],
        "id": f"dandiasset:{a.asset_id}",
        "access": [{"schemaKey": "AccessRequirements", "status": "dandi:OpenAccess"}],
        "path": a.path,
        "identifier": a.asset_id,
        "contentUrl": [
            f"{req.api}/assets/{a.asset_id}/download/",
            f"{req.base}{BLOB_PREFIX}{a.blob_key}",
        ],
        "contentSize": st.st_size,
        "digest": _published_digests(req, a),
        "@context": "https://raw.githubusercontent.com/dandi/schema/master/releases/"
        f"{SCHEMA_VERSION}/context.json",
    }


def _parse_bool(req: _Request, name: str) -> bool:
    v = req.params.get(name)
    if v is None:
        return False
    if v in _BOOL_TRUE:
        return True
    if v in _BOOL_FALSE:
        return False
    raise _HTTPError(400, {name: ["Must be a valid boolean."]})


def _bad_choice(v: str) -> str:
    return f"Select a valid choice. {v} is not one of the available choices."


def _asset_list(req: _Request, did: str) -> dict:
    metadata = _parse_bool(req, "metadata")
    zarr_only = _parse_bool(req, "zarr")
    assets = list(req.arc.assets(did))
    path = req.params.get("path")
    if path:
        exact = [a for a in assets if a.path == path]
        assets = exact or [a for a in assets if a.path.lower().startswith(path.lower())]
    if zarr_only:
        assets = []
    glob = req.params.get("glob")
    if glob is not None:
        rx = re.compile("^" + re.escape(glob).replace("\\*", ".*") + "$", re.IGNORECASE)
        assets = [a for a in assets if rx.search(a.path)]
    order = req.params.get("order")
    if order:
        key = order.lstrip("-")
        if key not in ("created", "modified", "path") or order.count("-") > 1:
            raise _HTTPError(400, {"order": [_bad_choice(order)]})
        assets.sort(key=(lambda a: a.path) if key == "path" else (lambda a: a.created))
        if order.startswith("-"):
            assets.reverse()
    page = _page(req, assets, lazy=True)
    rows = []
    for a in page["results"]:
        row = _asset_row(req, a)
        if metadata:
            row["metadata"] = _asset_metadata(req, a)
        rows.append(row)
    page["results"] = rows
    return page


def _asset_paths(req: _Request, did: str, version: str) -> dict:
    prefix = req.params.get("path_prefix", "").rstrip("/")
    assets = req.arc.assets(did)
    nodes: dict[str, list[Asset]] = {}
    for a in assets:
        if prefix and not a.path.startswith(prefix + "/"):
            continue
        rest = a.path[len(prefix) + 1 :] if prefix else a.path
        child = (prefix + "/" if prefix else "") + rest.split("/", 1)[0]
        nodes.setdefault(child, []).append(a)
    if prefix and not nodes and not any(a.path == prefix for a in assets):
        raise _not_found("Specified path not found.")
    rows = []
    for child in sorted(nodes):
        members = nodes[child]
        leaf = members[0] if len(members) == 1 and members[0].path == child else None
        rows.append(
            {
                "path": child,
                "version": 1 if version == DRAFT else 2,  # a Version primary key
                "aggregate_files": len(members),
                "aggregate_size": _sizes(req, members),
                "asset": None
                if leaf is None
                else {"asset_id": leaf.asset_id, "url": f"{req.base}{BLOB_PREFIX}{leaf.blob_key}"},
            }
        )
    return _page(req, rows, lazy=False)


# ------------------------------------------------------------------------------------ paging


def _page_size(req: _Request) -> int:
    raw = req.params.get("page_size")
    try:
        n = int(raw) if raw is not None else PAGE_SIZE
    except ValueError:
        return PAGE_SIZE
    if n <= 0:
        return PAGE_SIZE
    return min(n, MAX_PAGE_SIZE)


def _page(req: _Request, items: list, *, lazy: bool) -> dict:
    """DRF PageNumberPagination over ``items``; ``lazy``: the archive's LazyPagination."""
    size = _page_size(req)
    raw = req.params.get("page", "1")
    try:
        number = int(raw)
    except ValueError:
        raise _not_found("Invalid page.") from None
    pages = max(1, -(-len(items) // size))
    if number < 1 or (not lazy and number > pages):
        raise _not_found("Invalid page.")
    chunk = items[(number - 1) * size : number * size]
    has_next = len(items) > number * size
    url = req.absolute()
    return {
        "count": len(items) if (number == 1 or not lazy) else None,
        "next": _with_page(url, number + 1) if has_next else None,
        "previous": _with_page(url, number - 1) if number > 1 else None,
        "results": chunk,
    }


def _with_page(url: str, number: int) -> str:
    """DRF's replace_query_param / remove_query_param (page 1): the query re-sorted."""
    base, _, query = url.partition("?")
    pairs: dict[str, list[str]] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        pairs.setdefault(k, []).append(v)
    pairs.pop("page", None)
    if number > 1:
        pairs["page"] = [str(number)]
    q = urlencode(sorted(pairs.items()), doseq=True)
    return base + ("?" + q if q else "")


# ------------------------------------------------------------------------------------ blobs


def _blob(req: _Request, key: str) -> None:
    h = req.h
    if h.command not in ("GET", "HEAD"):
        return h._not_allowed("GET, HEAD")
    a = req.arc.by_blob(key)
    if a is None:
        return h._s3_error(404, "NoSuchKey", "The specified key does not exist.")
    try:
        path = req.arc.file(a)
        st = path.stat()
    except (NotGeneratable, FileNotFoundError):
        return h._s3_error(404, "NoSuchKey", "The specified key does not exist.")
    _, etag = digests(path)
    info = FileInfo(
        path=path,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        etag=f'"{etag}"',
        last_modified=formatdate(st.st_mtime, usegmt=True),
        content_type="application/octet-stream",
    )
    extra = {"x-amz-request-id": uuid.uuid4().hex[:16].upper()}
    disp = req.params.get("response-content-disposition")
    if disp:
        extra["Content-Disposition"] = disp
    h._file(info, extra, s3=True)
