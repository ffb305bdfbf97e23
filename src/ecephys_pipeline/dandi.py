"""The DANDI Archive's copy of the dataset: its published asset listing and digests.

DANDI mirrors the release as dandisets 000021 (``brain_observatory_1.1``) and 000022
(``functional_connectivity``) and publishes a sha256 and a dandi-etag for every file, which the
Allen warehouse and bucket do not (docs/dandi.md §4, §5). This module reads a dandiset version's
listing (``GET /api/dandisets/{id}/versions/{version}/assets/?metadata=true``, paged, docs/dandi.md
§1, §2, §3), keeps it in the cache directory (a published version never changes, so it is fetched
once), and answers, for a session or a probe's LFP file: where DANDI serves it and which digests
it publishes.

Asset paths are ``sub-<subject>/sub-<subject>_ses-<session_id>.nwb`` and
``..._ses-<session_id>_probe-<probe_id>_ecephys.nwb``; ``<subject>`` is the NWB subject id, which
the Allen tables do not carry, so files are matched on the session and probe ids alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlencode

from . import atomic, layout, rma

SHA256 = "dandi:sha2-256"
ETAG = "dandi:dandi-etag"
PAGE_SIZE = 1000  # the archive's maximum (docs/dandi.md §2)
MAX_PAGES = 100  # 383 assets in the two dandisets; a listing this long is a broken server
_ASSET = re.compile(r"_ses-(\d+)(?:_probe-(\d+)_ecephys)?\.nwb$")


class DandiError(RuntimeError):
    """The archive's listing is unreachable, malformed, or lacks what was asked for."""


@dataclass(frozen=True)
class Asset:
    """One published file: where DANDI serves it and what it must hash to."""

    dandiset: str
    version: str
    path: str
    asset_id: str
    size: int
    sha256: str | None
    dandi_etag: str | None

    def download_url(self, api_url: str) -> str:
        """The archive answers it with a redirect to the blob (docs/dandi.md §1)."""
        return f"{api_url.rstrip('/')}/assets/{self.asset_id}/download/"

    def expected(self) -> dict:
        """The digests a download must match, in the form the download engine takes."""
        out: dict = {"size": self.size}
        if self.sha256:
            out["sha256"] = self.sha256
        return out


def api_url(base_url: str) -> str:
    """The API root of an archive at ``base_url`` (``https://api.dandiarchive.org`` →
    ``.../api``; a URL that already ends in ``/api`` is taken as it is)."""
    base = base_url.rstrip("/")
    return base if base.endswith("/api") else f"{base}/api"


def file_key(path: str) -> tuple[int, int | None] | None:
    """(session id, probe id or None) that an asset path names, or None for another file."""
    m = _ASSET.search(path)
    if not m:
        return None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) else None)


def _page(reply: rma.Reply) -> dict:
    if reply.status != 200:
        raise DandiError(f"the DANDI listing {reply.url} answered HTTP {reply.status}")
    try:
        doc = reply.json()
    except ValueError:
        raise rma.TransientAnswer(f"not JSON: {reply.text[:120]!r}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise rma.TransientAnswer(f"not a page of assets: {reply.text[:120]!r}")
    return doc


def _asset(dandiset: str, version: str, row: Mapping) -> Asset:
    meta = row.get("metadata") or {}
    digest = meta.get("digest") or {}
    try:
        asset_id, path, size = str(row["asset_id"]), str(row["path"]), int(row["size"])
    except (KeyError, TypeError, ValueError):
        raise DandiError(
            f"dandiset {dandiset} version {version}: an asset row lacks asset_id, path or size: "
            f"{json.dumps(row)[:200]}"
        ) from None
    return Asset(
        dandiset=dandiset,
        version=version,
        path=path,
        asset_id=asset_id,
        size=size,
        sha256=digest.get(SHA256),
        dandi_etag=digest.get(ETAG),
    )


def fetch_listing(
    api_url: str,
    dandiset: str,
    version: str,
    *,
    policy: rma.RetryPolicy | None = None,
    page_size: int = PAGE_SIZE,
) -> list[Asset]:
    """Every asset of one dandiset version, with its digests (every page; retried like any
    metadata request; a server that repeats a page or never ends is refused)."""
    api_url = api_url.rstrip("/")
    policy = policy or rma.RetryPolicy()
    query = urlencode({"metadata": "true", "order": "path", "page_size": page_size})
    url: str | None = f"{api_url}/dandisets/{dandiset}/versions/{version}/assets/?{query}"
    assets: dict[str, Asset] = {}
    count = None
    for _ in range(MAX_PAGES):
        if url is None:
            break
        doc = rma.get_with_retries(
            url, _page, policy=policy, error=DandiError, what="DANDI listing"
        )
        count = doc.get("count") if count is None else count
        rows = doc["results"]
        new = [_asset(dandiset, version, row) for row in rows]
        if rows and all(a.asset_id in assets for a in new):
            raise DandiError(f"the DANDI listing {url} repeats a page already received")
        assets.update((a.asset_id, a) for a in new)
        url = doc.get("next") or None
    else:
        raise DandiError(f"the DANDI listing of {dandiset}/{version} has over {MAX_PAGES} pages")
    if isinstance(count, int) and count != len(assets):
        raise DandiError(
            f"the DANDI listing of {dandiset}/{version} announced {count} assets but listed "
            f"{len(assets)}"
        )
    return sorted(assets.values(), key=lambda a: a.path)


@dataclass(frozen=True)
class Listing:
    """The published files of some dandiset versions, by (session id, probe id or None)."""

    files: Mapping[tuple[int, int | None], Asset]

    def find(self, session_id: int, probe_id: int | None = None) -> Asset | None:
        return self.files.get((int(session_id), None if probe_id is None else int(probe_id)))

    @classmethod
    def of(cls, assets: Iterable[Asset]) -> Listing:
        files: dict[tuple[int, int | None], Asset] = {}
        for asset in assets:
            key = file_key(asset.path)
            if key is None:
                continue
            if key in files and files[key].sha256 != asset.sha256:
                raise DandiError(
                    f"DANDI lists session {key[0]}"
                    + (f" probe {key[1]}" if key[1] else "")
                    + f" twice with different digests: {files[key].path}, {asset.path}"
                )
            files[key] = asset
        return cls(files)


def listing_file(cache_dir: str | Path, dandiset: str, version: str) -> Path:
    return Path(cache_dir) / layout.DANDI_LISTING.format(dandiset=dandiset, version=version)


def load_listing(
    api_url: str,
    versions: Mapping[str, str],
    cache_dir: str | Path,
    *,
    policy: rma.RetryPolicy | None = None,
    keep: bool = True,
) -> Listing:
    """The listing of every ``dandiset: version`` pair: read from the cache directory when a
    published version was fetched before, else fetched and kept there (``keep=False``: in memory
    only; ``draft`` changes, so it is fetched every time and never kept)."""
    assets: list[Asset] = []
    for dandiset, version in sorted(versions.items()):
        path = listing_file(cache_dir, dandiset, version)
        if version != "draft" and path.is_file():
            try:
                rows = json.loads(path.read_text())["assets"]
                assets += [Asset(**row) for row in rows]
                continue
            except (ValueError, KeyError, TypeError):
                pass  # a damaged copy: fetch it again
        fetched = fetch_listing(api_url, dandiset, version, policy=policy)
        if keep and version != "draft":
            doc = {"dandiset": dandiset, "version": version, "assets": [asdict(a) for a in fetched]}
            atomic.write_json(path, doc)
        assets += fetched
    return Listing.of(assets)
