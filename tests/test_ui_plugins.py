"""The Datasette plugins on a real request log written by `RequestStore`."""

from __future__ import annotations

import io
import json
import random
import sqlite3
import time
from pathlib import Path

import pytest
from datasette.app import Datasette
from mitmproxy import io as mitm_io
from mitmproxy.test import tflow

from addons.store import RequestStore
from datasette_plugins.cells import render_request_cell
from datasette_plugins.time_range import HOUR_MS

HOSTILE_PROMPT = '<script>alert("owned")</script><img src=x onerror=alert(1)>'
MODELS = [("MoM", "qwen2.5-coder:7b", "openai", 0.0), ("gpt-4o-mini", "gpt-4o-mini", "openai", 2e-6),
          ("claude-3-5-haiku", "claude-3-5-haiku", "anthropic", 4e-6),
          ("gemini-2.0-flash", "gemini-2.0-flash", "gcp.gemini", None)]


def _flow_blob(request_id: str) -> bytes:
    flow = tflow.tflow(resp=True)
    flow.metadata["meterway"] = {"id": request_id}
    buffer = io.BytesIO()
    mitm_io.FlowWriter(buffer).add(flow)
    return buffer.getvalue()


def _payload(request_id: str, prompt: str, answer: str, status: int) -> dict:
    body = {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": prompt}]}
    reply = {"choices": [{"message": {"role": "assistant", "content": answer, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": 1}"}}]}}]}
    headers = [["content-type", "application/json"], ["authorization", "[redacted]"]]
    return {
        "client_request": json.dumps({"method": "POST", "url": "http://127.0.0.1:3000/v1/chat/completions",
                                      "headers": headers, "body": json.dumps(body)}),
        "upstream_request": json.dumps({"method": "POST", "url": "https://api.example/v1/chat/completions",
                                        "headers": headers, "body": json.dumps(body)}),
        "response": json.dumps({"status": status, "headers": [], "body": json.dumps(reply)}),
        "request_bytes": 100, "response_bytes": 200, "truncated": 0,
        "flow": _flow_blob(request_id),
    }


