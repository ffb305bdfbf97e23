"""A stand-in for api.brain-map.org and the public S3 bucket, served from a dataset directory.

Test and demo side only (docs/architecture.md §2). A real HTTP/1.1 server (standard library,
keep-alive) on a loopback address that speaks what the Allen service speaks
(docs/allen-warehouse.md §1, §3.3):

- ``GET /api/v2/data/query.json?criteria=...`` (or ``q=``): the RMA query API, own parser in
  :mod:`ecephys_pipeline.fake.rma`; envelope ``{"success", "id", "start_row", "num_rows",
  "total_rows", "msg"}``; errors are ``success: false`` with a string ``msg`` and HTTP 400.
- ``GET|HEAD /api/v2/well_known_file_download/<id>`` and ``//api/v2/...`` (what AllenSDK sends).
- ``GET|HEAD /visual-coding-neuropixels/ecephys-cache/<key>`` (virtual-hosted style) and
  ``/allen-brain-observatory/visual-coding-neuropixels/ecephys-cache/<key>`` (path style);
  ``GET /?list-type=2&prefix=...`` and ``/allen-brain-observatory?list-type=2...`` (ListObjectsV2).
- Control (never faulted, never logged): ``POST|GET|DELETE /_fake/faults``,
  ``GET|DELETE /_fake/requests``.

File responses stream from disk in chunks with ``Content-Length``, ``Accept-Ranges: bytes``,
``ETag``, ``Last-Modified``; ``Range`` (``N-``, ``N-M``, ``-S``) gives 206 + ``Content-Range``,
an unsatisfiable one 416 + ``Content-Range: bytes */size``; an ``If-Range`` that does not match
the current ETag / Last-Modified gives the full 200. Missing lazy files are generated with
``ecephys_pipeline.synth.ensure_session_nwb`` / ``ensure_lfp_nwb`` on first request.

S3 listing choice: a listing contains every key whose file exists or can be generated (one per
session/LFP WellKnownFile record); generatable files that fall into the returned page are
generated first, so ``Size`` and ``ETag`` are true. Narrow big lazy listings with ``prefix``,
``delimiter=/`` or ``max-keys``.

Faults (``set_faults`` / ``POST /_fake/faults``): each is ``{"kind", "match", "times", ...}``;
``match`` is a substring of the request target (tested against the target as sent and
percent-decoded; empty matches everything); ``times`` counts down each time the fault is applied
(null = always). See :data:`faults.FAULT_KINDS`. A HEAD request only consumes faults that
change headers.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape

from . import dandi as fake_dandi
from . import rma as fake_rma
from .faults import (
    BODY_KINDS,
    FILE_KINDS,
    HEADER_KINDS,
    REPEAT_PAGE_TOTAL_ROWS,
    RMA_KINDS,
    BodyPlan,
    validate_faults,
)
from .files import (
    BUCKET,
    S3_PREFIX,
    DatasetFiles,
    FileInfo,
    NotGeneratable,
    file_info,
    if_range_matches,
    parse_range,
    read_chunks,
)

# HTTP status of an RMA error envelope (success: false). UNCONFIRMED for the real service;
# AllenSDK ignores the status and reads the envelope, so only our own client can tell.
RMA_ERROR_STATUS = 400
REQUEST_LOG_MAX = 10_000
IDLE_TIMEOUT = 120  # seconds a keep-alive connection may sit idle
S3_MAX_KEYS = 1000
_WKF_ROUTE = "/api/v2/well_known_file_download/"
_RMA_ROUTE = "/api/v2/data/query."
_S3_ROUTE = "/" + S3_PREFIX
_S3_PATH_STYLE = f"/{BUCKET}/" + S3_PREFIX
_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
_DEFAULT_STATUS_BODY = (
    "<html><head><title>{code}</title></head><body><h1>{code} {reason}</h1></body></html>"
)


class _Abort(Exception):
    """Raised after the connection was deliberately reset; unwinds the handler quietly."""


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeWarehouse

    def handle_error(self, request, client_address):  # client hang-ups are not server errors
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError | _Abort | OSError):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class FakeWarehouse:
    """The fake service. ``with FakeWarehouse(dir) as fw: requests.get(fw.url + ...)``."""

    def __init__(self, dataset_dir, host: str = "127.0.0.1", port: int = 0, *, verbose=False):
        if not _is_loopback(host):
            raise ValueError(f"refusing to bind {host!r}: the fake warehouse serves loopback only")
        self.dataset_dir = Path(dataset_dir)
        if not self.dataset_dir.is_dir():
            raise FileNotFoundError(f"dataset directory {self.dataset_dir} does not exist")
        self.host = host
        self.port = port
        self.verbose = verbose
        self.store = fake_rma.Store(self.dataset_dir / "warehouse")
        self.files = DatasetFiles(self.dataset_dir, self.store)
        self._faults: list[dict] = []
        self._lock = threading.Lock()
        self._log: deque[dict] = deque(maxlen=REQUEST_LOG_MAX)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self._conns: set[socket.socket] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeWarehouse:
        if self._server is not None:
            return self
        cls = _Server6 if ":" in self.host else _Server
        server = cls((self.host, self.port), _Handler)
        server.fake = self
        self._server = server
        self.port = server.server_address[1]
        self.stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name=f"fake-warehouse-{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:  # wake handlers blocked on idle keep-alive connections
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeWarehouse:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- faults and log -------------------------------------------------------------------------

    def set_faults(self, faults: list[dict]) -> None:
        checked = validate_faults(faults)
        with self._lock:
            self._faults = checked

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = []

    @property
    def faults(self) -> list[dict]:
        with self._lock:
            return [dict(f) for f in self._faults]

    def claim_faults(self, targets: Iterable[str], kinds: set[str]) -> list[dict]:
        """Faults of ``kinds`` matching the request; each one's ``remaining`` counts down."""
        targets = list(targets)
        out = []
        with self._lock:
            for f in self._faults:
                if f["kind"] not in kinds:
                    continue
                if f["match"] and not any(f["match"] in t for t in targets):
                    continue
                if f["remaining"] is not None:
                    if f["remaining"] <= 0:
                        continue
                    f["remaining"] -= 1
                out.append(dict(f))
        return out

    @property
    def requests(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._log]

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(self, entry: dict) -> None:
        with self._lock:
            self._log.append(entry)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeAllenWarehouse/1.0"
    timeout = IDLE_TIMEOUT
    server: _Server

    # -- plumbing -------------------------------------------------------------------------------

    def setup(self):
        super().setup()
        with self.server.fake._lock:
            self.server.fake._conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.fake._lock:
                self.server.fake._conns.discard(self.connection)

    def handle(self):
        try:
            super().handle()
        except (_Abort, ConnectionError, TimeoutError):
            self.close_connection = True

    def log_message(self, format, *args):  # noqa: A002 - signature from BaseHTTPRequestHandler
        if self.server.fake.verbose:
            sys.stderr.write(f"fake_warehouse: {self.address_string()} {format % args}\n")

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    @property
    def fake(self) -> FakeWarehouse:
        return self.server.fake

    def _read_body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self._entry["status"] = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _simple(self, status: int, body: bytes | str, ctype: str, extra=None) -> None:
        data = body.encode() if isinstance(body, str) else body
        headers = {"Content-Type": ctype, "Content-Length": str(len(data))}
        headers.update(extra or {})
        self._start(status, headers)
        if self.command != "HEAD":
            self._entry["bytes_sent"] += len(data)
            self.wfile.write(data)

    def _json(self, status: int, obj: Any, plan: BodyPlan | None = None, extra=None) -> None:
        data = json.dumps(obj).encode()
        headers = {"Content-Type": "application/json; charset=utf-8"}
        headers.update(extra or {})
        self._send(status, headers, len(data), 0, _slices(data), plan or BodyPlan([]))

    # -- body sender with faults ------------------------------------------------------------------

    def _send(self, status, headers, length, offset0, chunks: Iterator[bytes], plan: BodyPlan):
        """Headers + body of ``length`` bytes whose first byte is at ``offset0`` of the source."""
        declared = length if plan.wrong_length is None else plan.wrong_length
        headers = {**headers, "Content-Length": str(declared)}
        if plan.no_length:  # HTTP/1.1 without a length: the body is delimited by the close
            del headers["Content-Length"]
            self.close_connection = True
        self._start(status, headers)
        if self.command == "HEAD":
            if plan.wrong_length is not None:
                self.close_connection = True
            return
        stop_at, mode = None, None
        if plan.drop_after is not None:
            stop_at, mode = min(plan.drop_after, length), "drop"
        if plan.short_body is not None and (stop_at is None or plan.short_body < stop_at):
            stop_at, mode = min(plan.short_body, length), "short"
        stall_at = plan.stall[0] if plan.stall else None
        sent = 0
        t0 = time.monotonic()
        try:
            if stall_at is not None and stall_at == 0:
                self._sleep(plan.stall[1])
                stall_at = None
            for chunk in chunks:
                if stop_at is not None and sent + len(chunk) > stop_at:
                    chunk = chunk[: stop_at - sent]
                if plan.flips:
                    chunk = _flip(chunk, offset0 + sent, plan.flips)
                pieces = [chunk]
                if stall_at is not None and sent < stall_at < sent + len(chunk):
                    cut = stall_at - sent
                    pieces = [chunk[:cut], None, chunk[cut:]]
                for piece in pieces:
                    if piece is None:
                        self._sleep(plan.stall[1])
                        stall_at = None
                        continue
                    sent = self._write(piece, sent, plan.bandwidth, t0)
                    if stall_at is not None and sent == stall_at:
                        self._sleep(plan.stall[1])
                        stall_at = None
                if stop_at is not None and sent >= stop_at:
                    break
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True
            return
        if mode == "drop":
            self._reset()
        if mode == "short" or plan.wrong_length is not None or sent < length:
            self.close_connection = True

    def _write(self, data: bytes, sent: int, bps: float | None, t0: float) -> int:
        if not bps:
            self._entry["bytes_sent"] += len(data)
            self.connection.sendall(data)
            return sent + len(data)
        step = max(1, min(64 * 1024, int(bps / 20)))
        for i in range(0, len(data), step):
            piece = data[i : i + step]
            self._entry["bytes_sent"] += len(piece)
            self.connection.sendall(piece)
            sent += len(piece)
            delay = t0 + sent / bps - time.monotonic()
            if delay > 0:
                self._sleep(delay)
        return sent

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up if the server is stopping."""
        self.fake.stopping.wait(seconds)

    def _reset(self) -> None:
        """Abort the TCP connection with RST after letting the sent bytes leave."""
        conn = self.connection
        deadline = time.monotonic() + 1.0
        try:
            import fcntl
            import termios

            while time.monotonic() < deadline:  # wait until the send queue is drained
                queued = struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, b"\0" * 4))
                if queued[0] == 0:
                    break
                time.sleep(0.005)
        except (ImportError, OSError, AttributeError):
            time.sleep(0.05)
        time.sleep(0.02)
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        for f in (self.wfile, self.rfile):
            try:
                f.close()
            except OSError:
                pass
        conn.close()
        self.close_connection = True
        raise _Abort()

    # -- routing --------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        parts = self.requestline.split()
        raw_target = parts[1] if len(parts) >= 2 else self.path
        raw_path, _, raw_query = raw_target.partition("?")
        # '//api/v2/...' is what AllenSDK requests (allen-warehouse.md §1.5)
        path = "/" + raw_path.lstrip("/")
        self._entry = {
            "time": time.time(),
            "method": self.command,
            "path": raw_path,
            "query": unquote(raw_query),
            "range": self.headers.get("Range"),
            "status": None,
            "bytes_sent": 0,
            "faults": [],
        }
        body = self._read_body() if self.command in ("POST", "PUT", "DELETE") else b""
        if path.startswith("/_fake/"):
            self._control(path, body)
            return
        self.fake._record(self._entry)  # logged now, completed in place as the response goes
        self._route(path, raw_query, raw_target)

    def _claim(self, kinds: set[str]) -> list[dict]:
        target = self._entry["path"] + ("?" + self._entry["query"] if self._entry["query"] else "")
        raw = self.requestline.split()[1] if len(self.requestline.split()) > 1 else self.path
        if self.command == "HEAD":
            kinds = kinds - (BODY_KINDS - HEADER_KINDS)
        faults = self.fake.claim_faults((raw, target), kinds)
        self._entry["faults"] += [f["kind"] for f in faults]
        return faults

    def _route(self, path: str, raw_query: str, raw_target: str) -> None:  # noqa: C901
        method = self.command
        status_faults = self._claim({"status"})
        if status_faults:
            f = status_faults[0]
            code = int(f["code"])
            reason = self.responses.get(code, ("Error",))[0]
            body = f.get("body") or _DEFAULT_STATUS_BODY.format(code=code, reason=reason)
            extra = {}
            if f.get("retry_after") is not None:
                extra["Retry-After"] = str(f["retry_after"])
            self._simple(code, body, "text/html; charset=utf-8", extra)
            return
        if path.startswith(_RMA_ROUTE):
            if method not in ("GET", "HEAD"):
                return self._not_allowed("GET, HEAD")
            return self._rma(path, raw_query)
        if path.startswith(_WKF_ROUTE):
            if method not in ("GET", "HEAD"):
                return self._not_allowed("GET, HEAD")
            return self._wkf(path[len(_WKF_ROUTE) :])
        if fake_dandi.handles(path):  # the DANDI Archive API and its blobs (fake/dandi.py)
            return fake_dandi.route(self, path, raw_query)
        params = dict(parse_qsl(raw_query, keep_blank_values=True))
        bucket_path = path.rstrip("/") in ("", f"/{BUCKET}")
        if bucket_path and "list-type" in params:
            if method not in ("GET", "HEAD"):
                return self._not_allowed("GET, HEAD")
            return self._s3_list(params)
        for prefix in (_S3_PATH_STYLE, _S3_ROUTE):
            if path.startswith(prefix):
                if method not in ("GET", "HEAD"):
                    return self._not_allowed("GET, HEAD")
                return self._s3_object(unquote(path[len(prefix) :]))
        if path.startswith(f"/{BUCKET}/") or path.startswith("/visual-coding-neuropixels/"):
            key = unquote(
                path[len(f"/{BUCKET}/") :] if path.startswith(f"/{BUCKET}/") else path[1:]
            )
            return self._s3_error(404, "NoSuchKey", "The specified key does not exist.", key)
        if bucket_path:
            return self._s3_error(
                501, "NotImplemented", "The fake bucket supports ListObjectsV2 (list-type=2) only."
            )
        self._simple(
            404,
            f"<html><body><h1>404 Not Found</h1><p>{escape(path)}</p></body></html>",
            "text/html; charset=utf-8",
        )

    def _not_allowed(self, allow: str) -> None:
        self._simple(405, "method not allowed\n", "text/plain", {"Allow": allow})

    # -- RMA ------------------------------------------------------------------------------------

    def _rma(self, path: str, raw_query: str) -> None:
        params = dict(parse_qsl(raw_query, keep_blank_values=True))
        fmt = path[len(_RMA_ROUTE) :]
        criteria = params.get("criteria", params.get("q"))
        faults = self._claim(BODY_KINDS | RMA_KINDS)
        plan = BodyPlan(faults)
        disposition = {"Content-Disposition": 'attachment; filename="query.json"'}
        if fmt != "json":
            env = fake_rma.error_envelope(f"unsupported format {fmt!r}: this service answers json")
            return self._json(RMA_ERROR_STATUS, env, extra=disposition)
        if criteria is None:
            env = fake_rma.error_envelope("missing query: pass criteria=model::<Model>,...")
            return self._json(RMA_ERROR_STATUS, env, extra=disposition)
        for f in faults:
            if f["kind"] == "rma_error":
                msg = f.get("msg") or "injected RMA error"
                return self._json(RMA_ERROR_STATUS, fake_rma.error_envelope(msg), plan, disposition)
        env = fake_rma.run(self.fake.store, criteria, params)
        if not env["success"]:
            return self._json(RMA_ERROR_STATUS, env, extra=disposition)
        self._json(
            200, _rma_faulted(env, faults, self.fake.store, criteria, params), plan, disposition
        )

    # -- files ----------------------------------------------------------------------------------

    def _wkf(self, rest: str) -> None:
        wkf_id = rest.strip("/")
        wkf = self.fake.files.wkf(int(wkf_id)) if wkf_id.isdigit() else None
        target = self.fake.files.wkf_target(wkf) if wkf is not None else None
        if target is None:
            return self._simple(
                404,
                f"<html><body><h1>404 Not Found</h1><p>no well known file {escape(wkf_id)}</p>"
                "</body></html>",
                "text/html; charset=utf-8",
            )
        path, gen = target
        try:
            path = self.fake.files.ensure(path, gen)
        except NotGeneratable as exc:
            return self._simple(
                404,
                f"<html><body><h1>404 Not Found</h1><p>{escape(str(exc))}</p></body></html>",
                "text/html; charset=utf-8",
            )
        except Exception as exc:  # generation failed: say so, do not hang the client
            return self._simple(500, f"generating {path.name} failed: {exc}\n", "text/plain")
        extra = {"Content-Disposition": f'attachment; filename="{path.name}"'}
        self._file(file_info(path), extra, s3=False)

    def _file(self, info: FileInfo, extra: dict[str, str], *, s3: bool) -> None:
        plan = BodyPlan(self._claim(BODY_KINDS | FILE_KINDS))
        headers = {
            "Content-Type": "application/octet-stream" if not s3 else info.content_type,
            "Accept-Ranges": "bytes",
        }
        if not plan.no_validators:
            headers["ETag"] = info.etag
            headers["Last-Modified"] = info.last_modified
        headers.update(extra)
        rng = None
        if not plan.ignore_range and if_range_matches(self.headers.get("If-Range"), info):
            rng = parse_range(self.headers.get("Range"), info.size)
        if rng == "unsatisfiable":
            headers["Content-Range"] = f"bytes */{info.size}"
            if s3:
                body = _s3_error_xml(
                    "InvalidRange",
                    "The requested range is not satisfiable",
                    extra={
                        "RangeRequested": self.headers.get("Range", ""),
                        "ActualObjectSize": str(info.size),
                    },
                )
                headers["Content-Type"] = "application/xml"
            else:
                body = b"requested range not satisfiable\n"
                headers["Content-Type"] = "text/plain"
            headers.pop("Content-Disposition", None)
            return self._simple(416, body, headers.pop("Content-Type"), headers)
        if rng is None:
            start, length, status = 0, info.size, 200
        else:
            start, end = rng
            length, status = end - start + 1, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
        chunks = read_chunks(info.path, start, length) if self.command != "HEAD" else iter(())
        self._send(status, headers, length, start, chunks, plan)

    # -- S3 -------------------------------------------------------------------------------------

    def _s3_error(self, status: int, code: str, message: str, key: str | None = None) -> None:
        extra = {"Key": S3_PREFIX + key} if key is not None else {}
        body = _s3_error_xml(code, message, extra=extra)
        self._simple(
            status,
            body if self.command != "HEAD" else b"",
            "application/xml",
            {"x-amz-request-id": uuid.uuid4().hex[:16].upper()},
        )

    def _s3_object(self, key: str) -> None:
        entry = self.fake.files.s3_key(key)
        if entry is None:
            return self._s3_error(404, "NoSuchKey", "The specified key does not exist.", key)
        path, gen = entry
        try:
            if gen is not None:
                path = self.fake.files.ensure(path, gen)
            info = file_info(path)
        except (NotGeneratable, FileNotFoundError):
            return self._s3_error(404, "NoSuchKey", "The specified key does not exist.", key)
        except Exception as exc:
            return self._s3_error(500, "InternalError", f"generating {key} failed: {exc}")
        self._file(info, {"x-amz-request-id": uuid.uuid4().hex[:16].upper()}, s3=True)

    def _s3_list(self, params: dict[str, str]) -> None:
        if params.get("list-type") != "2":
            return self._s3_error(501, "NotImplemented", "Only ListObjectsV2 (list-type=2).")
        prefix = params.get("prefix", "")
        delimiter = params.get("delimiter", "")
        try:
            max_keys = min(int(params.get("max-keys", S3_MAX_KEYS)), S3_MAX_KEYS)
        except ValueError:
            return self._s3_error(400, "InvalidArgument", "max-keys must be an integer")
        token = params.get("continuation-token")
        after, skip_prefix = params.get("start-after", ""), ""
        if token is not None:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()).decode())
                after, skip_prefix = state["after"], state.get("skip_prefix", "")
            except (ValueError, KeyError, TypeError):
                return self._s3_error(400, "InvalidArgument", "The continuation token is invalid.")
        entries = {S3_PREFIX + k: v for k, v in self.fake.files.s3_entries().items()}
        contents: list[tuple[str, Any]] = []
        common: list[str] = []
        truncated = False
        last = None
        for key in sorted(entries):
            if not key.startswith(prefix) or key <= after:
                continue
            if skip_prefix and key.startswith(skip_prefix):
                continue
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    cp = key[: cut + len(delimiter)]
                    if common and common[-1] == cp:
                        continue
                    if len(contents) + len(common) >= max_keys:
                        truncated = True
                        break
                    common.append(cp)
                    last = (key, cp)
                    continue
            if len(contents) + len(common) >= max_keys:
                truncated = True
                break
            contents.append((key, entries[key]))
            last = (key, "")
        items = []
        for key, (path, gen) in contents:
            try:
                if gen is not None:
                    path = self.fake.files.ensure(path, gen)
                info = file_info(path)
            except (NotGeneratable, FileNotFoundError):
                continue  # not generatable after all: S3 would not have it either
            items.append(
                "<Contents>"
                f"<Key>{escape(key)}</Key>"
                f"<LastModified>{_iso(info.mtime_ns)}</LastModified>"
                f"<ETag>{escape(info.etag)}</ETag>"
                f"<Size>{info.size}</Size>"
                "<StorageClass>STANDARD</StorageClass>"
                "</Contents>"
            )
        xml = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<ListBucketResult xmlns="{_XMLNS}">',
            f"<Name>{BUCKET}</Name>",
            f"<Prefix>{escape(prefix)}</Prefix>",
        ]
        if token is not None:
            xml.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
        if "start-after" in params:
            xml.append(f"<StartAfter>{escape(params['start-after'])}</StartAfter>")
        xml.append(f"<KeyCount>{len(items) + len(common)}</KeyCount>")
        xml.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            xml.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        xml.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        if truncated and last is not None:
            state = {"after": last[0] if not last[1] else last[1], "skip_prefix": last[1]}
            nxt = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
            xml.append(f"<NextContinuationToken>{nxt}</NextContinuationToken>")
        xml += items
        xml += [f"<CommonPrefixes><Prefix>{escape(cp)}</Prefix></CommonPrefixes>" for cp in common]
        xml.append("</ListBucketResult>")
        data = "".join(xml).encode()
        plan = BodyPlan(self._claim(BODY_KINDS))
        self._send(200, {"Content-Type": "application/xml"}, len(data), 0, _slices(data), plan)

    # -- control --------------------------------------------------------------------------------

    def _control(self, path: str, body: bytes) -> None:
        method = self.command
        self._entry["status"] = None
        if path == "/_fake/faults":
            if method == "GET":
                return self._json(200, self.fake.faults)
            if method == "DELETE":
                self.fake.clear_faults()
                return self._json(200, {"ok": True, "faults": []})
            if method in ("POST", "PUT"):
                try:
                    self.fake.set_faults(json.loads(body.decode() or "null"))
                except (ValueError, UnicodeDecodeError) as exc:
                    return self._json(400, {"ok": False, "error": str(exc)})
                return self._json(200, {"ok": True, "faults": self.fake.faults})
            return self._not_allowed("GET, POST, PUT, DELETE")
        if path == "/_fake/requests":
            if method == "GET":
                return self._json(200, self.fake.requests)
            if method == "DELETE":
                self.fake.clear_requests()
                return self._json(200, {"ok": True})
            return self._not_allowed("GET, DELETE")
        self._simple(404, "unknown control route\n", "text/plain")


def _rma_faulted(env: dict, faults: list[dict], store, criteria: str, params: dict) -> dict:
    """The envelope as the RMA faults among ``faults`` mangle it."""
    for f in faults:
        kind = f["kind"]
        if kind == "rma_repeat_page":
            first = fake_rma.run(store, criteria, params, start_row=0)
            total = f.get("total_rows", REPEAT_PAGE_TOTAL_ROWS)
            env = {**first, "start_row": env["start_row"], "total_rows": total}
        elif kind == "rma_total_rows":
            env = {**env, "total_rows": f["total_rows"]}
        elif kind == "rma_row" and f.get("index", 0) < len(env["msg"]):
            rows = copy.deepcopy(env["msg"])
            row = rows[f.get("index", 0)]
            for key, value in (f.get("set") or {}).items():
                *parents, last = key.split(".")
                _dig(row, parents)[last] = value
            for key in f.get("drop") or []:
                *parents, last = key.split(".")
                node = row
                for k in parents:
                    node = node.get(k) if isinstance(node, dict) else None
                if isinstance(node, dict):
                    node.pop(last, None)
            env = {**env, "msg": rows}
        elif kind == "rma_zero_rows":
            env = {**env, "num_rows": 0, "msg": [], "total_rows": max(env["total_rows"], 1)}
    return env


def _dig(row: dict, keys: list[str]) -> dict:
    """The nested mapping at ``keys``, created where missing or not a mapping."""
    for key in keys:
        if not isinstance(row.get(key), dict):
            row[key] = {}
        row = row[key]
    return row


def _slices(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _flip(chunk: bytes, pos: int, offsets: set[int]) -> bytes:
    hits = [o - pos for o in offsets if pos <= o < pos + len(chunk)]
    if not hits:
        return chunk
    buf = bytearray(chunk)
    for i in hits:
        buf[i] ^= 0xFF
    return bytes(buf)


def _iso(mtime_ns: int) -> str:
    t = time.gmtime(mtime_ns // 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{(mtime_ns // 1_000_000) % 1000:03d}Z"


def _s3_error_xml(code: str, message: str, extra: dict[str, str] | None = None) -> bytes:
    fields = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in (extra or {}).items())
    rid = uuid.uuid4().hex[:16].upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>{fields}"
        f"<RequestId>{rid}</RequestId><HostId>fake-warehouse</HostId></Error>"
    ).encode()
