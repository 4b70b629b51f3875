"""Turn benchmark results into Markdown tables, print them and rewrite the docs' results section."""

from __future__ import annotations

from pathlib import Path

from bench.stats import ratio

BEGIN = "<!-- BEGIN RESULTS: rewritten by `make bench`; edit the text outside these markers -->"
END = "<!-- END RESULTS -->"


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _get(results: dict, target: str, part: str, case: str) -> dict | None:
    entry = results["targets"].get(target) or {}
    return (entry.get(part) or {}).get(case)


def _litellm_peer(name: str) -> str:
    """Name the LiteLLM target with as many worker processes as target `name`."""
    return "litellm-2w" if name.endswith("-2w") else "litellm"


def plain_table(results: dict) -> list[str]:
    """Build the plain-request table: throughput, latency, proxy CPU and RSS, and ratios."""
    rows = []
    for name, entry in results["targets"].items():
        for case, r in (entry.get("plain") or {}).items():
            direct = _get(results, "direct", "plain", case)
            litellm = _get(results, _litellm_peer(name), "plain", case)
            mitm = _get(results, "mitmdump", "plain", case) if name.startswith("meterway") else None
            # Only one meterway process with its router is compared with the one-process floor.
            floor = _get(results, "mitmdump-router", "plain", case) if name == "meterway" else None
            rows.append([name, case, _num(r["rps"], 0), _num(r["p50_ms"], 2), _num(r["p99_ms"], 2), str(r["errors"]),
                         _num(r.get("probe_after_ms"), 0),
                         _num(r.get("cpu_ms_per_request"), 2), _num(r.get("rss_peak_mib"), 0),
                         _times(ratio(r["rps"], direct and direct["rps"])),
                         _times(ratio(r["rps"], litellm and litellm["rps"])),
                         _times(ratio(r["rps"], mitm and mitm["rps"])),
                         _times(ratio(r["rps"], floor and floor["rps"]))])
    return _table(["target", "conc.", "req/s", "p50 ms", "p99 ms", "errors", "probe after ms", "proxy CPU ms/req", "proxy RSS MiB",
                   "req/s vs direct", "req/s vs LiteLLM", "req/s vs mitmdump", "req/s vs router floor"], rows)


def stream_table(results: dict) -> list[str]:
    """Build the stream table: time to first byte, stream time, wall time and ratios of wall time."""
    rows = []
    for name, entry in results["targets"].items():
        for case, r in (entry.get("streams") or {}).items():
            direct = _get(results, "direct", "streams", case)
            litellm = _get(results, _litellm_peer(name), "streams", case)
            mitm = None
            if name.startswith("meterway"):
                mitm = _get(results, "mitmdump-stream", "streams", case) or _get(results, "mitmdump", "streams", case)
            rows.append([name, case, f"{r['ok']}/{r['streams']}", _num(r["ttfb_p50_ms"]), _num(r["ttfb_p99_ms"]),
                         _num(r["total_p50_ms"]), _num(r["total_max_ms"]), _num(r["wall_s"], 2), _num(r.get("cpu_s"), 2),
                         _times(ratio(r["wall_s"], direct and direct["wall_s"])),
                         _times(ratio(r["wall_s"], litellm and litellm["wall_s"])),
                         _times(ratio(r["wall_s"], mitm and mitm["wall_s"]))])
    return _table(["target", "case", "ok", "TTFB p50 ms", "TTFB p99 ms", "stream p50 ms", "stream max ms", "wall s",
                   "proxy CPU s", "wall vs direct", "wall vs LiteLLM", "wall vs mitmdump"], rows)


def status_lines(results: dict) -> list[str]:
    """List each target's description and whether it ran, with the rows meterway logged."""
    lines = []
    for name, entry in results["targets"].items():
        extra = ""
        if entry.get("logged_rows") is not None:
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(entry.get("router_outcomes", {}).items()))
            extra = f"; {entry['logged_rows']} rows logged (router outcomes: {outcomes})"
        started = f", started in {entry['startup_s']:.1f} s" if "startup_s" in entry else ""
        lines.append(f"- `{name}`: {entry['description']}: **{entry['status']}**{started}{extra}")
    return lines


