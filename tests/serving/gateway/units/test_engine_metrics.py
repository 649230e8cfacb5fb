"""Reading an engine's queue depth from its vLLM /metrics page."""

from __future__ import annotations

from hedge_serving.gateway.engine_metrics import parse_waiting


def test_parse_waiting() -> None:
    text = (
        "# HELP vllm:num_requests_waiting x\n"
        'vllm:num_requests_waiting{model_name="a"} 3.0\n'
        'vllm:num_requests_waiting{model_name="b"} 2\n'
        "vllm:num_requests_waiting_total 99\n"
    )
    assert parse_waiting(text) == 5.0
    assert parse_waiting("nothing here") is None
