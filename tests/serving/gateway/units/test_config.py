"""The routes file (`--routes`): the issue's shape, the CRD shape, precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hedge_serving.gateway.config import RoutesFileError, load_routes, parse_routes
from hedge_serving.gateway.routing import ProviderType, SecretRef


def test_routes_file_as_written_in_the_issue(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "models:\n"
        "  - name: llama-3-8b\n"
        "    backends: [http://127.0.0.1:8001, http://127.0.0.1:8002]\n"
        "    fallback:\n"
        "      - {type: openai, model: gpt-4o-mini, apiKeyEnv: OPENAI_API_KEY}\n"
    )
    (spec,) = load_routes(path)
    assert spec.model == "llama-3-8b"
    assert spec.backends == ("http://127.0.0.1:8001", "http://127.0.0.1:8002")
    (p,) = spec.fallback
    assert p.type is ProviderType.OPENAI and p.model == "gpt-4o-mini"
    assert p.api_key == SecretRef(env="OPENAI_API_KEY")
    assert spec.options.request_timeout_s == 300 and spec.options.max_queue_depth == 16


def test_routes_file_crd_shape_and_aliases() -> None:
    specs = parse_routes(
        {
            "models": [
                {
                    "name": "m",
                    "aliases": ["m-lora"],
                    "backends": ["http://h:1/v1/"],
                    "serving": {"requestTimeoutSeconds": 5, "maxQueueDepth": 2},
                    "fallback": {
                        "onOverload": False,
                        "providers": [
                            {
                                "type": "AzureOpenAI",
                                "model": "gpt",
                                "baseURL": "https://x.openai.azure.com",
                                "deployment": "d",
                                "apiVersion": "2024-10-21",
                                "apiKeyFile": "/k",
                            },
                            {
                                "type": "OpenAICompatible",
                                "model": "x",
                                "baseURL": "http://p/v1",
                                "name": "backup",
                            },
                        ],
                    },
                }
            ]
        }
    )
    assert [s.model for s in specs] == ["m", "m-lora"]
    s = specs[0]
    assert s.backends == ("http://h:1",)
    assert s.options.request_timeout_s == 5 and not s.options.fallback_on_overload
    assert s.fallback[0].type is ProviderType.AZURE_OPENAI and s.fallback[0].deployment == "d"
    assert s.fallback[1].label == "backup"


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({}, "`models` must be a non-empty list"),
        ({"models": [{"name": "m", "backend": []}]}, "unknown key(s) backend"),
        ({"models": [{"name": "m", "backends": ["ftp://x"]}]}, "models[0].backends[0]"),
        (
            {"models": [{"name": "m", "fallback": [{"type": "bard", "model": "x"}]}]},
            "unknown provider type",
        ),
        (
            {"models": [{"name": "m", "fallback": [{"type": "openai-compatible", "model": "x"}]}]},
            "baseURL: required",
        ),
        ({"models": [{"name": "m", "maxQueueDepth": -1}]}, "maxQueueDepth"),
        ({"models": [{"name": "m"}, {"name": "m"}]}, "listed twice"),
    ],
)
def test_routes_file_errors_are_precise(doc: object, needle: str) -> None:
    with pytest.raises(RoutesFileError) as info:
        parse_routes(doc)
    assert needle in str(info.value)
