"""Tests of the config models: shapes, aliases, validators and the Gateway helpers."""

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from addons import config_model, config_policies, config_routes, config_settings
from addons.config_model import AiBackend, AiProvider, Gateway, PathMatch, ProviderSettings
from addons.config_policies import BackendAuth, ExtProc
from addons.config_support import UNSUPPORTED, sqlite_path_from_url


def validate(data: dict) -> Gateway:
    return Gateway.model_validate(data, by_alias=True, by_name=False)


@pytest.mark.parametrize(
    ("yaml_key", "kind"),
    [("openAI", "openAI"), ("gemini", "gemini"), ("anthropic", "anthropic")],
)
def test_provider_kind_spelling(yaml_key, kind):
    backend = AiBackend.model_validate(
        {"name": "b", "provider": {yaml_key: {}}}, by_alias=True, by_name=False
    )
    assert backend.provider_kind == kind


def test_provider_needs_exactly_one():
    with pytest.raises(ValidationError, match="exactly one"):
        AiProvider.model_validate({"openAI": {}, "gemini": {}}, by_alias=True, by_name=False)
    with pytest.raises(ValidationError, match="exactly one"):
        AiProvider.model_validate({}, by_alias=True, by_name=False)


def test_snake_case_attributes_build_models():
    backend = AiBackend(
        name="ollama", provider=AiProvider(open_ai=ProviderSettings()), host_override="localhost:11434"
    )
    assert backend.host_override == "localhost:11434"
    assert backend.provider_kind == "openAI"


def test_snake_case_keys_rejected_from_yaml():
    with pytest.raises(ValidationError):
        AiBackend.model_validate(
            {"name": "b", "provider": {"openAI": {}}, "host_override": "x"},
            by_alias=True,
            by_name=False,
        )


def test_path_match_exactly_one():
    assert PathMatch.model_validate({"pathPrefix": "/v1"}, by_alias=True).path_prefix == "/v1"
    with pytest.raises(ValidationError):
        PathMatch.model_validate({"exact": "/a", "regex": "/b"}, by_alias=True)


def test_backend_auth_forms():
    plain = BackendAuth.model_validate({"key": "sk-1"}, by_alias=True)
    inline = BackendAuth.model_validate({"key": {"value": "sk-2"}}, by_alias=True)
    from_file = BackendAuth.model_validate({"key": {"value": {"file": "k.txt"}}}, by_alias=True)
    copilot = BackendAuth.model_validate("copilot", by_alias=True)
    assert plain.key == "sk-1"
    assert inline.key.value == "sk-2"
    assert from_file.key.value.file == "k.txt"
    assert copilot.copilot is True


def test_secrets_absent_from_repr():
    auth = BackendAuth.model_validate({"key": "sk-very-secret"}, by_alias=True)
    assert "sk-very-secret" not in repr(auth)
    gateway = validate({"llm": {"models": [{"name": "m", "provider": "openai",
                                            "params": {"apiKey": "sk-llm"}}]}})
    assert "sk-llm" not in repr(gateway)


def test_ext_proc_defaults():
    ext_proc = ExtProc.model_validate({"host": "127.0.0.1:50051"}, by_alias=True)
    assert ext_proc.failure_mode == "failClosed"
    assert ext_proc.processing_options.request_body_mode == "fullDuplexStreamed"
    assert ext_proc.processing_options.allow_mode_override is False


def test_ext_proc_needs_a_target():
    with pytest.raises(ValidationError, match="exactly one"):
        ExtProc.model_validate({"failureMode": "failOpen"}, by_alias=True)


def test_route_types_accept_pascal_case():
    policy = config_policies.AiPolicy.model_validate(
        {"routes": {"/v1/models": "Models", "/v1/responses": "responses"}}, by_alias=True
    )
    assert policy.routes == {"/v1/models": "models", "/v1/responses": "responses"}


def test_meterway_defaults():
    settings = validate({}).meterway
    assert settings.ext_proc.message_timeout == 60
    assert settings.payloads.store is True
    assert settings.payloads.max_bytes == 1024 * 1024
    assert settings.listen_address == "127.0.0.1"


def test_meterway_section_camel_case():
    settings = validate(
        {"meterway": {"extProc": {"messageTimeout": 5}, "payloads": {"store": False, "maxBytes": 10},
                      "listenAddress": "0.0.0.0"}}
    ).meterway
    assert settings.ext_proc.message_timeout == 5
    assert settings.payloads.store is False
    assert settings.payloads.max_bytes == 10
    assert settings.listen_address == "0.0.0.0"


def test_gateway_helpers_resolve_against_source(tmp_path: Path):
    gateway = validate(
        {
            "binds": [{"port": 3000, "listeners": []}, {"port": 3001, "listeners": []}],
            "config": {"database": {"url": "sqlite://data/log.db?mode=rwc"},
                       "modelCatalog": [{"file": "a.json"}, {"inline": {"providers": {}}},
                                        {"file": "/abs/b.json"}]},
            "llm": {"models": []},
        }
    )
    gateway._source = tmp_path / "gw.yaml"
    assert gateway.listener_ports() == [3000, 3001]
    assert gateway.llm_port() == 4000
    assert gateway.database_path() == tmp_path / "data" / "log.db"
    assert gateway.catalog_paths() == [tmp_path / "a.json", Path("/abs/b.json")]
    assert gateway.resolve_path("x/y") == tmp_path / "x" / "y"


def test_database_default_beside_config(tmp_path: Path):
    gateway = validate({})
    assert gateway.database_path() is None
    gateway._source = tmp_path / "gw.yaml"
    assert gateway.database_path() == tmp_path / "meterway.db"
    assert gateway.llm_port() is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [("sqlite://a.db", "a.db"), ("sqlite:///var/a.db", "/var/a.db"), ("sqlite://a.db?mode=rwc", "a.db")],
)
def test_sqlite_url_paths(url, expected):
    assert sqlite_path_from_url(url) == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [("sqlite://:memory:", "names no file"), ("postgres://h/db", "not supported"),
     ("postgresql://h/db", "not supported"), ("mysql://h/db", "invalid database url")],
)
def test_sqlite_url_rejects(url, fragment):
    with pytest.raises(ValueError, match=fragment):
        sqlite_path_from_url(url)


def test_gateway_ext_proc_picks_gateway_phase():
    policy = {"name": {"name": "sr", "namespace": "default"},
              "target": {"gateway": {"gatewayName": "default", "gatewayNamespace": "default"}},
              "policy": {"extProc": {"host": "127.0.0.1:50051"}}}
    assert validate({"policies": [policy]}).gateway_ext_proc() is None
    gateway = validate({"policies": [{**policy, "phase": "gateway"}]})
    assert gateway.gateway_ext_proc().host == "127.0.0.1:50051"


def _model_classes() -> dict[str, type[BaseModel]]:
    found = {}
    for module in (config_model, config_policies, config_routes, config_settings):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel):
                found[value.__name__] = value
    return found


def test_unsupported_names_exist():
    classes = _model_classes()
    for class_name, keys in UNSUPPORTED.items():
        assert class_name in classes, class_name
        aliases = {f.alias or n for n, f in classes[class_name].model_fields.items()}
        assert keys <= aliases, (class_name, keys - aliases)
