"""Tests for pricing usage from catalogs and genai-prices' bundled data."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from genai_prices import data_snapshot

from addons.pricing import GENAI_PRICES_SOURCE, CatalogError, Cost, PriceCatalog
from addons.usage_model import Usage

BASE_COSTS = Path(__file__).parent.parent / "configs" / "base-costs.json"


def provider_usage(**counts: int) -> Usage:
    fields = {"input_tokens": 0, "cached_input_tokens": 0, "cache_write_tokens": 0,
              "output_tokens": 0, "reasoning_tokens": 0, **counts}
    return Usage(**fields, source="provider")


def write_catalog(path: Path, models: dict[str, Any], provider: str = "openai") -> Path:
    path.write_text(json.dumps({"providers": {provider: {"models": models}}}))
    return path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# --- the required cases ------------------------------------------------------------------

def test_openai_cached_prompt_cost(no_network: None) -> None:
    usage = provider_usage(input_tokens=2006, cached_input_tokens=1920, output_tokens=300)

    cost = PriceCatalog().price("openai", "gpt-4o-2024-08-06", usage)

    assert cost.cost_usd == pytest.approx(0.005615, abs=1e-12)
    assert cost.cost_input_usd == pytest.approx(86 * 2.5e-6)
    assert cost.cost_cache_read_usd == pytest.approx(1920 * 1.25e-6)
    assert cost.cost_output_usd == pytest.approx(300 * 10e-6)
    assert cost.cost_cache_write_usd == 0
    assert cost.cost_status == "priced"
    assert cost.price_source == GENAI_PRICES_SOURCE


def test_anthropic_cache_write_cost(no_network: None) -> None:
    usage = provider_usage(input_tokens=12307, cache_write_tokens=12304, output_tokens=550)

    cost = PriceCatalog().price("anthropic", "claude-3-7-sonnet", usage)

    assert cost.cost_usd == pytest.approx(0.054399, abs=1e-12)
    assert cost.cost_cache_write_usd == pytest.approx(12304 * 3.75e-6)
    assert cost.cost_input_usd == pytest.approx(3 * 3e-6)


def test_base_catalog_gives_same_required_costs() -> None:
    catalog = PriceCatalog.load([BASE_COSTS])
    openai_usage = provider_usage(input_tokens=2006, cached_input_tokens=1920, output_tokens=300)
    anthropic_usage = provider_usage(input_tokens=12307, cache_write_tokens=12304,
                                     output_tokens=550)

    openai_cost = catalog.price("openai", "gpt-4o-2024-08-06", openai_usage,
                                request_model="gpt-4o")
    anthropic_cost = catalog.price("anthropic", "claude-3-7-sonnet-20250219", anthropic_usage,
                                   request_model="claude-3-7-sonnet")

    assert openai_cost.cost_usd == pytest.approx(0.005615, abs=1e-12)
    assert openai_cost.price_source == "catalog:base-costs.json"
    assert anthropic_cost.cost_usd == pytest.approx(0.054399, abs=1e-12)


# --- rules -------------------------------------------------------------------------------

def test_local_costs_zero() -> None:
    cost = PriceCatalog().price("openai", "qwen2.5-coder:7b", provider_usage(input_tokens=9),
                                local=True)

    assert cost == Cost(0.0, 0.0, 0.0, 0.0, 0.0, cost_status="local", price_source="local")


@pytest.mark.parametrize("usage", [None, Usage(), Usage(source="none")])
def test_missing_usage_is_no_usage(usage: Usage | None) -> None:
    cost = PriceCatalog().price("openai", "gpt-4o", usage)

    assert cost.cost_status == "no_usage"
    assert cost.cost_usd is None


def test_unknown_model_is_unpriced_not_zero() -> None:
    cost = PriceCatalog().price("openai", "my-finetune-xyz", provider_usage(input_tokens=10))

    assert cost.cost_status == "unpriced"
    assert cost.cost_usd is None
    assert cost.price_source is None


def test_unknown_provider_is_unpriced() -> None:
    cost = PriceCatalog().price("custom", "gpt-4o", provider_usage(input_tokens=10))

    assert cost.cost_status == "unpriced"


def test_dated_model_wins_over_alias() -> None:
    usage = provider_usage(input_tokens=1_000_000, output_tokens=1_000_000)

    dated = PriceCatalog().price("openai", "gpt-4o-2024-05-13", usage, request_model="gpt-4o")
    alias = PriceCatalog().price("openai", "gpt-4o", usage)

    assert dated.cost_usd == pytest.approx(20.0)
    assert alias.cost_usd == pytest.approx(12.5)


def test_gemini_models_prefix_stripped() -> None:
    usage = provider_usage(input_tokens=15, output_tokens=1020, reasoning_tokens=661)

    cost = PriceCatalog().price("gcp.gemini", "models/gemini-2.5-flash", usage)

    assert cost.cost_usd == pytest.approx(15 * 0.3e-6 + 1020 * 2.5e-6)


def test_request_model_used_when_response_model_unknown() -> None:
    usage = provider_usage(input_tokens=1_000_000)

    cost = PriceCatalog().price("openai", "gpt-4o-mini-unknown-build", usage,
                                request_model="gpt-4o-mini")

    assert cost.cost_usd == pytest.approx(0.15)


@pytest.mark.parametrize(("provider", "model", "counts"), [
    ("openai", "gpt-4o-mini", {"input_tokens": 5000, "cached_input_tokens": 1024,
                               "output_tokens": 800}),
    ("openai", "o3-mini", {"input_tokens": 14746, "output_tokens": 1944,
                           "reasoning_tokens": 1360}),
    ("gcp.gemini", "gemini-2.5-pro", {"input_tokens": 250_000, "cached_input_tokens": 100_000,
                                      "output_tokens": 3000}),
    ("gcp.gemini", "gemini-2.5-pro", {"input_tokens": 150_000, "output_tokens": 3000}),
    ("anthropic", "claude-sonnet-4-5", {"input_tokens": 210_000, "cached_input_tokens": 5000,
                                        "cache_write_tokens": 10_000, "output_tokens": 1000}),
    ("anthropic", "claude-haiku-4-5", {"input_tokens": 9033, "cache_write_tokens": 4511,
                                       "output_tokens": 5}),
])
def test_parts_add_up_to_genai_total(provider: str, model: str, counts: dict[str, int]) -> None:
    genai_provider = {"openai": "openai", "gcp.gemini": "google", "anthropic": "anthropic"}
    usage = provider_usage(**counts)

    cost = PriceCatalog().price(provider, model, usage)
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=counts["input_tokens"],
                           cache_read_tokens=counts.get("cached_input_tokens", 0),
                           cache_write_tokens=counts.get("cache_write_tokens", 0),
                           output_tokens=counts["output_tokens"]),
        model, provider_id=genai_provider[provider]).total_price
    parts = (cost.cost_input_usd or 0) + (cost.cost_output_usd or 0) + (
        cost.cost_cache_read_usd or 0) + (cost.cost_cache_write_usd or 0)

    assert cost.cost_usd == pytest.approx(float(expected), abs=1e-12)
    assert parts == pytest.approx(cost.cost_usd, abs=1e-12)


def test_bundled_snapshot_is_used() -> None:
    PriceCatalog().price("openai", "gpt-4o", provider_usage(input_tokens=1))

    assert data_snapshot.get_snapshot().from_auto_update is False


# --- catalogs ----------------------------------------------------------------------------

def test_catalog_tiers_and_cache_rates(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "costs.json", {"big-model": {
        "rates": {"input": "1", "output": "4", "cacheRead": "0.1", "cacheWrite": "1.25"},
        "tiers": [{"contextOver": 200000, "rates": {"input": "2", "output": "8",
                                                    "cacheRead": "0.2"}},
                  {"contextOver": 100000, "rates": {"input": "1.5"}}]}})
    catalog = PriceCatalog.load([path])
    usage_small = provider_usage(input_tokens=50_000, cached_input_tokens=10_000,
                                 cache_write_tokens=20_000, output_tokens=1_000)
    usage_mid = provider_usage(input_tokens=150_000, output_tokens=1_000)
    usage_large = provider_usage(input_tokens=300_000, cached_input_tokens=100_000,
                                 cache_write_tokens=100_000, output_tokens=1_000)

    small = catalog.price("openai", "big-model", usage_small)
    mid = catalog.price("openai", "big-model", usage_mid)
    large = catalog.price("openai", "big-model", usage_large)

    assert small.cost_input_usd == pytest.approx(20_000 * 1e-6)
    assert small.cost_cache_read_usd == pytest.approx(10_000 * 0.1e-6)
    assert small.cost_cache_write_usd == pytest.approx(20_000 * 1.25e-6)
    assert small.cost_output_usd == pytest.approx(1_000 * 4e-6)
    assert mid.cost_input_usd == pytest.approx(150_000 * 1.5e-6)
    assert mid.cost_output_usd == pytest.approx(1_000 * 4e-6)
    assert large.cost_input_usd == pytest.approx(100_000 * 2e-6)
    assert large.cost_cache_read_usd == pytest.approx(100_000 * 0.2e-6)
    assert large.cost_cache_write_usd == pytest.approx(100_000 * 1.25e-6)
    assert large.cost_output_usd == pytest.approx(1_000 * 8e-6)
    assert large.price_source == "catalog:costs.json"


def test_catalog_reasoning_rate_and_cache_fallback(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "r.json", {"thinker": {
        "rates": {"input": "1", "output": "2", "reasoning": "3"}}})
    usage = provider_usage(input_tokens=1000, cached_input_tokens=400, output_tokens=500,
                           reasoning_tokens=300)

    cost = PriceCatalog.load([path]).price("openai", "thinker", usage)

    assert cost.cost_cache_read_usd == pytest.approx(400 * 1e-6)
    assert cost.cost_output_usd == pytest.approx(200 * 2e-6 + 300 * 3e-6)


def test_catalog_later_file_and_inline_win(tmp_path: Path) -> None:
    first = write_catalog(tmp_path / "a.json", {"m": {"rates": {"input": "1", "output": "1"}}})
    second = write_catalog(tmp_path / "b.json", {"m": {"rates": {"input": "2", "output": "2"}}})
    usage = provider_usage(input_tokens=1_000_000)

    from_files = PriceCatalog.load([first, second]).price("openai", "m", usage)
    from_inline = PriceCatalog.load([first, second], inline=[{"providers": {"openai": {
        "models": {"m": {"rates": {"input": "3", "output": "3"}}}}}}]).price("openai", "m", usage)

    assert from_files.cost_usd == pytest.approx(2.0)
    assert from_files.price_source == "catalog:b.json"
    assert from_inline.cost_usd == pytest.approx(3.0)
    assert from_inline.price_source == "catalog:inline"


def test_catalog_response_model_first(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "c.json", {
        "gpt-4o": {"rates": {"input": "1", "output": "1"}},
        "gpt-4o-2024-08-06": {"rates": {"input": "7", "output": "7"}}})
    usage = provider_usage(input_tokens=1_000_000)

    cost = PriceCatalog.load([path]).price("openai", "gpt-4o-2024-08-06", usage,
                                           request_model="gpt-4o")

    assert cost.cost_usd == pytest.approx(7.0)


def test_catalog_matches_provider_exactly(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "d.json", {"gpt-4o": {"rates": {"input": "100",
                                                                    "output": "100"}}},
                         provider="azure")
    usage = provider_usage(input_tokens=1_000_000)

    cost = PriceCatalog.load([path]).price("openai", "gpt-4o", usage)

    assert cost.price_source == GENAI_PRICES_SOURCE


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", r"bad\.json: invalid JSON"),
    ('{"models": {}}', r"bad\.json: expected an object with a 'providers' object"),
    ('{"providers": {"openai": {"models": {"m": {"rates": {"input": "x", "output": "1"}}}}}}',
     r"bad\.json: providers\.openai\.models\.m\.rates\.input must be a price .* got 'x'"),
    ('{"providers": {"openai": {"models": {"m": {"rates": {"input": "1"}}}}}}',
     r"providers\.openai\.models\.m\.rates\.output is missing"),
    ('{"providers": {"openai": {"models": {"m": {"rates": {"input": "1", "output": "1",'
     ' "cached": "1"}}}}}}', r"rates\.cached is not a known rate"),
    ('{"providers": {"openai": {"models": {"m": {"rates": {"input": "1", "output": "1"},'
     ' "tiers": [{"contextOver": "200k", "rates": {}}]}}}}}',
     r"tiers\[0\]\.contextOver must be a whole number of tokens, got '200k'"),
    ('{"providers": {"openai": {"models": {"m": {"rates": {"input": "-1", "output": "1"}}}}}}',
     r"rates\.input must be a price"),
])
def test_bad_catalog_names_file_and_key(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)

    with pytest.raises(CatalogError, match=message):
        PriceCatalog.load([path])


def test_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"nope\.json: cannot read the model catalog"):
        PriceCatalog.load([tmp_path / "nope.json"])


# --- the shipped base catalog ------------------------------------------------------------

def test_base_costs_match_genai_prices_data() -> None:
    # The shipped rates were copied from genai-prices' bundled data; keep them in step.
    catalog = PriceCatalog.load([BASE_COSTS])
    genai_ids = {"openai": "openai", "gcp.gemini": "google", "anthropic": "anthropic"}
    now = datetime.now(tz=UTC)

    assert len(catalog.entries) >= 20
    for (provider, model), entry in catalog.entries.items():
        _, info = data_snapshot.get_snapshot().find_provider_model(
            model, None, genai_ids[provider], None)
        prices = info.get_prices(now)
        base = getattr(prices.input_mtok, "base", prices.input_mtok)
        assert entry.rates["input"] == base, (provider, model)
        if prices.output_mtok is not None:
            assert entry.rates["output"] == getattr(prices.output_mtok, "base",
                                                    prices.output_mtok), (provider, model)


def test_base_costs_cover_seed_models() -> None:
    catalog = PriceCatalog.load([BASE_COSTS])

    for key in [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("gcp.gemini", "gemini-2.5-flash"),
                ("gcp.gemini", "gemini-2.5-pro"), ("anthropic", "claude-sonnet-4-5"),
                ("anthropic", "claude-haiku-4-5")]:
        assert key in catalog.entries
    assert not any("qwen" in model or "llama" in model for _, model in catalog.entries)
