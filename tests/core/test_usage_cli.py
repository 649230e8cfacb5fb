"""`hedge usage` against real HTTP servers on 127.0.0.1: two gateways' admin /metrics (a real
gateway registry's exposition) and a Prometheus answering /api/v1/query in its wire format;
every output format checked exactly, and bad input is one line and exit code 2."""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from hedge_core import cli, usage_cli
from hedge_core.usage_cli import UsageError, parse_time, prometheus_query, time_range
from hedge_serving.gateway.metrics import GatewayMetrics
from hedge_serving.gateway.routing import RoutingTable

Handler = Callable[[web.Request], Any]


class Server:
    """An aiohttp app on 127.0.0.1 in a thread of its own (the CLI runs its own loop)."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.requests: list[web.Request] = []
        self.app = web.Application()
        for path, handler in routes.items():
            self.app.router.add_get(path, self._recording(handler))
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    def _recording(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> Any:
            self.requests.append(request)
            return await handler(request)

        return wrapped

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", 0).start())
        self.port = self.runner.addresses[0][1]
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        assert self.ready.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def gateway_page(*done: tuple[str, str, str, str, int | None, bool]) -> str:
    """A real gateway registry's /metrics after these ClientPolicy requests ended."""
    metrics = GatewayMetrics(RoutingTable())
    for tenant, key, model, served_by, tokens, limited in done:
        metrics.tenant_done(tenant, key, model, served_by, tokens, rate_limited=limited)
    return generate_latest(metrics.registry).decode()


def text(body: str, content_type: str = "text/plain") -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(text=body, content_type=content_type)

    return handler


GW_1 = gateway_page(
    ("team-a/team-a", "ci-bot", "llama-3-8b", "self-hosted", 1200, False),
    ("team-a/team-a", "ci-bot", "llama-3-8b", "self-hosted", 800, False),
    ("team-a/team-a", "ci-bot", "llama-3-8b", "gateway", None, True),
    ("team-b/batch", "nightly", "llama-3-8b", "openai", 5000, False),
)
GW_2 = gateway_page(
    ("team-a/team-a", "ci-bot", "llama-3-8b", "self-hosted", 500, False),
    ("team-a/team-a", "primary", "qwen-7b", "self-hosted", 42, False),
)


@pytest.fixture
def gateways() -> Iterator[tuple[Server, Server]]:
    with (
        Server({"/metrics": text(GW_1)}) as one,
        Server({"/metrics": text(GW_2)}) as two,
    ):
        yield one, two