def build_sample_log(path: Path, rows: int = 240, now_ms: int | None = None, seed: int = 7) -> list[dict]:
    """Write `rows` requests spread over the last 30 days through RequestStore; return them."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    store = RequestStore(path)
    store.start()
    written = []
    for index in range(rows):
        requested, routed, provider, price = MODELS[index % len(MODELS)]
        # Every fourth row lands in the last hour, so every preset has data.
        age = rng.randint(0, 50 * 60_000) if index % 4 == 0 else rng.randint(0, 30 * 24 * HOUR_MS - 1)
        started = now_ms - age
        status = rng.choice([200, 200, 200, 200, 429, 500, None])
        outcome = {200: "ok", 429: "upstream_error", 500: "upstream_error", None: "client_disconnected"}[status]
        tokens_in, tokens_out = rng.randint(10, 4000), rng.randint(1, 900)
        row = {
            "id": f"req{index:05d}", "started_ms": started, "duration_ms": float(rng.randint(40, 20000)),
            "ttft_ms": float(rng.randint(10, 900)), "status": status, "outcome": outcome,
            "route": rng.choice(["chat", "code"]), "provider": provider, "backend": provider,
            "api": "chat_completions", "client": rng.choice(["alice", "bob", None]), "stream": index % 2,
            "requested_model": requested, "routed_model": routed, "router_outcome": "ok",
            "input_tokens": tokens_in, "cached_input_tokens": tokens_in // 4, "output_tokens": tokens_out,
            "reasoning_tokens": tokens_out // 3, "total_tokens": tokens_in + tokens_out,
            "cost_usd": None if price is None else round((tokens_in + tokens_out) * price, 8),
            "cost_status": "unpriced" if price is None else "priced", "is_replay": 0,
        }
        prompt = HOSTILE_PROMPT if index == 0 else f"question {index} about widgets"
        store.submit(row, _payload(row["id"], prompt, f"answer {index}", status or 0),
                     (prompt, f"answer {index}"))
        written.append(row)
    store.stop()
    return written


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "meterway.db"
    build_sample_log(path)
    return path


@pytest.fixture
async def ds(log_path: Path) -> Datasette:
    datasette = Datasette([str(log_path)])
    await datasette.invoke_startup()
    return datasette


async def test_pages_answer_200(ds: Datasette) -> None:
    for path in ["/-/meterway", "/-/meterway?range=1h", "/-/meterway?range=7d&group=provider",
                 "/-/meterway?range=30d&group=status&measure=cost",
                 "/-/meterway?range=30d&group=client&measure=tokens&provider=openai",
                 "/-/meterway?from=2020-01-01&to=2030-01-01&tz=120",
                 "/meterway/requests", "/meterway/requests?_search=widgets",
                 "/-/meterway/request/req00001"]:
        response = await ds.client.get(path)
        assert response.status_code == 200, path


def _sql_totals(path: Path, start_ms: int, end_ms: int) -> dict[str, float]:
    conn = sqlite3.connect(path)
    calls, tokens, cost, errors = conn.execute(
        "SELECT count(*), sum(total_tokens), sum(cost_usd), sum(coalesce(outcome, '') <> 'ok') "
        "FROM requests WHERE started_ms >= ? AND started_ms < ?", (start_ms, end_ms)).fetchone()
    conn.close()
    return {"calls": calls, "tokens": tokens, "cost": cost, "errors": errors}


def _shown_total(html: str, label: str) -> str:
    marker = f'data-total="{label}"'
    section = html.split(marker, 1)[1]
    return section.split('class="mw-total-value">', 1)[1].split("</span>", 1)[0]


@pytest.mark.parametrize(("preset", "group"), [("1h", "model"), ("30d", "model"), ("30d", "client"),
                                               ("30d", "status"), ("7d", "route")])
async def test_analytics_totals_match_sql(ds: Datasette, log_path: Path, preset: str, group: str) -> None:
    from datasette_plugins.formatting import format_cost, format_count, format_percent
    from datasette_plugins.time_range import parse_range

    now_ms = int(time.time() * 1000)
    response = await ds.client.get(f"/-/meterway?range={preset}&group={group}")
    assert response.status_code == 200
    # The page computes its own "now"; redo the range the same way within the same hour.
    time_range = parse_range({"range": preset}, now_ms=now_ms)
    expected = _sql_totals(log_path, time_range.start_ms, time_range.end_ms)
    assert expected["calls"] > 0
    assert _shown_total(response.text, "Calls") == format_count(expected["calls"])
    assert _shown_total(response.text, "Tokens") == format_count(expected["tokens"])
    assert _shown_total(response.text, "Cost") == format_cost(expected["cost"])
    assert _shown_total(response.text, "Error rate") == format_percent(expected["errors"] / expected["calls"])
    assert "approximate" in response.text


async def test_analytics_draws_charts(ds: Datasette) -> None:
    response = await ds.client.get("/-/meterway?range=30d&group=provider")
    assert response.text.count('class="mw-chart"') == 4
    assert response.text.count('<rect class="bar"') > 10
    assert "/-/meterway/request/req" in response.text
    assert "anthropic" in response.text


async def test_analytics_filter_narrows_totals(ds: Datasette, log_path: Path) -> None:
    response = await ds.client.get("/-/meterway?range=30d&provider=anthropic")
    conn = sqlite3.connect(log_path)
    (count,) = conn.execute("SELECT count(*) FROM requests WHERE provider = 'anthropic'").fetchone()
    conn.close()
    assert _shown_total(response.text, "Calls") == f"{count:,}"


async def test_analytics_empty_range(ds: Datasette) -> None:
    response = await ds.client.get("/-/meterway?from=2001-01-01&to=2001-01-02")
    assert response.status_code == 200
    assert "No requests in this range" in response.text


async def test_analytics_empty_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    datasette = Datasette([str(empty)])
    response = await datasette.client.get("/-/meterway")
    assert response.status_code == 200
    assert "No request log yet" in response.text


async def test_analytics_fresh_log_without_rows(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    store = RequestStore(path)
    store.start()
    store.stop()
    datasette = Datasette([str(path)])
    for preset in ("1h", "24h", "30d"):
        response = await datasette.client.get(f"/-/meterway?range={preset}")
        assert response.status_code == 200
        assert "No requests in this range" in response.text


async def test_analytics_bad_range_is_explained(ds: Datasette) -> None:
    response = await ds.client.get("/-/meterway?from=yesterday")
    assert response.status_code == 400
    assert "is not a date or time" in response.text


async def test_root_redirects_to_analytics(ds: Datasette) -> None:
    response = await ds.client.get("/")
    assert response.status_code == 302
    assert response.headers["location"] == "/-/meterway"


def test_render_cell_formats() -> None:
    row = {"routed_model": "qwen2.5-coder:7b", "cached_input_tokens": 300, "reasoning_tokens": 0}
    assert str(render_request_cell(row, "MoM", "requested_model", "")) == "MoM → qwen2.5-coder:7b"
    assert render_request_cell({"routed_model": "MoM"}, "MoM", "requested_model", "") is None
    assert "mw-status-5xx" in render_request_cell(row, 502, "status", "")
    assert "mw-status-none" in render_request_cell(row, None, "status", "")
    assert "1.50 s" in render_request_cell(row, 1500.0, "duration_ms", "")
    assert "850 ms" in render_request_cell(row, 850.0, "ttft_ms", "")
    assert "$0.0123" in render_request_cell(row, 0.0123, "cost_usd", "")
    assert "unpriced" in render_request_cell(row, None, "cost_usd", "")
    assert "1,200" in render_request_cell(row, 1200, "input_tokens", "")
    assert "300 cached" in render_request_cell(row, 1200, "input_tokens", "")
    assert "reasoning" not in render_request_cell(row, 50, "output_tokens", "")
    link = render_request_cell(row, "a<b", "id", "/-/meterway/request/a<b")
    assert str(link) == '<a href="/-/meterway/request/a&lt;b">a&lt;b</a>'


async def test_logs_table_uses_render_cell(ds: Datasette) -> None:
    response = await ds.client.get("/meterway/requests")
    assert response.status_code == 200
    assert 'href="/-/meterway/request/req' in response.text
    assert "MoM → qwen2.5-coder:7b" in response.text
    assert "mw-status-2xx" in response.text
    assert "meterway.js" in response.text


async def test_logs_facets_sort_and_search(ds: Datasette) -> None:
    data = (await ds.client.get("/meterway/requests.json?_shape=objects&_extra=facet_results")).json()
    started = [row["started_ms"] for row in data["rows"]]
    assert started == sorted(started, reverse=True)
    facets = (await ds.client.get("/meterway/requests.json")).json()["facet_results"]
    assert {"status", "outcome", "provider", "routed_model", "is_replay"} <= set(facets)
    found = (await ds.client.get("/meterway/requests.json?_search=widgets&_shape=objects")).json()
    assert found["filtered_table_rows_count"] == 239


async def test_request_page_escapes_prompt(ds: Datasette) -> None:
    response = await ds.client.get("/-/meterway/request/req00000")
    assert response.status_code == 200
    assert HOSTILE_PROMPT not in response.text
    assert "&lt;script&gt;alert(" in response.text
    assert "<img src=x" not in response.text
    for part in ("Client sent", "Gateway sent", "Provider returned", "mw-role-user",
                 "lookup", "Time to first byte", "Router outcome", "[redacted]"):
        assert part in response.text, part


async def test_request_page_unknown_id(ds: Datasette) -> None:
    response = await ds.client.get("/-/meterway/request/nope")
    assert response.status_code == 404


async def test_flow_download_reads_back(ds: Datasette) -> None:
    response = await ds.client.get("/-/meterway/request/req00003.mitm")
    assert response.status_code == 200
    assert "attachment" in response.headers["content-disposition"]
    flows = list(mitm_io.FlowReader(io.BytesIO(response.content)).stream())
    assert len(flows) == 1
    assert flows[0].metadata["meterway"]["id"] == "req00003"


async def test_mitm_renderer_exports_selection(ds: Datasette) -> None:
    response = await ds.client.get("/meterway/requests.mitm?provider__exact=anthropic&_size=max")
    assert response.status_code == 200
    flows = list(mitm_io.FlowReader(io.BytesIO(response.content)).stream())
    assert len(flows) == 60
    assert all(flow.metadata["meterway"]["id"].startswith("req") for flow in flows)


@pytest.mark.parametrize("name", ["cost_by_model_per_day", "errors_last_24h", "failed_open",
                                  "unpriced_models"])
async def test_canned_queries_run(ds: Datasette, name: str) -> None:
    response = await ds.client.get(f"/meterway/{name}.json?_shape=objects")
    assert response.status_code == 200, response.text
    rows = response.json()["rows"]
    if name == "unpriced_models":
        assert rows[0]["model"] == "gemini-2.0-flash"
        assert rows[0]["unpriced_requests"] == 60
    if name == "cost_by_model_per_day":
        assert rows


async def test_password_guards_every_page(log_path: Path) -> None:
    datasette = Datasette([str(log_path)], metadata={"plugins": {"meterway": {"password": "s3cret"}}})
    assert (await datasette.client.get("/-/meterway")).status_code == 401
    wrong = await datasette.client.get("/-/meterway", auth=("any", "wrong"))
    assert wrong.status_code == 401
    right = await datasette.client.get("/-/meterway", auth=("any", "s3cret"))
    assert right.status_code == 200


def test_datasette_args_never_immutable(tmp_path: Path) -> None:
    from meterway.ui import build_datasette_args

    args = build_datasette_args(tmp_path / "log.db", metadata_path=tmp_path / "m.json")
    assert args[:2] == ["serve", str(tmp_path / "log.db")]
    assert "-i" not in args
    assert "--immutable" not in args
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert args[args.index("--port") + 1] == "15000"


def test_serve_reports_missing_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from meterway.ui import serve

    assert serve(tmp_path / "missing.db", host="0.0.0.0") == 2
    err = capsys.readouterr().err
    assert "not found" in err
    assert "without a password" in err


def test_loopback_hosts_and_secret_metadata() -> None:
    from meterway.ui import build_metadata, is_loopback

    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert "s3cret" not in json.dumps(build_metadata("s3cret"))


def _seconds(shown: str) -> float:
    number, unit = shown.split()
    return float(number.replace(",", "")) / (1000 if unit == "ms" else 1)


async def test_p95_close_to_exact(ds: Datasette, log_path: Path) -> None:
    from datasette_plugins.time_range import parse_range

    time_range = parse_range({"range": "30d"})
    conn = sqlite3.connect(log_path)
    durations = [d for (d,) in conn.execute(
        "SELECT duration_ms FROM requests WHERE started_ms >= ? AND started_ms < ? ORDER BY duration_ms",
        (time_range.start_ms, time_range.end_ms))]
    conn.close()
    exact = durations[int(0.95 * len(durations)) - 1] / 1000
    response = await ds.client.get("/-/meterway?range=30d")
    shown = _seconds(_shown_total(response.text, "p95 latency"))
    # Histogram buckets are about 10% wide, so the estimate lands within that of the exact value.
    assert abs(shown - exact) / exact < 0.12


async def test_bucket_cache_matches_direct_sum(ds: Datasette) -> None:
    from datasette_plugins import range_cache

    db = ds.get_database("meterway")
    end = (int(time.time() * 1000) // HOUR_MS + 1) * HOUR_MS
    start = end - 30 * 24 * HOUR_MS - 5 * HOUR_MS
    day = 24 * HOUR_MS
    buckets = list(range(start // day * day, end, day))
    future = end + 10 * day
    range_cache._cache.clear()

    def totals(groups: list) -> dict:
        found: dict = {}
        for dims, sums, hist in groups:
            old_sums, old_hist = found.get(dims, ([0] * len(sums), []))
            found[dims] = ([round(a + b, 9) for a, b in zip(old_sums, sums)],
                           range_cache.sum_hists([old_hist, hist]))
        return found

    direct = totals(await range_cache.read_groups(db, start, end))
    first = await range_cache.bucket_groups(db, start, end, buckets, day, now_ms=future)
    assert len(range_cache._cache) >= len(buckets)
    second = await range_cache.bucket_groups(db, start, end, buckets, day, now_ms=future)
    assert totals([g for _, groups in first for g in groups]) == direct
    assert totals([g for _, groups in second for g in groups]) == direct
    assert first[0][0] == buckets[0]
    range_cache._cache.clear()


@pytest.fixture(scope="module")
def wide_log_path(log_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copy the sample log as schema version 3 wrote it: without the narrow summary tables."""
    path = tmp_path_factory.mktemp("wide") / "meterway.db"
    source = sqlite3.connect(log_path)
    target = sqlite3.connect(path)
    source.backup(target)
    source.close()
    target.execute("DROP TABLE rollup_dimension_hour")
    target.execute("DROP TABLE rollup_latency_hour")
    target.commit()
    target.close()
    return path


