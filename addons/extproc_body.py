"""Body exchanges of an ext_proc session: awaited for buffered bodies, observe-only for streams."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from addons.extproc_mutations import HeaderEditor, apply_body_mutation
from addons.extproc_stream import ProcessStream, RouterFailure

if TYPE_CHECKING:
    from addons.extproc_session import ExtProcSession

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class BodyResult:
    """The router's reply to one body: the new body (None when unchanged) or an immediate reply."""

    body: bytes | None
    immediate: pb.ProcessingResponse | None = None


async def exchange_body(
    session: ExtProcSession, kind: str, body: bytes, mode: str, editor: HeaderEditor
) -> BodyResult:
    """Read the replies to a body already sent whole, and apply their mutations.

    `kind` is `request_body` or `response_body`. In `fullDuplexStreamed` the router may
    return the new body as `streamed_response` chunks, read until one has end_of_stream.
    Header mutations apply unless the mode is `streamed`, because in every other mode the
    gateway has not forwarded the headers of that message yet.
    """
    chunks: list[bytes] = []
    while True:
        reply = await session._expect(kind)
        if reply is None:
            return BodyResult(b"".join(chunks) if chunks else None)
        if reply.WhichOneof("response") == "immediate_response":
            return BodyResult(None, reply)

        common = getattr(reply, kind).response
        if mode != "streamed":
            editor.apply(common.header_mutation)
        mutation = common.body_mutation
        if mutation.WhichOneof("mutation") == "streamed_response":
            if mode != "fullDuplexStreamed":
                raise RouterFailure(
                    f"{kind} reply has a streamed_response, which is only valid in "
                    f"fullDuplexStreamed mode (the mode is {mode})",
                    "router_protocol_error",
                )
            chunks.append(mutation.streamed_response.body)
            if mutation.streamed_response.end_of_stream:
                return BodyResult(b"".join(chunks))
            continue
        if chunks:
            # A plain reply after streamed chunks ends the body that the chunks built.
            return BodyResult(b"".join(chunks))
        return BodyResult(apply_body_mutation(mutation, body))


def observe_chunk(session: ExtProcSession, chunk: bytes, end_of_stream: bool) -> None:
    """Queue a streamed response chunk for the router and start reading its replies in the background."""
    if session._finished or session._response_done:
        return
    mode = session._options.response_body_mode
    if mode == "none":
        return
    if mode in ("buffered", "bufferedPartial"):
        # NOTE: the held copy grows with the stream; it only feeds the router at the end.
        if session._held_body is None:
            session._held_body = bytearray()
        session._held_body += chunk
        if not end_of_stream:
            return
        chunk, session._held_body = bytes(session._held_body), None

    try:
        session._send(response_body=pb.HttpBody(body=chunk, end_of_stream=end_of_stream))
    except RouterFailure as failure:
        session._finished = True
        logger.warning("ext_proc router %s: cannot observe the response stream: %s",
                       session._client.target, failure.reason)
        return
    if end_of_stream:
        session._response_done = True
    if session._drain_task is None:
        session._drain_task = asyncio.get_running_loop().create_task(_drain(session, session._stream))


async def _drain(session: ExtProcSession, stream: ProcessStream) -> None:
    while True:
        try:
            reply = await stream.receive(timeout=None)
        except RouterFailure as failure:
            logger.debug("ext_proc router %s ended an observed stream: %s", session._client.target, failure.reason)
            return
        if reply is None:
            return
        kind = reply.WhichOneof("response")
        changes = kind == "immediate_response" or (
            kind == "response_body"
            and (reply.response_body.response.HasField("header_mutation")
                 or reply.response_body.response.HasField("body_mutation"))
        )
        if changes and not session._warned_observe:
            session._warned_observe = True
            logger.warning(
                "ext_proc router %s replied to a streamed response body with %s; the body of a "
                "stream is observe-only in meterway, so the reply was ignored",
                session._client.target, "an immediate response" if kind == "immediate_response" else "mutations",
            )


async def stop_drain(session: ExtProcSession, grace: float) -> None:
    """Let the background reader of an observed stream reach the end for up to `grace` seconds, then cancel it."""
    task = session._drain_task
    session._drain_task = None
    if task is None:
        return
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