def store_lines(store: dict) -> list[str]:
    """Describe the request log benchmark."""
    return [
        f"- {store['written']:,} rows written in {store['seconds']:.1f} s: **{store['rows_per_s']:,.0f} rows/s** "
        f"({store['dropped']} dropped, {store['failed']} failed; {store['db_bytes'] / 1048576:.0f} MiB file).",
        f"- Longest single `submit()` call on the event loop: {store['longest_submit_ms']:.2f} ms.",
        f"- Event loop lag (1 ms ticker), idle: p50 {_num(store['idle_lag_p50_ms'], 2)} ms, "
        f"p99 {_num(store['idle_lag_p99_ms'], 2)} ms, max {_num(store['idle_lag_max_ms'], 2)} ms; "
        f"while submitting: p50 {_num(store['lag_p50_ms'], 2)} ms, p99 {_num(store['lag_p99_ms'], 2)} ms, "
        f"max {_num(store['lag_max_ms'], 2)} ms.",
    ]


def memory_lines(memory: dict, bulk_mb: int) -> list[str]:
    """Describe the large-stream memory test."""
    if not memory.get("ok"):
        return [f"- The {bulk_mb} MB stream failed: {memory.get('error')}"]
    return [f"- {memory['bytes'] / 1048576:,.0f} MiB streamed through `meterway run` in {memory['seconds']:.1f} s "
            f"({_num(memory.get('mib_per_s'))} MiB/s, proxy CPU {_num(memory.get('cpu_s'))} s).",
            f"- Proxy RSS: start {_num(memory.get('rss_start_mib'))} MiB, peak {_num(memory.get('rss_peak_mib'))} MiB, "
            f"end {_num(memory.get('rss_end_mib'))} MiB."]


def profile_lines(profile: dict) -> list[str]:
    """Describe where the gateway's time goes per request, from the cProfile summary."""
    if "error" in profile:
        return [f"- {profile['error']}"]
    lines = [f"{profile['requests']:,} requests profiled at concurrency 10 "
             f"({_num(profile['rps_under_profiler'], 0)} req/s under cProfile); "
             f"{_num(profile['profiled_us_per_request'], 0)} µs of profiled main-thread time per request; "
             f"{_num(profile['addon_invocations_per_request'], 0)} addon hook invocations per request.", "",
             "By area (self time):", ""]
    lines += _table(["area", "µs/request", "share"],
                    [[a["area"], _num(a["us_per_request"], 0), f"{a['share']:.1%}"] for a in profile["areas"][:14]])
    lines += ["", "Hooks (cumulative time, including what they call):", ""]
    lines += _table(["hook", "calls", "µs/request"],
                    [[f"`{h['function']}`", f"{h['calls']:,}", _num(h["us_per_request"], 0)] for h in profile["hooks"][:12]])
    lines += ["", "Top functions by self time:", ""]
    lines += _table(["function", "calls", "µs/request", "share"],
                    [[f"`{f['function']}`", f"{f['calls']:,}", _num(f["us_per_request"], 1), f"{f['share']:.1%}"]
                     for f in profile["top_self"][:15]])
    return lines


def render(results: dict) -> str:
    """Render the whole results section as Markdown."""
    m = results["machine"]
    s = results["settings"]
    lines = [f"Run of {m['date']} ({results['preset']} preset, {results['elapsed_s']:.0f} s): {m['cores']} cores, "
             f"{m['cpu']}, Linux {m['kernel']}, load average {m['load_before']} before and "
             f"{results.get('load_after', '?')} after, Python {m['python']}, mitmproxy {m['mitmproxy']}, "
             f"LiteLLM {m['litellm'] or 'not installed'}, load from {s['load_client']}"
             f"{' (' + m['wrk'] + ')' if s['load_client'] == 'wrk' and m['wrk'] else ''}.", ""]
    lines += ["### Targets", ""] + status_lines(results)
    if any(e.get("plain") for e in results["targets"].values()):
        lines += ["", f"### Plain requests ({s['duration_s']:.0f} s per case)", ""] + plain_table(results)
    if any(e.get("streams") for e in results["targets"].values()):
        lines += ["", f"### Streams ({s['chunks']} chunks each; paced = {s['pace_ms']:.0f} ms between chunks)", ""]
        lines += stream_table(results)
    if "store" in results:
        lines += ["", "### Request log writer", ""] + store_lines(results["store"])
    if "memory" in results:
        lines += ["", f"### Memory: one {s['bulk_mb']} MB stream", ""] + memory_lines(results["memory"], s["bulk_mb"])
    if "profile" in results:
        lines += ["", "### Profile of `meterway run` (plain requests, router on)", ""] + profile_lines(results["profile"])
    return "\n".join(lines) + "\n"


def write_docs(path: Path, section: str) -> None:
    """Replace the text between the result markers of `path`, appending the markers if missing."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n\n{section}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
    path.write_text(text)
