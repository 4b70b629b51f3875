"""Price a request's usage from model catalog files or genai-prices' bundled data.

Catalog files use agentgateway's format: `{"providers": {"<provider>": {"models": {"<model>":
{"rates": {...}, "tiers": [{"contextOver": N, "rates": {...}}]}}}}}` with USD per million
tokens as strings. A catalog entry matches on the exact (provider, model) pair, the response
model first, then the request model. Models not in any catalog are priced with genai-prices,
pinned, from the data bundled with the installed version only. Unknown models stay unpriced:
their cost is None, never 0.
"""

from __future__ import annotations

import functools

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import TieredPrices

from addons.usage_model import Usage

logger = logging.getLogger(__name__)

CostStatus = Literal["priced", "local", "unpriced", "no_usage"]

GENAI_PRICES_SOURCE = f"genai-prices {genai_prices.__version__}"
# agentgateway catalog provider ids -> genai-prices provider ids.
GENAI_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "gcp.gemini": "google",
                      "gcp.vertex_ai": "google"}
# NOTE: inputAudio and outputAudio are accepted but not applied, because `Usage` has no audio
# token counts; audio tokens are priced at the text rates.
RATE_KEYS = {"input": "input", "output": "output", "cacheRead": "cache_read",
             "cacheWrite": "cache_write", "reasoning": "reasoning",
             "inputAudio": "input_audio", "outputAudio": "output_audio"}
_MILLION = Decimal(1_000_000)


class CatalogError(ValueError):
    """A model catalog file is unreadable or has an invalid entry."""


@dataclass
class Cost:
    """The price of one request in USD; the parts add up to `cost_usd`.

    `cost_input_usd` is the uncached input only; cache reads and writes have their own parts.
    Every amount is None unless `cost_status` is `priced` or `local`.
    """

    cost_usd: float | None = None
    cost_input_usd: float | None = None
    cost_output_usd: float | None = None
    cost_cache_read_usd: float | None = None
    cost_cache_write_usd: float | None = None
    cost_status: CostStatus = "unpriced"
    price_source: str | None = None


@dataclass(frozen=True)
class Rates:
    """USD per million tokens; a missing cache rate falls back to the input rate."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None


@dataclass
class CatalogEntry:
    """One model's rates from a catalog, with its tiers sorted by `contextOver`."""

    rates: dict[str, Decimal]
    tiers: list[tuple[int, dict[str, Decimal]]] = field(default_factory=list)
    source: str = ""

    def rates_for(self, input_tokens: int) -> Rates:
        """Return the rates of the highest tier whose `contextOver` the input exceeds."""
        chosen = dict(self.rates)
        for context_over, tier_rates in self.tiers:
            if input_tokens > context_over:
                chosen = {**self.rates, **tier_rates}
        return Rates(input=chosen["input"], output=chosen["output"],
                     cache_read=chosen.get("cache_read"), cache_write=chosen.get("cache_write"),
                     reasoning=chosen.get("reasoning"))


