"""Start Datasette on the request log with meterway's plugins (`meterway ui`)."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PASSWORD_ENV = "METERWAY_UI_PASSWORD"


def is_loopback(host: str) -> bool:
    """Tell whether a bind address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_metadata(password: str | None) -> dict:
    """Build Datasette metadata; the password is referenced by environment variable only."""
    if not password:
        return {}
    return {"plugins": {"meterway": {"password": {"$env": PASSWORD_ENV}}}}


def build_datasette_args(db_path: Path, *, host: str = "127.0.0.1", port: int = 15000,
                         metadata_path: Path | None = None) -> list[str]:
    """Build the `datasette serve` arguments for the live request log.

    The file is served as a normal (mutable) database, never with `-i`: immutable mode would
    let SQLite skip locking while the gateway is still writing. Datasette opens it with
    `mode=ro` for its queries, and no meterway page writes.
    """
    # Facet suggestions run one query per column on every Logs page view. On a large log
    # that costs seconds, and the useful facets are already set in the plugin's metadata.
    args = ["serve", str(db_path), "--host", host, "--port", str(port),
            "--setting", "suggest_facets", "off"]
    if metadata_path is not None:
        args += ["--metadata", str(metadata_path)]
    return args


def serve(db_path: Path, *, host: str = "127.0.0.1", port: int = 15000,
          password: str | None = None) -> int:
    """Serve the request log with Datasette until interrupted; return the exit code."""
    from datasette.cli import cli  # Imported late: loading Datasette's plugins takes a moment.

    if not is_loopback(host) and not password:
        print(f"Warning: the UI listens on {host} without a password, so anyone who can reach "
              "it reads every logged prompt; add --password or bind 127.0.0.1.", file=sys.stderr)
    db_path = Path(db_path)
    if not db_path.is_file():
        print(f"Error: request log {db_path} not found; start the gateway once to create it, "
              "or pass the path of an existing meterway database.", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="meterway-ui-") as folder:
        metadata_path = Path(folder) / "metadata.json"
        metadata_path.write_text(json.dumps(build_metadata(password)))
        if password:
            os.environ[PASSWORD_ENV] = password
        args = build_datasette_args(db_path, host=host, port=port, metadata_path=metadata_path)
        logger.info("starting Datasette on http://%s:%d/ for %s", host, port, db_path)
        try:
            cli.main(args=args, prog_name="meterway ui", standalone_mode=False)
        except KeyboardInterrupt:
            return 0
        except SystemExit as stop:
            return int(stop.code or 0)
    return 0
