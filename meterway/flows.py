"""Export logged requests as mitmproxy flow files (`meterway flow`), and read them back.

`payloads.flow` contains each request's flow as written by mitmproxy's `FlowWriter`, in the form
the client sent it and with credentials redacted. Such blobs concatenate into one valid
`.mitm` file, which `mitmweb -r FILE` and `meterway web --open ID` load.
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import exceptions, http
from mitmproxy import io as mitmio

logger = logging.getLogger(__name__)



class FlowExportError(Exception):
    """A logged request cannot be exported: unknown id, no stored flow, bad filter or database."""


@dataclass(frozen=True)
class StoredFlow:
    """One logged request's id and its flow in mitmproxy's file format."""

    request_id: str
    blob: bytes


class _EnvironWithPlaceholders(Mapping[str, str]):
    """The process environment, where every unset variable reads as a placeholder."""

    def __getitem__(self, name: str) -> str:
        return os.environ.get(name, "unset")

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


def log_path_of(config_path: Path) -> Path:
    """Find the request log of a gateway config without needing its keys.

    Exporting flows needs only `config.database.url`, so backend keys given as `$VAR` need
    not be set. NOTE: a database URL that itself uses an unset variable resolves to a wrong
    path, which `open_log` then reports as not found.
    """
    from addons.config_load import load_config

    path = load_config(config_path, environ=_EnvironWithPlaceholders()).database_path()
    if path is None:
        raise FlowExportError(f"config {config_path} names no request log; pass --db PATH")
    return path


def open_log(db_path: Path) -> sqlite3.Connection:
    """Open the request log read-only, so a `--where` condition cannot change it."""
    if not db_path.is_file():
        raise FlowExportError(f"request log {db_path} not found; pass --db PATH or --config CONFIG "
                              "of a gateway that has handled requests")
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)


def _select(conn: sqlite3.Connection, condition: str, params: Sequence[object]) -> list[tuple[str, bytes | None]]:
    # A LEFT JOIN keeps rows without a payloads row, so a missing flow gets its own message.
    sql = ("select r.id, p.flow from requests r left join payloads p on p.request_id = r.id "
           f"where {condition} order by r.started_ms, r.id")
    return list(conn.execute(sql, params))


def select_flows(db_path: Path, ids: Sequence[str] = (), where: str | None = None) -> list[StoredFlow]:
    """Read the stored flows of the given ids (in that order), then of the rows `where` selects.

    Raises FlowExportError naming each unknown id, each row without a stored flow (payload
    storage was off), an invalid condition, or an empty selection.
    """
    conn = open_log(db_path)
    try:
        found: dict[str, bytes | None] = {}
        if ids:
            marks = ", ".join("?" for _ in ids)
            found.update(_select(conn, f"r.id in ({marks})", list(ids)))
        selected: list[tuple[str, bytes | None]] = []
        if where:
            try:
                selected = _select(conn, f"({where})", ())
            except sqlite3.Error as err:
                raise FlowExportError(f"--where {where!r} is not a valid SQL condition on `requests` "
                                      f"(aliased r): {err}") from None
    except sqlite3.Error as err:
        raise FlowExportError(f"cannot read the request log {db_path}: {err}") from None
    finally:
        conn.close()

    unknown = [request_id for request_id in ids if request_id not in found]
    if unknown:
        raise FlowExportError(f"no request with id {', '.join(unknown)} in {db_path}; list ids with "
                              f"`sqlite3 {db_path} \"select id, started_at, outcome from requests order by "
                              "started_ms desc limit 20\"` or on the UI's Logs page")
    rows = [(request_id, found[request_id]) for request_id in dict.fromkeys(ids)]
    rows += [row for row in selected if row[0] not in found]
    if not rows:
        raise FlowExportError(f"--where {where!r} selects no request in {db_path}")
    missing = [request_id for request_id, blob in rows if not blob]
    if missing:
        raise FlowExportError(
            f"request {', '.join(missing)} has no stored flow, because payload storage was off "
            "(meterway.payloads.store: false) when it was logged; only requests logged with "
            "payloads on can be exported"
        )
    return [StoredFlow(request_id, bytes(blob)) for request_id, blob in rows if blob]


def write_flows(flows: Sequence[StoredFlow], output: Path) -> None:
    """Write the flows into one `.mitm` file, replacing it if it exists."""
    output.write_bytes(b"".join(stored.blob for stored in flows))


def default_output(ids: Sequence[str]) -> Path:
    """Name the output file: `ID.mitm` for one id, else `flows.mitm`."""
    return Path(f"{ids[0]}.mitm") if len(ids) == 1 else Path("flows.mitm")


def decode_flows(flows: Sequence[StoredFlow]) -> list[http.HTTPFlow]:
    """Turn stored flows back into mitmproxy flow objects; raise FlowExportError on a bad blob."""
    decoded: list[http.HTTPFlow] = []
    for stored in flows:
        try:
            items = list(mitmio.FlowReader(io.BytesIO(stored.blob)).stream())
        except exceptions.FlowReadException as err:
            raise FlowExportError(f"the stored flow of request {stored.request_id} cannot be read: {err}") from None
        decoded.extend(item for item in items if isinstance(item, http.HTTPFlow))
    return decoded