class PriceCatalog:
    """Model prices from catalog files, with genai-prices for everything else."""

    def __init__(self, entries: Mapping[tuple[str, str], CatalogEntry] | None = None) -> None:
        self.entries: dict[tuple[str, str], CatalogEntry] = dict(entries or {})

    @classmethod
    def load(cls, files: Iterable[Path], inline: Iterable[Mapping[str, Any]] = ()) -> PriceCatalog:
        """Read catalog files, then inline catalogs; a later entry replaces an earlier one.

        Raises `CatalogError` naming the file and key path of the first problem.
        """
        entries: dict[tuple[str, str], CatalogEntry] = {}
        for path in files:
            path = Path(path)
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except OSError as error:
                raise CatalogError(f"{path}: cannot read the model catalog: {error}") from error
            except ValueError as error:
                raise CatalogError(f"{path}: invalid JSON: {error}") from error
            entries.update(_parse_catalog(document, str(path), f"catalog:{path.name}"))
        for number, document in enumerate(inline):
            entries.update(_parse_catalog(document, f"inline catalog {number}", "catalog:inline"))
        logger.info("loaded %d model prices from catalogs", len(entries))
        return cls(entries)

    def price(self, provider: str | None, model: str | None, usage: Usage | None,
              local: bool = False, request_model: str | None = None) -> Cost:
        """Price `usage`; `model` is the response model, `request_model` the one asked for."""
        if local:
            return Cost(0.0, 0.0, 0.0, 0.0, 0.0, cost_status="local", price_source="local")
        if usage is None or usage.is_empty:
            return Cost(cost_status="no_usage")
        candidates = [m for m in (model, request_model) if m]

        for name in candidates:
            entry = self.entries.get((provider or "", name)) or self.entries.get(
                (provider or "", name.removeprefix("models/")))
            if entry is not None:
                rates = entry.rates_for(usage.input_tokens or 0)
                return _cost(usage, rates, entry.source)

        genai_provider = GENAI_PROVIDER_IDS.get(provider or "")
        if genai_provider is not None:
            for name in candidates:
                cost = _genai_cost(genai_provider, name, usage)
                if cost is not None:
                    return cost
        logger.debug("no price for provider %s, models %s", provider, candidates)
        return Cost(cost_status="unpriced")


def _cost(usage: Usage, rates: Rates, source: str) -> Cost:
    input_tokens = usage.input_tokens or 0
    cache_read = usage.cached_input_tokens or 0
    cache_write = usage.cache_write_tokens or 0
    output_tokens = usage.output_tokens or 0
    reasoning = usage.reasoning_tokens or 0
    uncached = max(input_tokens - cache_read - cache_write, 0)

    input_cost = uncached * rates.input
    read_cost = cache_read * (rates.cache_read if rates.cache_read is not None else rates.input)
    write_cost = cache_write * (rates.cache_write if rates.cache_write is not None
                                else rates.input)
    if rates.reasoning is not None:
        plain = max(output_tokens - reasoning, 0)
        output_cost = plain * rates.output + min(reasoning, output_tokens) * rates.reasoning
    else:
        output_cost = output_tokens * rates.output

    parts = [input_cost / _MILLION, output_cost / _MILLION, read_cost / _MILLION,
             write_cost / _MILLION]
    return Cost(float(sum(parts)), *(float(p) for p in parts), cost_status="priced",
                price_source=source)


def preload_genai_prices() -> None:
    """Build genai-prices' bundled data now (about 16,000 objects, 20-30 ms) instead of on the first priced flow."""
    data_snapshot.get_snapshot()


@functools.lru_cache(maxsize=1024)
def _genai_model(provider_id: str, name: str) -> Any | None:
    """Look a model up in genai-prices once per process; None when it has no such model."""
    try:
        # get_snapshot() returns the bundled data unless someone starts genai-prices'
        # UpdatePrices, which meterway never does, so the answer never changes.
        _, info = data_snapshot.get_snapshot().find_provider_model(name, None, provider_id, None)
    except LookupError:
        return None
    return info


def _genai_cost(provider_id: str, model: str, usage: Usage) -> Cost | None:
    name = model.removeprefix("models/").rsplit("/", 1)[-1]
    now = datetime.now(tz=UTC)
    info = _genai_model(provider_id, name)
    if info is None:
        return None
    model_price = info.get_prices(now)
    input_tokens = usage.input_tokens or 0

    def rate(key: str) -> Decimal | None:
        value = getattr(model_price, key, None)
        if isinstance(value, TieredPrices):
            chosen = value.base
            for tier in value.tiers:
                if input_tokens > tier.start:
                    chosen = tier.price
            return chosen
        return value

    input_rate, output_rate = rate("input_mtok"), rate("output_mtok")
    if input_rate is None or output_rate is None:
        return None
    rates = Rates(input=input_rate, output=output_rate, cache_read=rate("cache_read_mtok"),
                  cache_write=rate("cache_write_mtok"))
    cost = _cost(usage, rates, GENAI_PRICES_SOURCE)
    _check_against_genai(info.id, usage, cost, provider_id, now)
    return cost


