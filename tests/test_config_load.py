"""Tests of load_config on real files: the user's config, errors with file:line, $VAR."""

import logging
import shutil
import textwrap
from pathlib import Path

import pytest

from addons.config_load import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
KEYS = {"OPENAI_API_KEY": "sk-openai-test-1", "GEMINI_API_KEY": "gm-gemini-test-2"}


def write(tmp_path: Path, text: str, name: str = "gw.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, environ=None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ if environ is not None else {})
    return caught.value.problems


MINIMAL_ROUTE = """\
binds:
- port: 3000
  listeners:
  - routes:
    - backends:
      - ai:
          name: b
          provider:
            openAI: {}
"""


def test_seed_config_loads(tmp_path: Path):
    config = shutil.copy(CONFIGS / "homelab.yaml", tmp_path / "homelab.yaml")
    gateway = load_config(config, KEYS)

    assert gateway.source == Path(config).resolve()
    assert gateway.listener_ports() == [3000]
    routes = gateway.binds[0].listeners[0].routes
    assert len(routes) == 4
    first = routes[0]
    assert first.matches[0].headers[0].name == "x-selected-model"
    assert first.matches[0].headers[0].value.exact == "qwen-coder"
    assert first.policies.ai.model_aliases == {"MoM": "qwen2.5-coder:7b", "inteli-llm": "qwen2.5-coder:7b"}
    assert first.backends[0].ai.name == "ollama"
    assert first.backends[0].ai.provider_kind == "openAI"
    assert first.backends[0].ai.host_override == "localhost:11434"
    assert routes[1].backends[0].policies.backend_auth.key == KEYS["OPENAI_API_KEY"]
    assert routes[2].backends[0].ai.provider_kind == "gemini"
    fallback = routes[3]
    assert fallback.matches == []
    assert fallback.backends[0].policies.ai.model_aliases["MoM"] == "gemini-2.5-flash"
    assert gateway.backend_key(fallback.backends[0].policies.backend_auth) == KEYS["GEMINI_API_KEY"]

    ext_proc = gateway.gateway_ext_proc()
    assert ext_proc.host == "127.0.0.1:50051"
    assert ext_proc.failure_mode == "failOpen"
    assert ext_proc.processing_options.request_body_mode == "buffered"
    assert ext_proc.processing_options.response_body_mode == "none"
    assert ext_proc.processing_options.response_header_mode == "skip"

    assert gateway.llm.port == 4000
    assert gateway.llm.models[0].name == "openai"
    assert gateway.llm.models[0].provider == "openai"
    assert gateway.frontend_policies.http.max_buffer_size == 33554432
    assert gateway.database_path() == tmp_path / "agentgateway.db"
    assert gateway.catalog_paths() == [tmp_path / "base-costs.json"]
    assert gateway.secret_values == frozenset(KEYS.values())


def test_default_config_loads():
    gateway = load_config(CONFIGS / "default.yaml", {})
    backend = gateway.binds[0].listeners[0].routes[0].backends[0].ai
    assert gateway.listener_ports() == [3000]
    assert backend.provider_kind == "openAI"
    assert backend.host_override == "localhost:11434"
    assert gateway.database_path() == CONFIGS / "meterway.db"
    assert gateway.catalog_paths() == [CONFIGS / "base-costs.json"]
    assert gateway.secret_values == frozenset()


def test_missing_variable_named_not_valued(tmp_path: Path, caplog):
    config = shutil.copy(CONFIGS / "homelab.yaml", tmp_path / "homelab.yaml")
    caplog.set_level(logging.DEBUG)
    environ = {"OPENAI_API_KEY": "sk-must-not-appear"}

    problems = problems_of(Path(config), environ)

    assert len(problems) == 2
    assert all("`GEMINI_API_KEY` is not set" in p for p in problems)
    lines = Path(config).read_text(encoding="utf-8").splitlines()
    first_use = lines.index("            key: $GEMINI_API_KEY") + 1
    assert problems[0].startswith(f"{config}:{first_use}: ")
    assert "routes[2].backends[0].policies.backendAuth.key" in problems[0]
    assert all("sk-must-not-appear" not in p for p in problems)
    assert "sk-must-not-appear" not in caplog.text


def test_expanded_value_hidden_in_errors(tmp_path: Path):
    path = write(tmp_path, "binds:\n- port: $PORT\n  listeners: []\n")
    problems = problems_of(path, {"PORT": "secret-port-value"})
    assert len(problems) == 1
    assert "binds[0].port" in problems[0]
    assert "secret-port-value" not in problems[0]


def test_literal_value_shown_in_errors(tmp_path: Path):
    path = write(tmp_path, "binds:\n- port: three\n  listeners: []\n")
    problems = problems_of(path)
    assert problems == [f"{path}:2: binds[0].port: Input should be a valid integer, "
                        "unable to parse string as an integer (got 'three')"]


def test_variable_forms_expand(tmp_path: Path):
    path = write(tmp_path, MINIMAL_ROUTE + """\
        policies:
          backendAuth:
            key: "${PREFIX}-$SUFFIX"
    """)
    gateway = load_config(path, {"PREFIX": "ab", "SUFFIX": "cd"})
    auth = gateway.binds[0].listeners[0].routes[0].backends[0].policies.backend_auth
    assert auth.key == "ab-cd"
    assert "ab-cd" in gateway.secret_values


def test_double_dollar_is_literal(tmp_path: Path):
    path = write(tmp_path, MINIMAL_ROUTE + """\
        policies:
          backendAuth:
            key: "pa$$word$${NOT_A_VAR}"
    """)
    gateway = load_config(path, {})
    auth = gateway.binds[0].listeners[0].routes[0].backends[0].policies.backend_auth
    assert auth.key == "pa$word${NOT_A_VAR}"


def test_comments_not_expanded(tmp_path: Path):
    path = write(tmp_path, "# key: $UNSET_IN_COMMENT\n" + MINIMAL_ROUTE + "          # $ALSO_UNSET\n")
    gateway = load_config(path, {})
    assert gateway.listener_ports() == [3000]


def test_keys_not_expanded(tmp_path: Path):
    path = write(tmp_path, MINIMAL_ROUTE + """\
      policies:
        ai:
          modelAliases:
            $MODEL: gpt-4o
    """)
    gateway = load_config(path, {"MODEL": "expanded"})
    aliases = gateway.binds[0].listeners[0].routes[0].policies.ai.model_aliases
    assert aliases == {"$MODEL": "gpt-4o"}


def test_top_level_database_hint(tmp_path: Path):
    path = write(tmp_path, "binds: []\ndatabase:\n  url: sqlite://x.db\n")
    assert problems_of(path) == [
        f"{path}:2: database: unknown key `database`: `database` belongs under `config:`"
    ]


@pytest.mark.parametrize(
    ("snippet", "line", "where", "hint"),
    [
        ("          hostOveride: x\n", 10, "backends[0].ai.hostOveride", "did you mean `hostOverride`?"),
        ("          host_override: x\n", 10, "backends[0].ai.host_override", "write `hostOverride`"),
        ("          backendAuth: {key: k}\n", 10, "backends[0].ai.backendAuth",
         "`backendAuth` belongs under `policies:`"),
        ("          zzz: 1\n", 10, "backends[0].ai.zzz", "expected one of: groups, hostOverride"),
    ],
)
def test_unknown_key_hints(tmp_path: Path, snippet, line, where, hint):
    path = write(tmp_path, MINIMAL_ROUTE + snippet)
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:{line}: binds[0].listeners[0].routes[0].{where}: unknown key")
    assert hint in problems[0]


def test_wrong_case_provider(tmp_path: Path):
    path = write(tmp_path, MINIMAL_ROUTE.replace("openAI: {}", "openai: {}"))
    problems = problems_of(path)
    assert len(problems) == 1
    assert ":9: " in problems[0]
    assert "ai.provider.openai: unknown key `openai`: keys are case-sensitive; write `openAI`" in problems[0]


def test_union_errors_point_inside(tmp_path: Path):
    path = write(tmp_path, MINIMAL_ROUTE + """\
        policies:
          backendAuth:
            key: {valeu: x}
    """)
    problems = problems_of(path)
    assert len(problems) == 2
    assert any("backendAuth.key.value: missing required key `value`" in p for p in problems)
    assert any("backendAuth.key.valeu: unknown key `valeu`: did you mean `value`?" in p for p in problems)


UNSUPPORTED_FILE = """\
binds:
- port: 3000
  tunnelProtocol: direct
  listeners:
  - protocol: HTTPS
    routes:
    - hostnames: [a.example]
      policies:
        cors: {allowOrigins: ["*"]}
        ai:
          modelAliases: {a: b}
          promptGuard: {request: []}
      backends:
      - ai:
          name: v
          provider:
            vertex: {projectId: p}
          tokenize: false
config:
  database:
    url: postgres://u@h/db
  tracing: {otlpEndpoint: "http://127.0.0.1:4317"}
llm:
  models:
  - name: "*"
    provider: ollama
  providers: []
policies:
- name: {name: a, namespace: b}
  target: {gateway: {gatewayName: default, gatewayNamespace: default}}
  policy: {extProc: {host: "127.0.0.1:1"}}
"""


def test_unsupported_fields_listed(tmp_path: Path):
    path = write(tmp_path, UNSUPPORTED_FILE)
    problems = problems_of(path)
    expected = [
        (3, "binds[0].tunnelProtocol", "agentgateway's `tunnelProtocol` is not supported by meterway yet"),
        (5, "binds[0].listeners[0].protocol", "`protocol: HTTPS` is not supported"),
        (7, "binds[0].listeners[0].routes[0].hostnames", "`hostnames` is not supported"),
        (9, "binds[0].listeners[0].routes[0].policies.cors", "`cors` is not supported"),
        (12, "binds[0].listeners[0].routes[0].policies.ai.promptGuard", "`promptGuard` is not supported"),
        (17, "binds[0].listeners[0].routes[0].backends[0].ai.provider.vertex", "`vertex` is not supported"),
        (21, "config.database.url", "`postgres://` databases are not supported"),
        (26, "llm.models[0].provider", "llm provider `ollama` is not supported"),
        (29, "policies[0]", "`phase: route` (the default) are not supported"),
    ]
    assert len(problems) == len(expected), "\n".join(problems)
    for problem, (line, where, text) in zip(problems, expected):
        assert problem.startswith(f"{path}:{line}: {where}: "), problem
        assert text in problem


def test_memory_database_rejected(tmp_path: Path):
    path = write(tmp_path, "config:\n  database:\n    url: 'sqlite://:memory:'\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:3: config.database.url: ")
    assert "names no file" in problems[0]


def test_key_file_read_and_secret(tmp_path: Path):
    (tmp_path / "openai.key").write_text("sk-from-file\n", encoding="utf-8")
    path = write(tmp_path, MINIMAL_ROUTE + """\
        policies:
          backendAuth:
            key:
              value: {file: openai.key}
    """)
    gateway = load_config(path, {})
    auth = gateway.binds[0].listeners[0].routes[0].backends[0].policies.backend_auth
    assert gateway.backend_key(auth) == "sk-from-file"
    assert "sk-from-file" in gateway.secret_values


def test_missing_key_file(tmp_path: Path):
    path = write(tmp_path, MINIMAL_ROUTE + """\
        policies:
          backendAuth:
            key:
              value: {file: nope.key}
    """)
    problems = problems_of(path)
    assert len(problems) == 1
    assert "backendAuth.key.value: cannot read secret file" in problems[0]
    assert "nope.key" in problems[0]


def test_invalid_yaml_line(tmp_path: Path):
    path = write(tmp_path, "binds:\n- port: 3000\n  listeners: [\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:4: invalid YAML: ")


def test_duplicate_key(tmp_path: Path):
    path = write(tmp_path, "binds: []\nbinds: []\n")
    assert problems_of(path) == [f"{path}:2: binds: duplicate key `binds`; keep one"]


def test_missing_file(tmp_path: Path):
    problems = problems_of(tmp_path / "absent.yaml")
    assert problems == [f"{tmp_path / 'absent.yaml'}: file not found; "
                        "pass the path of an agentgateway config file"]


def test_error_str_joins_problems(tmp_path: Path):
    path = write(tmp_path, "database: {}\nbindz: []\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(caught.value) == "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 2
    assert "did you mean `binds`?" in caught.value.problems[1]


# Configs in the shapes agentgateway's documentation and examples use (written for these
# tests), with the problems meterway reports for each; an empty list means it loads.
DOC_EXAMPLES = [
    (
        "openai route with key from env",
        """\
        binds:
        - port: 3000
          listeners:
          - routes:
            - backends:
              - ai:
                  name: openai
                  provider:
                    openAI: {}
                policies:
                  backendAuth:
                    key: "$OPENAI_API_KEY"
        """,
        [],
    ),
    (
        "anthropic with model aliases and api routes",
        """\
        binds:
        - port: 3000
          listeners:
          - routes:
            - policies:
                ai:
                  modelAliases:
                    "claude-*": claude-sonnet-4-5
                    fast: claude-haiku-4-5
                  routes:
                    /v1/messages: messages
                    /v1/chat/completions: completions
                    "*": passthrough
              backends:
              - ai:
                  name: claude
                  provider:
                    anthropic: {}
                  policies:
                    backendAuth:
                      key: {value: "$ANTHROPIC_API_KEY"}
        """,
        [],
    ),
    (
        "hashed client keys",
        """\
        binds:
        - port: 3000
          listeners:
          - routes:
            - policies:
                apiKey:
                  mode: strict
                  keys:
                  - keyHash: "sha256:1311f8fc80a7ea28d78dd7723f09c44c1754cd35160ca8e7133ae3d7f636a19a"
                    metadata: {group: sales}
                  - key: client-plain-key
              backends:
              - ai: {name: local, provider: {openAI: {}}, hostOverride: "localhost:11434"}
        """,
        [],
    ),
    (
        "llm proxy with ollama and postgres",
        """\
        config:
          database:
            url: postgresql://agw:agw@localhost:4333/agw
        llm:
          port: 4000
          models:
          - name: '*'
            provider: ollama
        """,
        ["config.database.url: `postgresql://` databases are not supported",
         "llm.models[0].provider: llm provider `ollama` is not supported"],
    ),
    (
        "llm proxy models with params",
        """\
        llm:
          models:
          - name: gpt-4o-mini
            provider: openai
            params:
              model: gpt-4o-mini
              apiKey: "$OPENAI_API_KEY"
          - name: "gemini-*"
            provider: gemini
            params:
              baseUrl: https://generativelanguage.googleapis.com
        """,
        [],
    ),
    (
        "declared models list",
        """\
        binds:
        - port: 3000
          listeners:
          - routes:
            - backends:
              - ai: {name: openai, provider: {openAI: {}}}
              policies:
                ai:
                  models:
                  - {id: gpt-4o-mini, ownedBy: openai, created: 1704067200}
                  routes:
                    /v1/models: Models
                    /v1/chat/completions: Completions
        """,
        ["policies.ai.models: agentgateway's `models` is not supported"],
    ),
    (
        "mcp backend with stdio target",
        """\
        binds:
        - port: 3000
          listeners:
          - routes:
            - backends:
              - mcp:
                  targets:
                  - name: everything
                    stdio: {cmd: npx, args: ["@modelcontextprotocol/server-everything"]}
        """,
        ["backends[0].mcp: agentgateway's `mcp` is not supported"],
    ),
    (
        "failover groups and cors",
        """\
        binds:
        - port: 3000
          listeners:
          - routes:
            - policies:
                cors: {allowOrigins: ["*"], allowHeaders: ["*"]}
                localRateLimit:
                - {maxTokens: 10, tokensPerFill: 1, fillInterval: 1s, type: tokens}
              backends:
              - ai:
                  groups:
                  - providers:
                    - {name: a, provider: {openAI: {model: gpt-4o}}}
        """,
        ["policies.cors: agentgateway's `cors` is not supported",
         "policies.localRateLimit: agentgateway's `localRateLimit` is not supported",
         "backends[0].ai.groups: agentgateway's `groups` is not supported"],
    ),
    (
        "tracing, logging and admin addresses",
        """\
        config:
          adminAddr: localhost:15000
          statsAddr: 0.0.0.0:15020
          readinessAddr: 0.0.0.0:15021
          logging: {level: info, format: json}
          tracing: {otlpEndpoint: "http://localhost:4317", randomSampling: true}
        binds: []
        """,
        ["config.logging: agentgateway's `logging` is not supported"],
    ),
]


@pytest.mark.parametrize(("title", "text", "expected"), DOC_EXAMPLES, ids=[e[0] for e in DOC_EXAMPLES])
def test_doc_examples(tmp_path: Path, title, text, expected):
    path = write(tmp_path, text)
    environ = {"OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "sk-ant-y"}
    if not expected:
        load_config(path, environ)
        return
    problems = problems_of(path, environ)
    assert len(problems) == len(expected), "\n".join(problems)
    for problem, fragment in zip(problems, expected):
        assert fragment in problem
        assert problem.startswith(f"{path}:")
