"""Runs in the dandi client's own virtualenv (.venv-dandi): DANDI's client judges the stand-in.

Usage: python dandi_oracle.py plan.json result.json

plan.json: {"api_url": "http://127.0.0.1:PORT/api", "dandisets": {"000021": "<version>", ...},
"page_size": N, "downloads": [{"dandiset", "version", "path", "out"}]}. For every dandiset it
lists the assets with ``DandiAPIClient`` (the client's own pagination: pages 2.. fetched in
parallel from the first page's ``count``), plainly and with ``metadata=true``, and for every
download runs ``dandi.download.download`` on the asset's
URL, which checks the published dandi-etag while it streams. result.json gets what the client
saw: versions, each asset's path/id/size/digests, and per download the client's progress
records (the ``checksum`` record says ok or differs), whether it raised, and the downloaded
file's sha256 and dandi-etag as DANDI's own code (``dandi.support.digests``) computes them.

Nothing here imports ecephys_pipeline: it only talks HTTP to the stand-in.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import sys
from pathlib import Path


def main(plan_path: str, result_path: str) -> None:
    from dandi import __version__ as dandi_version
    from dandi.dandiapi import DandiAPIClient, RemoteAsset
    from dandi.download import DownloadExisting, DownloadFormat, download
    from dandi.support.digests import get_digest

    plan = json.loads(Path(plan_path).read_text())
    api = plan["api_url"]
    out: dict = {"dandi_version": dandi_version, "dandisets": {}, "downloads": []}
    with DandiAPIClient(api_url=api) as client:
        client.page_size = plan.get("page_size")  # small: several pages, 2.. fetched in parallel
        for did, version in plan["dandisets"].items():
            ds = client.get_dandiset(did, version, lazy=False)
            versions = [v.identifier for v in ds.get_versions()]
            listed = list(ds.get_assets())  # the client's plain listing
            # the listing with metadata=true, read through the client's own asset model
            rows = client.paginate(f"{ds.version_api_path}assets/", params={"metadata": "true"})
            with_meta = {r["asset_id"]: RemoteAsset.from_data(ds, r) for r in rows}
            assets = []
            for a in listed:
                m = with_meta[a.identifier]
                assets.append(
                    {
                        "path": a.path,
                        "asset_id": a.identifier,
                        "size": a.size,
                        "blob": a.blob,
                        "dandi_etag": m.get_raw_digest("dandi:dandi-etag"),
                        "sha256": m.get_raw_digest("dandi:sha2-256"),
                        "content_size": m.get_raw_metadata()["contentSize"],
                        "download_url": a.base_download_url,
                        "content_url": m.get_content_url(),
                    }
                )
            out["dandisets"][did] = {
                "version": ds.version_id,
                "most_recent_published": ds.most_recent_published_version.identifier,
                "draft_asset_count": ds.draft_version.asset_count,
                "versions": versions,
                "asset_count": ds.version.asset_count,
                "size": ds.version.size,
                "assets": assets,
            }
    for d in plan["downloads"]:
        url = f"{api}/dandisets/{d['dandiset']}/versions/{d['version']}/assets/?path={d['path']}"
        outdir = Path(d["out"])
        outdir.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        error = None
        with contextlib.redirect_stdout(buf):
            try:
                download(
                    url,
                    outdir,
                    format=DownloadFormat.DEBUG,
                    existing=DownloadExisting.OVERWRITE,
                )
            except Exception as exc:  # the client raises after a failed checksum: record it
                error = f"{type(exc).__name__}: {exc}"
        records = [_record(line) for line in buf.getvalue().splitlines() if _is_record(line)]
        files = sorted(p for p in outdir.rglob(Path(d["path"]).name) if p.is_file())
        got = {
            "url": url,
            "error": error,
            "records": records,
            "files": [str(p) for p in files],
        }
        if files:
            got["sha256"] = get_digest(files[0], "sha256")
            got["dandi_etag"] = get_digest(files[0], "dandi-etag")
        out["downloads"].append(got)
    Path(result_path).write_text(json.dumps(out, indent=1, default=str))


def _is_record(line: str) -> bool:
    """The DEBUG format prints each progress record (a dict) with print(); keep those lines."""
    return line.startswith("{") and line.endswith("}")


def _record(line: str) -> dict | str:
    try:
        return ast.literal_eval(line)
    except (ValueError, SyntaxError):
        return line


if __name__ == "__main__":
    main(*sys.argv[1:3])
