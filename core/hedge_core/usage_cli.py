"""`hedge usage`: ClientPolicy tenants' requests, tokens and 429s per tenant, key, model and
who served them, for chargeback (docs/tenants.md, "Usage reports").

Two sources:

    --gateway URL (repeatable)   each gateway replica's admin /metrics, summed: what the
                                 replicas counted since each of them started
    --prometheus URL             a Prometheus that scrapes the gateways: `increase()` of the
      [--since T] [--until T]    tenant series over the range (default: the last 24 hours),
                                 summed over the replicas, restarts included

and three outputs (`--output table|csv|json`). A 429 is a request the gateway answered
itself, so `rate_limited` is reported on the `served_by=gateway` rows. Bad input (a URL that
does not answer, a page that is not metrics, a range that is not one) is one line on stderr
and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from hedge_core.contracts import (
    GATEWAY_SERIES,
    KEY,
    METRICS_PATH,
    MODEL,
    SERVED_BY,
    SERVED_BY_GATEWAY,
    TENANT,
    TENANT_RATE_LIMITED,
    TENANT_REQUESTS,
    TENANT_TOKENS,
)

OUTPUTS = ("table", "csv", "json")
#: A gateway's page grows with its models (~10 KB each); the operator's scraper caps it alike.
MAX_PAGE_BYTES = 64 * 1024 * 1024
DEFAULT_SINCE = "24h"
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Which field of a row each series fills.
_FIELDS = {
    TENANT_REQUESTS: "requests",
    TENANT_TOKENS: "tokens",
    TENANT_RATE_LIMITED: "rate_limited",
}

RowKey = tuple[str, str, str, str]  # tenant, key, model, served_by


class UsageError(Exception):
    """Input `hedge usage` cannot report on; the message says which and why."""


@dataclass
class Row:
    tenant: str
    key: str
    model: str
    served_by: str
    requests: float = 0.0
    tokens: float = 0.0
    rate_limited: float = 0.0


# ---------------------------------------------------------------------------------- sums


def _row_key(series: str, labels: Mapping[str, str]) -> RowKey | None:
    tenant = labels.get(TENANT)
    if not tenant:
        return None
    served_by = SERVED_BY_GATEWAY if series == TENANT_RATE_LIMITED else labels.get(SERVED_BY, "")
    return (tenant, labels.get(KEY, ""), labels.get(MODEL, ""), served_by)


def add(rows: dict[RowKey, Row], series: str, labels: Mapping[str, str], value: float) -> None:
    """Adds one sample of a tenant series to the row its labels name."""
    key = _row_key(series, labels)
    if key is None or not math.isfinite(value):  # NaN or Inf: nothing to add up
        return
    row = rows.setdefault(key, Row(*key))
    setattr(row, _FIELDS[series], getattr(row, _FIELDS[series]) + value)


def parse_page(text: str, rows: dict[RowKey, Row], source: str) -> None:
    """Adds a gateway's /metrics page to `rows`; UsageError when it is not a metrics page."""
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser raises ValueError, and others on odd input
        raise UsageError(f"{source} did not answer with Prometheus metrics ({e})") from None
    if not families:
        raise UsageError(f"{source} answered with no metrics at all")
    for family in families:
        for sample in family.samples:
            if sample.name in _FIELDS:
                add(rows, sample.name, sample.labels, float(sample.value))


def prometheus_query(series: str, seconds: int) -> str:
    """The query for one tenant series over the range ending at the query's time."""
    labels = ", ".join(GATEWAY_SERIES[series])
    return f"sum by ({labels}) (increase({series}[{seconds}s]))"


def parse_prometheus(answer: Any, series: str, rows: dict[RowKey, Row], source: str) -> None:
    """Adds the answer of /api/v1/query (an instant vector) to `rows`."""
    if not isinstance(answer, Mapping) or "status" not in answer:
        raise UsageError(f"{source} did not answer like the Prometheus HTTP API")
    if answer["status"] != "success":
        raise UsageError(f"{source}: {answer.get('errorType', 'error')}: {answer.get('error')}")
    data = answer.get("data")
    if not isinstance(data, Mapping) or data.get("resultType") != "vector":
        raise UsageError(f"{source} did not answer with an instant vector")
    for item in data.get("result") or []:
        try:
            labels, value = item["metric"], float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            raise UsageError(f"{source} answered a sample it did not shape as one") from None
        add(rows, series, labels, value)


def sorted_rows(rows: Mapping[RowKey, Row]) -> list[Row]:
    return [rows[k] for k in sorted(rows)]


# ------------------------------------------------------------------------------ the range


def parse_time(text: str, now: datetime.datetime) -> datetime.datetime:
    """`now`, a duration before now (`90m`, `24h`, `7d`), a date (UTC midnight) or an
    RFC 3339 time; UsageError otherwise."""
    if text == "now":
        return now
    found = _DURATION.match(text)
    if found:
        return now - datetime.timedelta(seconds=int(found[1]) * _UNIT_SECONDS[found[2]])
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{text!r} is not a time: give now, a duration ago (30m, 24h, 7d), a date "
            "(2026-12-01) or an RFC 3339 time (2026-12-01T00:00:00Z)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def time_range(since: str, until: str, now: datetime.datetime) -> tuple[float, int]:
    """The range as (its end in unix seconds, its length in whole seconds)."""
    start, end = parse_time(since, now), parse_time(until, now)
    seconds = int((end - start).total_seconds())
    if seconds < 1:
        raise UsageError(f"--since {since} is not before --until {until}")
    return end.timestamp(), seconds


