"""The costlog addon: one row per flow in the request log, with usage and cost.

It times each flow, taps streamed responses as they pass, reads the provider's usage (or
estimates it), prices it from the catalog, and hands the row to the store's writer thread.
The event loop never waits on SQLite: `LogWriterProcess.submit` only enqueues, and a child
process writes the rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mitmproxy import http

from addons import record as flowrecord
from addons.config import Config
from addons import tokens
from addons.anthropic_translate import MessagesStreamToChat, error_to_openai, messages_to_chat
from addons.bodies import decode_body, strict_json
from addons.logpayload import PayloadSource
from addons.logrow import base_row, flow_states
from addons.pricing import PriceCatalog
from addons.redact import Redactor
from addons.retention import RetentionPolicy
from addons.store_process import LogWriterProcess
from addons.streamtap import StreamTap
from addons.usage import UsageTracker

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-meterway-request-id"
STREAM_TYPES = {"text/event-stream": "sse", "application/x-ndjson": "ndjson", "application/jsonl": "ndjson"}
# Bodies larger than this pass through as a stream, so memory stays flat for huge responses.
STREAM_OVER_BYTES = 4 * 1024 * 1024


class CostLog:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: LogWriterProcess | None = None
        self.catalog = PriceCatalog.load([])
        self.redactor = Redactor()
        self._taps: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[StreamTap, Any]] = weakref.WeakKeyDictionary()
        # Upstream bodies of translated responses, read for usage before translation.
        self._originals: weakref.WeakKeyDictionary[http.HTTPFlow, Any] = weakref.WeakKeyDictionary()
        # Called with each finished row on the event loop; each must be cheap and never raise.
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        # Given a flow whose response is about to stream, each returns a chunk observer or None.
        self.stream_observers: list[Callable[[http.HTTPFlow], Any]] = []
        # Rows whose token estimate waits for a tiktoken encoding to load, by encoding name.
        self._waiting: dict[str, list[tuple[_Estimate, dict, PayloadSource | None]]] = {}
        config.on_reload(self._reconfigure)

    def _reconfigure(self, gateway: Any) -> None:
        entries = gateway.config.model_catalog if gateway.config is not None else []
        inline = [entry.inline for entry in entries if entry.inline is not None]
        self.catalog = PriceCatalog.load(gateway.catalog_paths(), inline)
        self.redactor = Redactor(self.config.secrets)
        path = gateway.database_path()
        kept = gateway.meterway.retention
        # With several worker processes on one file, worker 0 alone deletes old rows.
        first_worker = self.config.worker[0] == 0
        retention = RetentionPolicy(kept.days, kept.max_database_bytes) if first_worker else RetentionPolicy()
        secrets = tuple(self.config.secrets)
        if self.store is not None and path is not None and Path(self.store.path) == path:
            self.store.set_retention(retention)
            self.store.set_secrets(secrets)
            return
        old, self.store = self.store, None
        if old is not None:
            old.stop()
        if path is not None:
            self.store = LogWriterProcess(path, retention=retention, secrets=secrets)
            self.store.start()
            logger.info("request log: %s", path)

    def done(self) -> None:
        # Rows still waiting for an encoding are finished here, loading it on this thread,
        # because at shutdown a short wait is better than losing them.
        for name in list(self._waiting):
            self._release(name)
        if self.store is not None:
            self.store.stop()
            stats = self.store.stats
            logger.info("request log closed: %s rows written, %s dropped, %s failed",
                        stats.written, stats.dropped, stats.failed)
            self.store = None

    def _max_bytes(self) -> int:
        return self.config.gateway.meterway.payloads.max_bytes

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        rec = flowrecord.get(flow)
        if rec is None or not flow.live or flow.response is None:
            return
        response = flow.response
        response.headers[REQUEST_ID_HEADER] = rec["id"]
        media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        kind = STREAM_TYPES.get(media)
        length = response.headers.get("content-length", "")
        if kind is None and not (length.isdigit() and int(length) > STREAM_OVER_BYTES):
            return  # a small JSON body: buffered and read in `response`
        translate = rec.get("translate") == "anthropic" and kind == "sse" and response.status_code < 400
        tracker = UsageTracker("messages" if translate else rec.get("api") or "other", rec.get("provider") or "openai")
        strip = bool(rec.get("usage_added")) and response.status_code < 400
        transform = None
        if translate:
            transform = MessagesStreamToChat(rec.get("routed_model"), bool(rec.get("client_usage")))
            response.headers.pop("content-length", None)
        tap = StreamTap(tracker, kind=kind or "raw", strip_usage=strip, max_bytes=self._max_bytes(),
                        transform=transform)
        for make_observer in self.stream_observers:
            observer = make_observer(flow)
            if observer is not None:
                tap.observers.append(observer)
        response.stream = tap
        self._taps[flow] = (tap, tracker)

    def response(self, flow: http.HTTPFlow) -> None:
        rec = flowrecord.get(flow)
        if rec is None or not flow.live:
            return
        if flow.response is not None and REQUEST_ID_HEADER not in flow.response.headers:
            flow.response.headers[REQUEST_ID_HEADER] = rec["id"]
        if rec.get("translate") == "anthropic" and flow.response is not None and flow not in self._taps:
            self._translate_body(flow, rec)
        self._finish(flow, rec)

    def _translate_body(self, flow: http.HTTPFlow, rec: dict[str, Any]) -> None:
        """Turn a buffered Anthropic response into an OpenAI chat completion for the client."""
        response = flow.response
        parsed = strict_json(response.get_content(strict=False))
        if not isinstance(parsed, dict):
            return
        self._originals[flow] = parsed
        if response.status_code < 400:
            converted = messages_to_chat(parsed, rec.get("routed_model"))
        else:
            converted = error_to_openai(parsed, response.status_code)
        response.headers.pop("content-encoding", None)
        response.content = json.dumps(converted).encode()

    def error(self, flow: http.HTTPFlow) -> None:
        rec = flowrecord.get(flow)
        if rec is None or not flow.live:
            return
        self._finish(flow, rec)

    def _finish(self, flow: http.HTTPFlow, rec: dict[str, Any]) -> None:
        if rec.get("logged"):
            return
        rec["logged"] = True
        estimate = None
        try:
            row, payload, estimate = self._build(flow, rec)
        except Exception:  # a bug here must not lose the flow's row entirely
            logger.exception("flow %s: building the log row failed; storing the basic row", flow.id)
            row, payload = base_row(rec), None
        if estimate is not None and not tokens.is_loaded(estimate.encoding):
            self._wait_for_encoding(estimate, row, payload)
            return
        if estimate is not None:
            self._apply_estimate(estimate, row)
        self._submit(row, payload)

    def _submit(self, row: dict[str, Any], payload: PayloadSource | None) -> None:
        if self.store is not None:
            self.store.submit(row, payload)
        for observe in self.observers:
            try:
                observe(row)
            except Exception:  # monitoring must never cost a request its row
                logger.exception("request %s: a row observer failed", row.get("id"))

    def _wait_for_encoding(self, estimate: _Estimate, row: dict[str, Any], payload: PayloadSource | None) -> None:
        """Park a row until its encoding is built in a thread, while the loop goes on."""
        name = estimate.encoding
        waiting = self._waiting.setdefault(name, [])
        waiting.append((estimate, row, payload))
        if len(waiting) > 1:
            return  # the load is already under way
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the event loop: nothing to keep responsive
            self._release(name)
            return

        def release_on_loop() -> None:
            try:
                loop.call_soon_threadsafe(self._release, name)
            except RuntimeError:  # the loop closed at shutdown, where done() finished the rows
                pass

        tokens.load_in_thread(name, release_on_loop)

    def _release(self, name: str) -> None:
        for estimate, row, payload in self._waiting.pop(name, []):
            self._apply_estimate(estimate, row)
            self._submit(row, payload)

    def _apply_estimate(self, estimate: _Estimate, row: dict[str, Any]) -> None:
        try:
            usage = estimate.tracker.estimate(estimate.request_obj, estimate.model)
        except tokens.EncodingDataError:  # the loader logged it, and the row's usage_source is none
            usage = None
        self._apply_usage(estimate.rec, row, usage)

    def _build(self, flow: http.HTTPFlow, rec: dict[str, Any]) -> tuple[dict, PayloadSource | None, _Estimate | None]:
        row = base_row(rec)
        response = flow.response
        tap, tracker = self._taps.pop(flow, (None, None))
        self._timings(flow, row, tap)
        self._status(flow, rec, row)

        client_state = flow.metadata.get(flowrecord.CLIENT_REQUEST_KEY)
        if not isinstance(client_state, dict):
            client_state = None  # rejected before the snapshot: the request is as the client sent it
        if tracker is None:
            tracker = UsageTracker(rec.get("api") or "other", rec.get("provider") or "openai")
        if response is not None and tap is None:
            decoded, _ = decode_body(response.raw_content or b"", response.headers.get("content-encoding"))
            parsed = strict_json(decoded)
            original = self._originals.pop(flow, None)
            if original is not None:
                tracker = UsageTracker("messages", "anthropic")
                if response.status_code < 400:
                    tracker.feed_json(original)
            elif parsed is not None and rec.get("upstream") and response.status_code < 400:
                tracker.feed_json(parsed)
            if row["outcome"] == "upstream_error" and not row["error"]:
                row["error"] = self.redactor.text(_error_message(parsed, response.status_code))

        estimate = self._usage_and_cost(rec, row, tracker, flow, client_state)
        payload = None
        if self.config.gateway.meterway.payloads.store:
            # Only state dicts are taken here; the log writer process builds the texts from them.
            streamed = bytes(tap.kept) if tap is not None else None
            state, upstream_request, received = flow_states(flow, client_state, streamed)
            payload = PayloadSource(
                flow_state=state, client_snapshot=client_state is not None,
                upstream_request=upstream_request if rec.get("upstream") else None, response=received,
                streamed=streamed, streamed_size=tap.total_bytes if tap is not None else 0,
                streamed_truncated=bool(tap is not None and tap.truncated), reply_text=tracker.text,
                max_bytes=self._max_bytes())
        return row, payload, estimate

    @staticmethod
    def _timings(flow: http.HTTPFlow, row: dict[str, Any], tap: StreamTap | None) -> None:
        start = flow.request.timestamp_start
        response = flow.response
        end = None
        if response is not None and response.timestamp_end:
            end = response.timestamp_end
        elif flow.error is not None:
            end = flow.error.timestamp
        row["duration_ms"] = round((end - start) * 1000, 3) if end else None
        first = tap.first_byte_at if tap is not None else None
        if first is None and response is not None and response.raw_content:
            # NOTE: for a buffered body mitmproxy keeps no first-byte time, so the time the
            # headers arrived is used instead.
            first = response.timestamp_start
        row["ttft_ms"] = round((first - start) * 1000, 3) if first else None

    def _status(self, flow: http.HTTPFlow, rec: dict[str, Any], row: dict[str, Any]) -> None:
        response = flow.response
        error = flow.error
        disconnected = error is not None and "client disconnected" in error.msg.lower()
        row["status"] = response.status_code if response is not None else None
        if error is not None and not (response is not None and response.stream):
            # A buffered response that failed was never sent: the client got mitmproxy's
            # error page instead (504 for the gateway's own timeout), or nothing at all.
            if disconnected:
                row["status"] = None
            elif rec.get("outcome") == "timeout":
                row["status"] = 504
            else:
                row["status"] = 502
        if rec.get("outcome"):
            row["outcome"] = rec["outcome"]
        elif disconnected:
            row["outcome"] = "client_disconnected"
        elif error is not None and ("timed out" in error.msg.lower() or "timeout" in error.msg.lower()):
            row["outcome"] = "timeout"
        elif error is not None and not _upstream_connected(flow):
            row["outcome"] = "upstream_unreachable"
        elif error is not None:
            # The upstream was reached but its response broke: reset, truncated or not HTTP.
            row["outcome"] = "upstream_error"
        elif response is not None and response.status_code >= 400:
            row["outcome"] = "upstream_error"
        else:
            row["outcome"] = "ok"
        if error is not None and not row.get("error"):
            row["error"] = self.redactor.text(f"{error.msg} (upstream {rec.get('upstream') or 'not chosen'})")
        if row["error"]:
            row["error"] = self.redactor.text(row["error"])

    def _usage_and_cost(self, rec: dict[str, Any], row: dict[str, Any], tracker: Any, flow: http.HTTPFlow,
                        client_state: dict[str, Any] | None) -> _Estimate | None:
        """Fill the usage and cost columns, or return the estimate they wait for."""
        usage = tracker.result()
        has_usage = usage is not None and usage.source == "provider"
        if not has_usage and row["outcome"] in ("ok", "client_disconnected") and rec.get("upstream") \
                and rec.get("api") in ("chat_completions", "responses", "messages", "generate_content", "ollama_chat"):
            return _Estimate(rec, tracker, strict_json(_client_body(flow, client_state)), rec.get("routed_model"))
        self._apply_usage(rec, row, usage)
        return None

    def _apply_usage(self, rec: dict[str, Any], row: dict[str, Any], usage: Any) -> None:
        if usage is not None:
            row["response_model"] = usage.response_model
            for field in ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
                          "reasoning_tokens"):
                row[field] = getattr(usage, field)
            row["total_tokens"] = usage.total_tokens
            row["usage_source"] = usage.source
        else:
            row["usage_source"] = "none"
        cost = self.catalog.price(rec.get("provider"), row.get("response_model") or rec.get("routed_model"),
                                  usage, local=bool(rec.get("local")), request_model=rec.get("routed_model"))
        for field in ("cost_usd", "cost_input_usd", "cost_output_usd", "cost_cache_read_usd",
                      "cost_cache_write_usd", "cost_status", "price_source"):
            row[field] = getattr(cost, field)


@dataclass
class _Estimate:
    """A token estimate that a row still needs: tiktoken counts for a reply without usage."""

    rec: dict[str, Any]
    tracker: UsageTracker
    request_obj: Any
    model: str | None

    @property
    def encoding(self) -> str:
        return tokens.encoding_for_model(self.model)


def _client_body(flow: http.HTTPFlow, client_state: dict[str, Any] | None) -> bytes:
    """Return the client's request body, decoded, from the snapshot or the live request."""
    if client_state is None:
        return decode_body(flow.request.raw_content or b"", flow.request.headers.get("content-encoding"))[0]
    encoding = next((value.decode("latin-1") for name, value in client_state["headers"]
                     if name.lower() == b"content-encoding"), None)
    return decode_body(client_state.get("content") or b"", encoding)[0]


def _upstream_connected(flow: http.HTTPFlow) -> bool:
    """Tell whether the flow's server connection was set up, TLS included for HTTPS."""
    server = flow.server_conn
    if server is None or server.timestamp_tcp_setup is None:
        return False
    return flow.request.scheme != "https" or server.timestamp_tls_setup is not None


def _error_message(body: Any, status: int) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return f"provider answered {status}: {error['message']}"
        if isinstance(error, str):
            return f"provider answered {status}: {error}"
    return f"provider answered {status}"
