"""The ext_proc gRPC server: Envoy's `ExternalProcessor` service on `grpc.aio`.

One gRPC stream carries one HTTP request. Every request message gets one response of the
matching kind; only a buffered request body is changed (routing header, model, usage option).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2

from meterway.router.engine import BodyResult, RouterEngine

logger = logging.getLogger(__name__)

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
# gRPC's default 4 MiB limit is below the request bodies a gateway buffers (agentgateway's
# maxBufferSize is often set to 32 MiB), and a buffered body travels in one message.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class StreamState:
    """The messages one stream has seen so far, kept only for the life of the stream."""

    headers_seen: bool = False
    method: str = ""
    path: str = ""
    body_chunks: int = 0
    body_done: bool = False
    result: BodyResult | None = None
    headers: dict[str, str] = field(default_factory=dict)


def header_option(key: str, value: str) -> base_pb2.HeaderValueOption:
    """Build a header that overwrites any existing value, sent as `raw_value` as Envoy expects."""
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=_OVERWRITE,
    )


def read_headers(message: pb.HttpHeaders) -> dict[str, str]:
    """Return the headers of a message as a dict with lowercase names (raw_value, else value)."""
    headers: dict[str, str] = {}
    for header in message.headers.headers:
        value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        headers[header.key.lower()] = value
    return headers


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):
    """Handles ext_proc streams, replying with the decisions of a RouterEngine."""

    def __init__(self, engine: RouterEngine) -> None:
        self.engine = engine

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProcessingResponse]:  # noqa: N802 (gRPC method name)
        """Send one response per message of one stream, in order."""
        state = StreamState()
        async for request in request_iterator:
            response = await self.handle(request, state)
            if response is not None:
                yield response

    async def handle(self, request: pb.ProcessingRequest, state: StreamState) -> pb.ProcessingResponse | None:
        """Build the response to one ProcessingRequest, or None for a message without a kind."""
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            return self._request_headers(request.request_headers, state)
        if kind == "request_body":
            return await self._request_body(request.request_body, state)
        if kind == "response_headers":
            return self._response_headers(request.response_headers, state)
        if kind == "response_body":
            return pb.ProcessingResponse(response_body=pb.BodyResponse())
        if kind == "request_trailers":
            return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
        if kind == "response_trailers":
            return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
        # NOTE: no response kind matches an empty message, so none is sent; the proxy's
        # message timeout then applies. Envoy does not send such messages.
        logger.warning("ignoring an ext_proc message with no request kind set")
        return None

    def _request_headers(self, message: pb.HttpHeaders, state: StreamState) -> pb.ProcessingResponse:
        if state.headers_seen:
            logger.debug("request headers sent twice on one stream; continuing unchanged")
            return pb.ProcessingResponse(request_headers=pb.HeadersResponse())
        state.headers_seen = True
        state.headers = read_headers(message)
        state.method = state.headers.get(":method", "").upper()
        state.path = state.headers.get(":path", "")

        if state.method == "GET" and state.path.split("?", 1)[0].rstrip("/") == "/v1/models":
            return self._models_response()
        return pb.ProcessingResponse(request_headers=pb.HeadersResponse())

    def _models_response(self) -> pb.ProcessingResponse:
        body = self.engine.models_listing()
        headers = pb.HeaderMutation(set_headers=[header_option("content-type", "application/json")])
        immediate = pb.ImmediateResponse(status=http_status_pb2.HttpStatus(code=http_status_pb2.OK), headers=headers, body=body)
        logger.debug("sent an immediate response to GET /v1/models (%d bytes)", len(body))
        return pb.ProcessingResponse(immediate_response=immediate)

    async def _request_body(self, message: pb.HttpBody, state: StreamState) -> pb.ProcessingResponse:
        unchanged = pb.ProcessingResponse(request_body=pb.BodyResponse())
        state.body_chunks += 1
        if not state.headers_seen or state.body_done:
            logger.debug("request body out of order on this stream; continuing unchanged")
            return unchanged
        if not message.end_of_stream or state.body_chunks > 1:
            # Streamed or partial bodies arrive in chunks. A chunk's response can only replace
            # that chunk, and headers can no longer change, so they pass unchanged.
            if message.end_of_stream:
                logger.info("request body arrived in %d chunks; set requestBodyMode to buffered so the router can route it", state.body_chunks)
            state.body_done = message.end_of_stream
            return unchanged

        state.body_done = True
        try:
            result = await self.engine.route_body(message.body, state.path or None)
        except Exception:
            # A router bug must not fail the user's request: the body passes unchanged.
            logger.exception("routing the request body for %s %s failed; continuing unchanged", state.method, state.path)
            return unchanged
        state.result = result
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=self._body_changes(result)))

    def _body_changes(self, result: BodyResult) -> pb.CommonResponse:
        set_headers = []
        remove_headers = []
        if result.header_value is not None:
            set_headers.append(header_option(self.engine.config.header, result.header_value))
        body_mutation = None
        if result.body is not None:
            # A changed body needs a matching content-length, or the proxy fails the request.
            remove_headers.append("content-length")
            set_headers.append(header_option("content-length", str(len(result.body))))
            body_mutation = pb.BodyMutation(body=result.body)
        return pb.CommonResponse(
            status=pb.CommonResponse.CONTINUE,
            header_mutation=pb.HeaderMutation(set_headers=set_headers, remove_headers=remove_headers),
            body_mutation=body_mutation,
            # The routing header changed, so the proxy must pick the route again.
            clear_route_cache=result.header_value is not None,
        )

    def _response_headers(self, message: pb.HttpHeaders, state: StreamState) -> pb.ProcessingResponse:
        result = state.result
        status = read_headers(message).get(":status", "")
        if result is None or result.header_value is None or not status.startswith("2"):
            return pb.ProcessingResponse(response_headers=pb.HeadersResponse())
        set_headers = [header_option("x-vsr-selected-model", result.header_value)]
        decision = result.decision
        if decision is not None:
            set_headers.append(header_option("x-vsr-selected-decision", decision.route or "default"))
            if decision.score is not None:
                set_headers.append(header_option("x-vsr-selected-confidence", f"{decision.score:.4f}"))
        common = pb.CommonResponse(header_mutation=pb.HeaderMutation(set_headers=set_headers))
        return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))


class RouterServer:
    """A grpc.aio server with the ext_proc service, bound to one address."""

    def __init__(self, engine: RouterEngine, listen: str) -> None:
        self.engine = engine
        self.listen = listen
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Embed the route examples, bind and start serving; return the bound port."""
        await self.engine.start()
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # gRPC sets SO_REUSEPORT by default, so a second router on the same port would
            # start silently and share the traffic; without it the bind fails visibly.
            ("grpc.so_reuseport", 0),
        ])
        pb_grpc.add_ExternalProcessorServicer_to_server(ExtProcServicer(self.engine), server)
        try:
            port = server.add_insecure_port(self.listen)
        except RuntimeError:
            # grpcio raises here in recent versions and returned 0 in older ones.
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {self.listen}: the address is in use or not local; pass another --listen HOST:PORT")
        await server.start()
        self._server = server
        self.port = port
        return port

    async def stop(self, grace: float = 2.0) -> None:
        """Stop accepting streams, let open ones finish for `grace` seconds, close the engine."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.engine.close()
