"""An optional password in front of every page, as HTTP basic auth.

Set with plugin config `{"plugins": {"meterway": {"password": ...}}}`; `meterway ui
--password` passes it through the environment variable `METERWAY_UI_PASSWORD`, so it never
appears in a file or a process list. Any user name is accepted. Without a password the
wrapper passes every request through unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from typing import Any

from datasette import hookimpl

logger = logging.getLogger(__name__)

PASSWORD_ENV = "METERWAY_UI_PASSWORD"
_REALM = b'Basic realm="meterway", charset="UTF-8"'


def password_matches(header: bytes | None, password: str) -> bool:
    """Check a basic-auth `authorization` header against the password in constant time."""
    if not header or not header[:6].lower() == b"basic ":
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    _, _, given = decoded.partition(b":")
    return hmac.compare_digest(given, password.encode("utf-8"))


async def _reject(send: Any) -> None:
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"www-authenticate", _REALM), (b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body",
                "body": b"This meterway UI needs a password: log in with any user name.\n"})


@hookimpl
def asgi_wrapper(datasette: Any) -> Any:
    """Wrap the app so that every HTTP request must carry the configured password."""

    def wrap(app: Any) -> Any:
        async def guarded(scope: dict, receive: Any, send: Any) -> None:
            config = datasette.plugin_config("meterway") or {}
            password = config.get("password")
            if scope.get("type") != "http" or not password:
                await app(scope, receive, send)
                return
            header = dict(scope.get("headers") or []).get(b"authorization")
            if not password_matches(header, str(password)):
                await _reject(send)
                return
            await app(scope, receive, send)

        return guarded

    return wrap