# ---------------------------------------------------------------------------------- output


COLUMNS = ("tenant", "key", "model", "served_by", "requests", "tokens", "rate_limited")
_HEADINGS = ("TENANT", "KEY", "MODEL", "SERVED BY", "REQUESTS", "TOKENS", "RATE LIMITED")


def _whole(value: float) -> int:
    """Counts are whole; Prometheus' increase() extrapolates to the range's edges."""
    return round(value)


def _values(row: Row) -> list[str | int]:
    return [
        row.tenant, row.key, row.model, row.served_by,
        _whole(row.requests), _whole(row.tokens), _whole(row.rate_limited),
    ]  # fmt: skip


def render(rows: Sequence[Row], output: str) -> str:
    """The report in the chosen format (the table and csv end with a newline)."""
    if output == "json":
        items = [{**asdict(r), **dict(zip(COLUMNS[4:], _values(r)[4:], strict=True))} for r in rows]
        return json.dumps(items, indent=2) + "\n"
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(_values(r) for r in rows)
        return buffer.getvalue()
    return _table([list(_HEADINGS), *([str(v) for v in _values(r)] for r in rows)])


def _table(lines: Iterable[list[str]]) -> str:
    lines = list(lines)
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    out = []
    for line in lines:
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in pairs]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------- I/O


def metrics_url(url: str) -> str:
    """A gateway's admin URL: its /metrics when no path is given."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https") or not rest:
        raise UsageError(f"{url!r} is not an http(s) URL")
    return url if "/" in rest.rstrip("/") else url.rstrip("/") + METRICS_PATH


async def _get_text(session: aiohttp.ClientSession, url: str, **params: str) -> str:
    try:
        async with session.get(url, params=params or None) as response:
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk  # decompressed: the cap holds against a compressed bomb too
                if len(body) > MAX_PAGE_BYTES:
                    raise UsageError(f"{url} answered more than {MAX_PAGE_BYTES} bytes")
            text = body.decode("utf-8", "replace")
            # Prometheus answers a bad query with 400 and a JSON error: let it be read.
            if response.status != 200 and not (params and response.status in (400, 422)):
                raise UsageError(f"{url} answered HTTP {response.status}")
            return text
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise UsageError(f"cannot read {url}: {type(e).__name__}: {e}".rstrip(": ")) from None


async def from_gateways(urls: Sequence[str], timeout: float) -> list[Row]:
    rows: dict[RowKey, Row] = {}
    targets = [metrics_url(u) for u in urls]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        pages = await asyncio.gather(*(_get_text(session, u) for u in targets))
    for url, page in zip(targets, pages, strict=True):
        parse_page(page, rows, url)
    return sorted_rows(rows)


async def from_prometheus(base: str, end: float, seconds: int, timeout: float) -> list[Row]:
    metrics_url(base)  # refuses what is not an http(s) URL
    url = base.rstrip("/") + "/api/v1/query"
    rows: dict[RowKey, Row] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        answers = await asyncio.gather(
            *(
                _get_text(session, url, query=prometheus_query(s, seconds), time=f"{end:.3f}")
                for s in _FIELDS
            )
        )
    for series, text in zip(_FIELDS, answers, strict=True):
        try:
            answer = json.loads(text)
        except ValueError:
            raise UsageError(f"{url} did not answer like the Prometheus HTTP API") from None
        parse_prometheus(answer, series, rows, url)
    return sorted_rows(rows)


# ------------------------------------------------------------------------------ the command


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Requests, tokens and 429s of ClientPolicy tenants, per tenant, key, model and who "
        "served them: from the gateways' admin /metrics, or from Prometheus over a range."
    )
    source = parser.add_argument_group("where from (one of)")
    source.add_argument(
        "--gateway", action="append", default=[], metavar="URL",
        help="a gateway replica's admin URL (its /metrics); repeat for each replica: summed",
    )  # fmt: skip
    source.add_argument(
        "--prometheus", metavar="URL", help="a Prometheus that scrapes the gateways"
    )
    parser.add_argument(
        "--since", metavar="TIME",
        help=f"with --prometheus: start of the range (default {DEFAULT_SINCE} ago): a duration "
        "ago (30m, 24h, 7d), a date (UTC) or an RFC 3339 time",
    )  # fmt: skip
    parser.add_argument(
        "--until", metavar="TIME", help="with --prometheus: end of the range (default now)"
    )
    parser.add_argument("--output", "-o", choices=OUTPUTS, default="table", help="format")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")


async def _rows(args: argparse.Namespace, now: datetime.datetime) -> list[Row]:
    if bool(args.gateway) == bool(args.prometheus):
        raise UsageError("give --gateway URL (repeatable) or --prometheus URL, not both")
    if args.gateway:
        if args.since or args.until:
            raise UsageError(
                "--since and --until need --prometheus (a gateway counts from its own start)"
            )
        return await from_gateways(args.gateway, args.timeout)
    end, seconds = time_range(args.since or DEFAULT_SINCE, args.until or "now", now)
    return await from_prometheus(args.prometheus, end, seconds, args.timeout)


def run(args: argparse.Namespace) -> int:
    try:
        rows = asyncio.run(_rows(args, datetime.datetime.now(datetime.UTC)))
    except UsageError as e:
        print(f"hedge usage: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(render(rows, args.output))
    return 0