def hedge(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["usage", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


TABLE = """\
TENANT         KEY      MODEL       SERVED BY    REQUESTS  TOKENS  RATE LIMITED
team-a/team-a  ci-bot   llama-3-8b  gateway             1       0             1
team-a/team-a  ci-bot   llama-3-8b  self-hosted         3    2500             0
team-a/team-a  primary  qwen-7b     self-hosted         1      42             0
team-b/batch   nightly  llama-3-8b  openai              1    5000             0
"""

CSV = """\
tenant,key,model,served_by,requests,tokens,rate_limited
team-a/team-a,ci-bot,llama-3-8b,gateway,1,0,1
team-a/team-a,ci-bot,llama-3-8b,self-hosted,3,2500,0
team-a/team-a,primary,qwen-7b,self-hosted,1,42,0
team-b/batch,nightly,llama-3-8b,openai,1,5000,0
"""


def test_gateways_summed_as_a_table(
    gateways: tuple[Server, Server], capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = gateways
    # An admin URL without a path means its /metrics.
    assert hedge(["--gateway", one.url, "--gateway", f"{two.url}/metrics"], capsys) == (
        0,
        TABLE,
        "",
    )
    assert [r.path for r in one.requests + two.requests] == ["/metrics", "/metrics"]


def test_gateways_as_csv_and_json(
    gateways: tuple[Server, Server], capsys: pytest.CaptureFixture[str]
) -> None:
    urls = ["--gateway", gateways[0].url, "--gateway", gateways[1].url]
    assert hedge([*urls, "--output", "csv"], capsys) == (0, CSV, "")
    code, out, _ = hedge([*urls, "-o", "json"], capsys)
    assert code == 0
    assert out.endswith("]\n")
    assert json.loads(out) == [
        {"tenant": "team-a/team-a", "key": "ci-bot", "model": "llama-3-8b",
         "served_by": "gateway", "requests": 1, "tokens": 0, "rate_limited": 1},
        {"tenant": "team-a/team-a", "key": "ci-bot", "model": "llama-3-8b",
         "served_by": "self-hosted", "requests": 3, "tokens": 2500, "rate_limited": 0},
        {"tenant": "team-a/team-a", "key": "primary", "model": "qwen-7b",
         "served_by": "self-hosted", "requests": 1, "tokens": 42, "rate_limited": 0},
        {"tenant": "team-b/batch", "key": "nightly", "model": "llama-3-8b",
         "served_by": "openai", "requests": 1, "tokens": 5000, "rate_limited": 0},
    ]  # fmt: skip


def test_no_tenant_traffic_is_an_empty_report(capsys: pytest.CaptureFixture[str]) -> None:
    with Server({"/metrics": text(gateway_page())}) as gw:
        header = CSV.splitlines()[0] + "\n"
        assert hedge(["--gateway", gw.url, "-o", "csv"], capsys) == (0, header, "")
        assert hedge(["--gateway", gw.url, "-o", "json"], capsys) == (0, "[]\n", "")


def test_a_page_over_the_cap_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_cli, "MAX_PAGE_BYTES", 1000)
    with Server({"/metrics": text(GW_1)}) as gw:
        code, out, err = hedge(["--gateway", gw.url], capsys)
    assert (code, out) == (2, "")
    assert err == f"hedge usage: {gw.url}/metrics answered more than 1000 bytes\n"


# ------------------------------------------------------------------------------ Prometheus

NOW = datetime.datetime(2026, 12, 2, 16, 0, tzinfo=datetime.UTC)


def vector(*samples: tuple[dict[str, str], str]) -> dict[str, Any]:
    """An /api/v1/query answer exactly as Prometheus writes one."""
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [1796169600.0, v]} for m, v in samples],
        },
    }


A = {"tenant": "team-a/team-a", "key": "ci-bot", "model": "llama-3-8b"}
ANSWERS = {
    "hedge_gateway_tenant_requests_total": vector(
        ({**A, "served_by": "self-hosted"}, "120.04"), ({**A, "served_by": "gateway"}, "3")
    ),
    "hedge_gateway_tenant_tokens_total": vector(
        ({**A, "served_by": "self-hosted"}, "98211.6"), ({**A, "served_by": "gateway"}, "0")
    ),
    "hedge_gateway_tenant_rate_limited_total": vector(
        (A, "2.9999"), ({**A, "key": "odd"}, "NaN"), ({**A, "key": "odd"}, "+Inf")
    ),
}


def prometheus(answers: dict[str, Any] = ANSWERS, status: int = 200) -> Server:
    async def query(request: web.Request) -> web.Response:
        series = next(s for s in answers if s in request.query["query"])
        return web.json_response(answers[series], status=status)

    return Server({"/api/v1/query": query})


def test_prometheus_over_a_range(capsys: pytest.CaptureFixture[str]) -> None:
    with prometheus() as prom:
        argv = ["--prometheus", prom.url, "--since", "2026-12-01", "--until", "2026-12-02"]
        code, out, err = hedge([*argv, "-o", "csv"], capsys)
    assert (code, err) == (0, "")
    assert out == (
        "tenant,key,model,served_by,requests,tokens,rate_limited\n"
        "team-a/team-a,ci-bot,llama-3-8b,gateway,3,0,3\n"
        "team-a/team-a,ci-bot,llama-3-8b,self-hosted,120,98212,0\n"
    )
    queries = sorted((r.query["query"], r.query["time"]) for r in prom.requests)
    assert queries == [
        (
            "sum by (tenant, key, model) "
            "(increase(hedge_gateway_tenant_rate_limited_total[86400s]))",
            "1796169600.000",
        ),
        (
            "sum by (tenant, key, model, served_by) "
            "(increase(hedge_gateway_tenant_requests_total[86400s]))",
            "1796169600.000",
        ),
        (
            "sum by (tenant, key, model, served_by) "
            "(increase(hedge_gateway_tenant_tokens_total[86400s]))",
            "1796169600.000",
        ),
    ]