_checked_models: set[str] = set()


def _check_against_genai(model_id: str, usage: Usage, cost: Cost, provider_id: str,
                         now: datetime) -> None:
    """Log when genai-prices' own total differs from the parts computed here.

    Once per model and process: the check prices the request a second time, which cost about
    4 % of the gateway's time per request when it ran on every one.
    """
    if model_id in _checked_models:
        return
    _checked_models.add(model_id)
    try:
        calculation = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=usage.input_tokens or 0,
                               cache_read_tokens=usage.cached_input_tokens or 0,
                               cache_write_tokens=usage.cache_write_tokens or 0,
                               output_tokens=usage.output_tokens or 0),
            model_id, provider_id=provider_id, genai_request_timestamp=now)
    except (LookupError, ValueError) as error:
        logger.debug("genai-prices could not price %s: %s", model_id, error)
        return
    total = float(calculation.total_price)
    if cost.cost_usd is not None and abs(total - cost.cost_usd) > 1e-9:
        logger.warning("genai-prices prices %s at %.9f USD but its rates add up to %.9f",
                       model_id, total, cost.cost_usd)


def _parse_catalog(document: Any, where: str, source: str) -> dict[tuple[str, str], CatalogEntry]:
    if not isinstance(document, dict) or not isinstance(document.get("providers"), dict):
        raise CatalogError(f"{where}: expected an object with a 'providers' object at the top")
    entries: dict[tuple[str, str], CatalogEntry] = {}
    for provider, provider_body in document["providers"].items():
        key_path = f"providers.{provider}"
        models = provider_body.get("models") if isinstance(provider_body, dict) else None
        if not isinstance(models, dict):
            raise CatalogError(f"{where}: {key_path}.models must be an object of models")
        for model, body in models.items():
            model_path = f"{key_path}.models.{model}"
            if not isinstance(body, dict):
                raise CatalogError(f"{where}: {model_path} must be an object with 'rates'")
            rates = _parse_rates(body.get("rates"), where, f"{model_path}.rates")
            for required in ("input", "output"):
                if required not in rates:
                    raise CatalogError(f"{where}: {model_path}.rates.{required} is missing; "
                                       "give it in USD per million tokens, e.g. \"2.50\"")
            tiers = []
            for number, tier in enumerate(body.get("tiers") or []):
                tier_path = f"{model_path}.tiers[{number}]"
                over = tier.get("contextOver") if isinstance(tier, dict) else None
                if isinstance(over, bool) or not isinstance(over, int) or over < 0:
                    raise CatalogError(f"{where}: {tier_path}.contextOver must be a whole "
                                       f"number of tokens, got {over!r}")
                tiers.append((over, _parse_rates(tier.get("rates"), where, f"{tier_path}.rates")))
            tiers.sort(key=lambda item: item[0])
            entries[(provider, model)] = CatalogEntry(rates=rates, tiers=tiers, source=source)
    return entries


def _parse_rates(rates: Any, where: str, key_path: str) -> dict[str, Decimal]:
    if not isinstance(rates, dict):
        raise CatalogError(f"{where}: {key_path} must be an object of rates")
    parsed: dict[str, Decimal] = {}
    for key, value in rates.items():
        if key not in RATE_KEYS:
            raise CatalogError(f"{where}: {key_path}.{key} is not a known rate; "
                               f"use one of {', '.join(RATE_KEYS)}")
        try:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise InvalidOperation
            amount = Decimal(str(value))
            if not amount.is_finite() or amount < 0:
                raise InvalidOperation
        except InvalidOperation:
            raise CatalogError(f"{where}: {key_path}.{key} must be a price in USD per million "
                               f"tokens such as \"0.15\", got {value!r}") from None
        parsed[RATE_KEYS[key]] = amount
    return parsed