def _comparable(data: Any) -> dict[str, Any]:
    """Round the floats of an Analytics result, which the two sources add in another order."""
    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 6)
        if isinstance(value, dict):
            return {key: rounded(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [rounded(item) for item in value]
        return value
    fields = ("totals", "buckets", "series", "errors_per_bucket", "breakdown", "overall_latency",
              "options")
    found = {name: rounded(getattr(data, name)) for name in fields}
    # Models with equal request counts, and requests with equal costs, may come in another order.
    found["latency"] = sorted(rounded(data.latency))
    found["most_expensive"] = [row["cost_usd"] for row in data.most_expensive]
    found["slowest"] = [row["duration_ms"] for row in data.slowest]
    return found


@pytest.mark.parametrize("group", ["model", "provider", "route", "client", "status"])
async def test_narrow_tables_agree_with_rollup(log_path: Path, wide_log_path: Path, group: str) -> None:
    from datasette_plugins import narrow_reads, range_cache
    from datasette_plugins.analytics_data import Query, load_analytics
    from datasette_plugins.time_range import parse_range

    narrow_ds, wide_ds = Datasette([str(log_path)]), Datasette([str(wide_log_path)])
    narrow_db, wide_db = narrow_ds.get_database("meterway"), wide_ds.get_database("meterway")
    assert await narrow_reads.has_narrow_tables(narrow_db)
    assert not await narrow_reads.has_narrow_tables(wide_db)
    for preset, offset, measure in (("30d", "0", "requests"), ("7d", "330", "cost"), ("24h", "-480", "tokens")):
        query = Query(parse_range({"range": preset, "tz": offset}), group, measure)
        narrow = await load_analytics(narrow_db, query)
        wide = await load_analytics(wide_db, query)
        assert narrow.totals["requests"] > 0
        assert _comparable(narrow) == _comparable(wide), (preset, offset)
    range_cache._cache.clear()


@pytest.mark.parametrize("filters", [{"client": "alice"}, {"client": ""}, {"status": "5xx"},
                                     {"provider": "openai", "route": "chat"}])
async def test_filtered_sources_agree(log_path: Path, wide_log_path: Path, filters: dict) -> None:
    """Filters read only matching rollup_hour rows, and the menus from the narrow table."""
    from datasette_plugins import range_cache
    from datasette_plugins.analytics_data import Query, load_analytics
    from datasette_plugins.time_range import parse_range

    range_cache._cache.clear()
    narrow_db = Datasette([str(log_path)]).get_database("meterway")
    wide_db = Datasette([str(wide_log_path)]).get_database("meterway")
    query = Query(parse_range({"range": "30d", "tz": "60"}), "model", "cost", filters)
    narrow = await load_analytics(narrow_db, query)
    wide = await load_analytics(wide_db, query)
    assert narrow.totals["requests"] > 0
    assert _comparable(narrow) == _comparable(wide)
    assert len(narrow.options["client"]) == 3
    range_cache._cache.clear()


async def test_filtered_view_reads_rollup_hour(log_path: Path) -> None:
    from datasette_plugins import range_cache
    from datasette_plugins.analytics_data import Query, load_analytics
    from datasette_plugins.time_range import parse_range

    range_cache._cache.clear()
    db = Datasette([str(log_path)]).get_database("meterway")
    query = Query(parse_range({"range": "30d"}), "model", "requests", {"client": "alice"})
    data = await load_analytics(db, query)
    conn = sqlite3.connect(log_path)
    (count,) = conn.execute("SELECT count(*) FROM requests WHERE client = 'alice' AND started_ms >= ? "
                            "AND started_ms < ?", (query.time_range.start_ms, query.time_range.end_ms)).fetchone()
    conn.close()
    assert data.totals["requests"] == count
    # The top lists walk their indexes, so only rollup_hour groups are kept.
    assert {key[0] for key in range_cache._cache} == {"groups"}
    conn = sqlite3.connect(log_path)
    expected = [value for (value,) in conn.execute(
        "SELECT cost_usd FROM requests WHERE client = 'alice' AND started_ms >= ? AND started_ms < ? "
        "AND cost_usd IS NOT NULL ORDER BY cost_usd DESC LIMIT 10",
        (query.time_range.start_ms, query.time_range.end_ms))]
    conn.close()
    assert [row["cost_usd"] for row in data.most_expensive] == expected
    range_cache._cache.clear()


@pytest.mark.parametrize(("order", "index"), [("cost_usd", "idx_requests_cost_usd"),
                                               ("duration_ms", "idx_requests_duration_ms")])
async def test_top_lists_walk_their_index(log_path: Path, order: str, index: str) -> None:
    from datasette_plugins.narrow_reads import top_by_index, top_sql
    from datasette_plugins.range_cache import TOP_COLUMNS
    from datasette_plugins.time_range import parse_range

    time_range = parse_range({"range": "30d"})
    bounds = {"lo": time_range.start_ms, "hi": time_range.end_ms}
    conn = sqlite3.connect(log_path)
    plan = " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + top_sql(order, "id", 10), bounds))
    expected = [value for (value,) in conn.execute(
        f"SELECT {order} FROM requests WHERE started_ms >= :lo AND started_ms < :hi "
        f"AND {order} IS NOT NULL ORDER BY {order} DESC LIMIT 10", bounds)]
    conn.close()
    assert f"USING INDEX {index}" in plan
    assert "TEMP B-TREE" not in plan
    db = Datasette([str(log_path)]).get_database("meterway")
    found = await top_by_index(db, time_range.start_ms, time_range.end_ms, order, TOP_COLUMNS, 10)
    assert [row[order] for row in found] == expected


async def test_warmup_only_for_files_without_narrow_tables(ds: Datasette, wide_log_path: Path) -> None:
    from datasette_plugins import range_cache, warmup

    range_cache._cache.clear()
    await warmup.warm(ds.get_database("meterway"))
    # The presets read the narrow tables, which the cache does not keep.
    assert range_cache._cache == {}
    await warmup.warm(Datasette([str(wide_log_path)]).get_database("meterway"))
    assert {key[0] for key in range_cache._cache} == {"groups", "top"}
    assert len(range_cache._cache) > 30
    range_cache._cache.clear()


def test_pieces_split_open_and_cut_buckets() -> None:
    from datasette_plugins.range_cache import _pieces

    day = 24 * HOUR_MS
    start, end = 10 * day + 5 * HOUR_MS, 13 * day + 2 * HOUR_MS + 1
    pieces = _pieces(start, end, [10 * day, 11 * day, 12 * day, 13 * day], day, now_ms=end)
    # The cut first day becomes 19 hours, two whole days stay whole, the open day 3 hours.
    assert len(pieces) == 19 + 2 + 3
    assert pieces[0] == (10 * day, start, start + HOUR_MS)
    assert (11 * day, 11 * day, 12 * day) in pieces
    assert pieces[-1] == (13 * day, 13 * day + 2 * HOUR_MS, end)
    covered = sum(hi - lo for _, lo, hi in pieces)
    assert covered == end - start