def test_prometheus_table_defaults_to_the_last_day(capsys: pytest.CaptureFixture[str]) -> None:
    with prometheus() as prom:
        code, out, _ = hedge(["--prometheus", prom.url], capsys)
    assert code == 0
    assert out == (
        "TENANT         KEY     MODEL       SERVED BY    REQUESTS  TOKENS  RATE LIMITED\n"
        "team-a/team-a  ci-bot  llama-3-8b  gateway             3       0             3\n"
        "team-a/team-a  ci-bot  llama-3-8b  self-hosted       120   98212             0\n"
    )
    assert all("[86400s]" in r.query["query"] for r in prom.requests)


# ------------------------------------------------------------------------------ bad input


def closed_port() -> str:
    with Server({}) as gone:
        url = gone.url
    return url


GW = ["--gateway", "http://127.0.0.1:1"]
PROM = ["--prometheus", "http://127.0.0.1:1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give --gateway URL (repeatable) or --prometheus URL, not both"),
        ([*GW, *PROM], "give --gateway URL (repeatable) or --prometheus URL, not both"),
        (["--gateway", "ftp://x"], "'ftp://x' is not an http(s) URL"),
        ([*GW, "--since", "1h"], "--since and --until need --prometheus"),
        ([*PROM, "--since", "yesterday"], "'yesterday' is not a time"),
        ([*PROM, "--since", "1h", "--until", "2h"], "--since 1h is not before --until 2h"),
    ],
)
def test_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = hedge(argv, capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"hedge usage: {message}")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_sources(capsys: pytest.CaptureFixture[str]) -> None:
    html = text("<html><body>Grafana</body></html>", "text/html")
    with (
        Server({"/metrics": html, "/api/v1/query": html}) as web_page,
        Server({"/metrics": text("")}) as empty,
        prometheus({s: {"status": "error", "errorType": "bad_data", "error": "parse error"}
                    for s in ANSWERS}, status=400) as bad_query,
        prometheus({s: {"status": "success", "data": {"resultType": "matrix", "result": []}}
                    for s in ANSWERS}) as matrix,
    ):  # fmt: skip
        gone = closed_port()
        page, api = f"{web_page.url}/metrics", "/api/v1/query"
        cases = [
            ("--gateway", gone, f"cannot read {gone}/metrics: ClientConnectorError"),
            ("--gateway", web_page.url, f"{page} did not answer with Prometheus metrics"),
            ("--gateway", empty.url, f"{empty.url}/metrics answered with no metrics at all"),
            ("--gateway", f"{empty.url}/nowhere", f"{empty.url}/nowhere answered HTTP 404"),
            ("--prometheus", web_page.url, f"{web_page.url}{api} did not answer like the "
             "Prometheus HTTP API"),
            ("--prometheus", bad_query.url, f"{bad_query.url}{api}: bad_data: parse error"),
            ("--prometheus", matrix.url, f"{matrix.url}{api} did not answer with an instant "
             "vector"),
        ]  # fmt: skip
        for flag, url, message in cases:
            code, out, err = hedge([flag, url], capsys)
            assert (code, out) == (2, ""), url
            assert err.startswith(f"hedge usage: {message}"), err
            assert err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("now", NOW),
        ("90m", NOW - datetime.timedelta(minutes=90)),
        ("7d", NOW - datetime.timedelta(days=7)),
        ("2026-12-01", datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)),
        ("2026-12-01T06:30:00Z", datetime.datetime(2026, 12, 1, 6, 30, tzinfo=datetime.UTC)),
        ("2026-12-01T07:30:00+01:00", datetime.datetime(2026, 12, 1, 6, 30, tzinfo=datetime.UTC)),
    ],
)
def test_times(value: str, expected: datetime.datetime) -> None:
    assert parse_time(value, NOW) == expected


def test_range_and_query() -> None:
    assert time_range("24h", "now", NOW) == (NOW.timestamp(), 86400)
    with pytest.raises(UsageError):
        time_range("now", "now", NOW)
    assert prometheus_query("hedge_gateway_tenant_tokens_total", 60) == (
        "sum by (tenant, key, model, served_by) (increase(hedge_gateway_tenant_tokens_total[60s]))"
    )


def test_usage_is_a_hedge_subcommand() -> None:
    assert cli.subcommands()["usage"][0] == usage_cli.__name__
