"""The fault vocabulary of the stand-in server: which faults exist, their parameters, and how a
claimed set of faults mangles one response body. Shared by the warehouse/bucket routes
(``server.py``) and the DANDI routes (``dandi.py``).

A fault is ``{"kind", "match", "times", ...params}``: ``match`` is a substring of the request
target (for the DANDI listing faults: of the asset path), ``times`` counts down each time it is
applied (null = always).
"""

from __future__ import annotations

from typing import Any

# kind -> (required params, optional params)
FAULT_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "drop_after": (("bytes",), ()),  # send N body bytes, then reset the TCP connection (RST)
    "status": (("code",), ("retry_after", "body")),  # answer this status (default HTML body)
    "stall": (("after_bytes", "seconds"), ()),  # send N body bytes, sleep, then continue
    "short_body": (("bytes",), ()),  # true Content-Length, only N bytes, then close (FIN)
    "flip_byte": (("offset",), ()),  # XOR 0xFF the byte at this absolute file/body offset
    "wrong_length": (("content_length",), ()),  # lie in Content-Length, send the body, close
    "ignore_range": ((), ()),  # answer a Range request with 200 and the full body
    "bandwidth": (("bytes_per_second",), ()),  # pace this response's body
    "no_validators": ((), ()),  # omit ETag and Last-Modified
    "no_length": ((), ()),  # no Content-Length: the body ends when the connection closes
    "rma_error": ((), ("msg",)),  # RMA envelope success:false
    "rma_zero_rows": ((), ()),  # RMA envelope num_rows:0 with total_rows>0 (AllenSDK loops)
    "rma_total_rows": (("total_rows",), ()),  # the envelope claims this total_rows (rows true)
    # the first page again whatever start_row asks for, total_rows a lie (default 10**9)
    "rma_repeat_page": ((), ("total_rows",)),
    # change row ``index`` (default 0) of the page: ``set`` {dotted.key: value}, ``drop`` [keys]
    "rma_row": ((), ("index", "set", "drop")),
    # the DANDI stand-in's listing (fake/dandi.py); ``match`` is tested against the asset path
    "dandi_wrong_digest": ((), ()),  # both published digests of the matching assets are wrong
    "dandi_wrong_sha256": ((), ()),  # only dandi:sha2-256
    "dandi_wrong_etag": ((), ()),  # only dandi:dandi-etag
}
DANDI_KINDS = {"dandi_wrong_digest", "dandi_wrong_sha256", "dandi_wrong_etag"}
BODY_KINDS = {"drop_after", "stall", "short_body", "flip_byte", "bandwidth", "wrong_length"}
HEADER_KINDS = {"wrong_length"}  # the only body kind that also matters to HEAD
FILE_KINDS = {"ignore_range", "no_validators", "no_length"}
RMA_KINDS = {"rma_error", "rma_zero_rows", "rma_total_rows", "rma_repeat_page", "rma_row"}
REPEAT_PAGE_TOTAL_ROWS = 10**9  # what rma_repeat_page claims by default


def validate_faults(faults: Any) -> list[dict]:
    """Check a fault list (raises ValueError with a readable message)."""
    if isinstance(faults, dict):
        faults = [faults]
    if not isinstance(faults, list):
        raise ValueError("faults must be a JSON list of objects")
    out = []
    for i, f in enumerate(faults):
        if not isinstance(f, dict) or "kind" not in f:
            raise ValueError(f"fault #{i} must be an object with a 'kind'")
        kind = f["kind"]
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault #{i}: unknown kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        required, optional = FAULT_KINDS[kind]
        missing = [p for p in required if p not in f]
        if missing:
            raise ValueError(f"fault #{i} ({kind}) needs {', '.join(missing)}")
        extra = set(f) - set(required) - set(optional) - {"kind", "match", "times"}
        if extra:
            raise ValueError(f"fault #{i} ({kind}): unknown parameters {sorted(extra)}")
        for p in required:
            if kind != "status" and not (isinstance(f[p], int | float) and f[p] >= 0):
                raise ValueError(f"fault #{i} ({kind}): {p} must be a non-negative number")
        if kind == "status" and not (isinstance(f["code"], int) and 100 <= f["code"] <= 599):
            raise ValueError(f"fault #{i}: code must be an HTTP status 100-599")
        if kind == "status" and not isinstance(f.get("body") or "", str):
            raise ValueError(f"fault #{i}: body must be a string")
        if kind == "bandwidth" and f["bytes_per_second"] <= 0:
            raise ValueError(f"fault #{i}: bytes_per_second must be > 0")
        for p in ("total_rows", "index"):
            if p in f and not (isinstance(f[p], int) and not isinstance(f[p], bool) and f[p] >= 0):
                raise ValueError(f"fault #{i} ({kind}): {p} must be a non-negative integer")
        if not isinstance(f.get("set", {}), dict):
            raise ValueError(f"fault #{i} ({kind}): set must be an object {{dotted.key: value}}")
        drop = f.get("drop", [])
        if not (isinstance(drop, list) and all(isinstance(k, str) and k for k in drop)):
            raise ValueError(f"fault #{i} ({kind}): drop must be a list of dotted keys")
        times = f.get("times")
        if times is not None and not (isinstance(times, int) and times >= 0):
            raise ValueError(f"fault #{i}: times must be a non-negative integer or null")
        match = f.get("match", "")
        if not isinstance(match, str):
            raise ValueError(f"fault #{i}: match must be a string")
        g = dict(f)
        g["match"] = match
        g["times"] = times
        g["remaining"] = times
        out.append(g)
    return out


class BodyPlan:
    """How to mangle one response body, from the claimed faults."""

    def __init__(self, faults: list[dict]):
        self.drop_after = self.short_body = self.wrong_length = None
        self.stall: tuple[int, float] | None = None
        self.flips: set[int] = set()
        self.bandwidth: float | None = None
        self.ignore_range = self.no_validators = self.no_length = False
        for f in faults:
            k = f["kind"]
            if k == "drop_after":
                self.drop_after = int(f["bytes"])
            elif k == "short_body":
                self.short_body = int(f["bytes"])
            elif k == "wrong_length":
                self.wrong_length = int(f["content_length"])
            elif k == "stall":
                self.stall = (int(f["after_bytes"]), float(f["seconds"]))
            elif k == "flip_byte":
                self.flips.add(int(f["offset"]))
            elif k == "bandwidth":
                self.bandwidth = float(f["bytes_per_second"])
            elif k == "ignore_range":
                self.ignore_range = True
            elif k == "no_validators":
                self.no_validators = True
            elif k == "no_length":
                self.no_length = True
