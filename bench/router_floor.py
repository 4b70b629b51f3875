"""A mitmdump script that only calls the ext_proc router, as a floor for the router's cost.

    BENCH_ROUTER_TARGET=127.0.0.1:PORT mitmdump -q -s bench/router_floor.py --mode reverse:...

For each request it opens one `ExternalProcessor.Process` stream on grpc.aio and sends the
request headers. After their reply it sends the buffered body, waits for that reply and
copies the headers it sets onto the request (the stand-in router sets its routing header
there). The stream is closed in a background task, as meterway does. These
are the benchmark config's processing modes (request headers sent, body buffered). It
routes, logs and prices nothing. So a gateway in mitmdump that makes the same call with this
client cannot be cheaper per request, and the benchmark compares meterway with it in the
same run. A failed call is logged as an error, and the benchmark marks the target failed when
its log has one, because a floor that does not reach the router would measure nothing.
Only the benchmark uses this script.
"""

from __future__ import annotations

import asyncio
import logging
import os

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from mitmproxy import http


# The benchmark looks for this text in the script's output.
ROUTER_CALL_FAILED = "router floor: the ext_proc call failed"


class RouterFloor:
    def __init__(self) -> None:
        self.stub: pb_grpc.ExternalProcessorStub | None = None
        self.closing: set[asyncio.Task] = set()

    def running(self) -> None:
        channel = grpc.aio.insecure_channel(os.environ["BENCH_ROUTER_TARGET"])
        self.stub = pb_grpc.ExternalProcessorStub(channel)

    async def request(self, flow: http.HTTPFlow) -> None:
        assert self.stub is not None
        outbox: asyncio.Queue[pb.ProcessingRequest | None] = asyncio.Queue()

        async def messages():
            while (message := await outbox.get()) is not None:
                yield message

        call = self.stub.Process(messages())
        request = flow.request
        headers = [base_pb2.HeaderValue(key=name.lower(), raw_value=value.encode())
                   for name, value in request.headers.items(multi=True)]
        headers += [base_pb2.HeaderValue(key=":method", raw_value=request.method.encode()),
                    base_pb2.HeaderValue(key=":path", raw_value=request.path.encode())]
        outbox.put_nowait(pb.ProcessingRequest(request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(headers=headers), end_of_stream=not request.raw_content)))
        try:
            await call.read()
            if request.raw_content:
                outbox.put_nowait(pb.ProcessingRequest(request_body=pb.HttpBody(
                    body=request.raw_content, end_of_stream=True)))
                reply = await call.read()
                if reply is not grpc.aio.EOF:
                    for option in reply.request_body.response.header_mutation.set_headers:
                        request.headers[option.header.key] = option.header.raw_value.decode()
        except grpc.aio.AioRpcError as error:
            # Fail open, as the benchmark's meterway config does, but leave a line for the benchmark.
            logging.error("%s: %s", ROUTER_CALL_FAILED, error.code().name)
        outbox.put_nowait(None)
        task = asyncio.get_running_loop().create_task(self._drain(call))
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    @staticmethod
    async def _drain(call) -> None:
        try:
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError:
            pass


addons = [RouterFloor()]
