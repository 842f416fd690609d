"""The HTML report: its SVG charts (pure), and one report built from a real stack's ClickHouse."""

from __future__ import annotations

import datetime as dt
import json
import uuid
import xml.etree.ElementTree as ET
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from chargemesh.infra.report import svg_charts as charts
from chargemesh.checks import InvariantError
from chargemesh.infra.report.html import build_report, money, render_html
from chargemesh.sinks.migrate import clickhouse_client
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import now_ms

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, open_market
from tests.integration.test_sessions_pipeline import MINUTE_MS, TARIFF, Session, settlement_records

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def marks(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}{tag}") if e.get("class") == cls]


def texts(root: ET.Element) -> list[str]:
    return [e.text or "" for e in root.iter(f"{SVG}text")]


# ---- charts, pure -------------------------------------------------------------------------------

def test_heatmap_draws_one_cell_per_station_hour_with_labels_and_unit() -> None:
    root = parse(charts.heatmap("Utilisation", ["st-a", "st-b", "st-c"],
                                ["10:00", "11:00", "12:00", "13:00"],
                                [[0.0, 50.0, 100.0, None], [25.0, 0.0, 0.0, 0.0],
                                 [10.0, 20.0, 30.0, 40.0]],
                                x_label="hour (UTC)", y_label="station", value_unit="% reserved",
                                value_max=100.0))
    cells = marks(root, "rect", "cell")
    assert len(cells) == 12
    assert {"st-a", "st-b", "st-c", "hour (UTC)", "station", "% reserved"} <= set(texts(root))
    fills = [c.get("fill") for c in cells]
    assert fills[3] == "#dddddd"  # no data is grey, not zero
    assert fills[0] == "#ffffff" and fills[2] == "#08306b"  # 0 % white, 100 % darkest
    assert cells[1].find(f"{SVG}title").text == "st-a @ 11:00: 50 % reserved"


def test_grouped_bars_one_bar_per_present_value_with_legend_and_axis_labels() -> None:
    root = parse(charts.grouped_bars("Energy", ["US-CA", "DE-BY"], ["USD", "EUR", "GBP"],
                                     [[366.5, None, 2.0], [None, 42.0, None]],
                                     x_label="jurisdiction", y_label="energy (kWh)"))
    bars = marks(root, "rect", "bar")
    assert len(bars) == 3
    assert [b.find(f"{SVG}title").text for b in bars] == [
        "US-CA / USD: 366.5", "US-CA / GBP: 2", "DE-BY / EUR: 42"]
    assert len(marks(root, "rect", "legend")) == 3
    assert {"US-CA", "DE-BY", "jurisdiction", "energy (kWh)", "USD", "EUR"} <= set(texts(root))
    heights = [float(b.get("height", "0")) for b in bars]
    assert heights[0] > heights[2] > 0  # scaled to value


def test_grouped_bars_with_a_negative_value_grow_down_from_zero() -> None:
    root = parse(charts.grouped_bars("Revenue", ["a", "b"], ["EUR"], [[10.0], [-5.0]],
                                     x_label="x", y_label="revenue (EUR)"))
    up, down = marks(root, "rect", "bar")
    assert float(up.get("y", "0")) + float(up.get("height", "0")) == pytest.approx(
        float(down.get("y", "0")))


def test_timeline_draws_each_series_markers_and_reference_line() -> None:
    series = [charts.Series("s1", [(-20.0, 0.42), (0.0, 0.61), (20.0, 0.61)]),
              charts.Series("s2", [(-10.0, 0.40), (5.0, 0.40)])]
    root = parse(charts.timeline(
        "Re-pricing", series, x_label="time (min)", y_label="rate (USD/kWh)",
        markers=[charts.Marker(0, 0.0, 0.61, "proposed", filled=False),
                 charts.Marker(0, 1.0, 0.61, "accepted")],
        vertical_lines=[(0.0, "grid event")]))
    lines = marks(root, "polyline", "line")
    assert len(lines) == 2
    # A step line holds its value until the next point: 3 points -> 5 vertices.
    assert len(lines[0].get("points", "").split()) == 5
    assert len(marks(root, "circle", "marker")) == 2
    assert len(marks(root, "line", "vline")) == 1
    assert {"time (min)", "rate (USD/kWh)", "grid event", "proposed", "accepted"} <= set(
        texts(root))


def test_histogram_counts_every_value_and_marks_percentiles() -> None:
    values = [10.0, 11.0, 12.0, 12.5, 30.0, 95.0]
    edges, counts = charts.histogram_bins(values, 5)
    assert sum(counts) == len(values) and counts[-1] == 1  # max lands in the last bin
    assert edges[0] == 10.0 and edges[-1] == 95.0
    root = parse(charts.histogram("walk-up latency", values, x_label="latency (ms)", bins=5,
                                  lines=[(12.0, "p50 12.0 ms"), (95.0, "p99 95.0 ms")]))
    bars = marks(root, "rect", "bar")
    assert len(bars) == sum(1 for c in counts if c)
    assert sum(int(b.find(f"{SVG}title").text.rsplit(": ", 1)[1]) for b in bars) == 6
    assert len(marks(root, "line", "vline")) == 2
    assert {"latency (ms)", "count", "p50 12.0 ms", "p99 95.0 ms"} <= set(texts(root))


def test_every_chart_says_no_data_when_empty() -> None:
    empties = [
        charts.heatmap("h", [], [], [], x_label="x", y_label="y", value_unit="%"),
        charts.grouped_bars("g", ["a"], ["s"], [[None]], x_label="x", y_label="y"),
        charts.timeline("t", [], x_label="x", y_label="y"),
        charts.histogram("h", [], x_label="latency (ms)"),
    ]
    for svg in empties:
        root = parse(svg)
        assert "no data" in texts(root)
        assert not marks(root, "rect", "bar") and not marks(root, "rect", "cell")


def test_one_value_histogram_and_flat_timeline_still_have_axes() -> None:
    root = parse(charts.histogram("h", [42.0, 42.0], x_label="latency (ms)"))
    assert len(marks(root, "rect", "bar")) == 1
    flat = parse(charts.timeline("t", [charts.Series("s", [(0.0, 0.5), (1.0, 0.5)])],
                                 x_label="x (min)", y_label="rate (EUR/kWh)"))
    assert len([t for t in texts(flat) if t.replace(".", "").isdigit()]) >= 4


def test_labels_are_escaped() -> None:
    root = parse(charts.grouped_bars("<&>", ["a<b"], ["s&t"], [[1.0]], x_label="x<",
                                     y_label="y&"))
    assert "a<b" in texts(root) and "x<" in texts(root)


def test_nice_ticks_cover_the_range_with_round_steps() -> None:
    ticks = charts.nice_ticks(0.0, 183.68)
    assert ticks[0] == 0.0 and ticks[-1] >= 183.68 and ticks == [0, 50, 100, 150, 200]
    assert charts.nice_ticks(-5.0, 10.0)[0] <= -5.0
    assert charts.tick_label(0.1 + 0.2) == "0.3" and charts.tick_label(1_500_000) == "1.5M"


def test_count_axes_have_whole_ticks_only() -> None:
    assert charts.nice_ticks(0.0, 1.0, whole=True) == [0, 1]
    assert charts.nice_ticks(0.0, 12.0, whole=True) == [0, 5, 10, 15]
    assert charts.nice_ticks(0.0, 12.0) == [0, 2.5, 5, 7.5, 10, 12.5]
    histogram = parse(charts.histogram("h", [1.0, 2.0], x_label="latency (ms)"))
    bars = parse(charts.grouped_bars("Rejections", ["A", "B"], ["market"], [[1.0], [1.0]],
                                     x_label="reason", y_label="count"))
    for root in (histogram, bars):
        ticks = [e.text or "" for e in root.iter(f"{SVG}text") if e.get("class") == "ytick"]
        assert ticks == ["0", "1"]


def test_bar_labels_are_cut_only_when_their_group_is_too_narrow() -> None:
    reasons = ["CREDENTIAL_REVOKED", "METER_WENT_BACKWARDS", "REPLAYED_EVENT_ID"]
    wide = parse(charts.grouped_bars("r", reasons, ["s"], [[1.0]] * 3, x_label="x",
                                     y_label="y", frame=charts.Frame(width=1300)))
    assert set(reasons) <= set(texts(wide))
    narrow = parse(charts.grouped_bars("r", reasons, ["s"], [[1.0]] * 3, x_label="x",
                                       y_label="y", frame=charts.Frame(width=300)))
    labels = [e.text or "" for e in narrow.iter(f"{SVG}text") if e.get("class") == "xtick"]
    assert labels == ["CREDENT…", "METER_W…", "REPLAYE…"]  # 70 px groups: 8 characters
    titles = [b.find(f"{SVG}title").text for b in marks(narrow, "rect", "bar")]
    assert titles == [f"{r} / s: 1" for r in reasons]  # the tooltip keeps the full name


def test_money_is_exact_decimal_text_with_currency() -> None:
    assert money(Decimal("24.990000"), "EUR") == "24.99 EUR"
    assert money(Decimal("0.123400"), "USD") == "0.1234 USD"
    assert money(Decimal(-7), "USD") == "-7.00 USD"
    with pytest.raises(InvariantError):
        money(1.5, "USD")  # type: ignore[arg-type]


def sample_figures(scope: str) -> dict[str, Any]:
    """Figures as ``collect_figures`` returns them, every section in ``scope``."""
    scoped = scope != "cumulative"
    return {
        "meta": {"run_id": "r1" if scoped else None, "run": None, "events": 0,
                 "events_in_database": 0, "first_event_at_ms": None, "last_event_at_ms": None,
                 "generated_at_ms": 0, "scope": scope, "id_prefix": "s1" if scoped else None,
                 "id_pattern": "(^|:)s1([-:]|$)" if scoped else None,
                 "cumulative_reason": None if scoped else "no simulation run is recorded",
                 "query_command": "clickhouse-client --port 1 -d chargemesh",
                 "database": "chargemesh"},
        "utilisation": {"scope": scope, "stations": ["s"], "hours_ms": [0],
                        "utilisation_percent": [[50.0]]},
        "energy_revenue": {"scope": scope, "by_jurisdiction": [
            {"jurisdiction": "US-CA", "currency": "USD", "settlements": 1,
             "energy_import_wh": 1500, "revenue": "1.230000"}],
            "revenue_by_currency": {"USD": "1.230000"}},
        "reprice": {"scope": scope, "grid_event_id": None, "sessions": [], "grid_events": 0},
        "rejections": {"scope": scope, "by_reason_and_topic": [
            {"reason_code": "BAD_SIGNATURE", "source_topic": "chargemesh.market.v1",
             "count": 2}]},
        "latencies": {"scope": scope, "kinds": []},
        "tables": [{"key": "disputes", "title": "Disputes", "source": "disputes_current",
                    "scope": scope, "scoped_by": "dispute_id", "headers": ["dispute"],
                    "rows": [["s1-dispute-1"]], "total_rows": 1}],
    }


def test_rendered_html_is_self_contained_and_every_plot_is_valid_svg() -> None:
    figures = sample_figures("run r1")
    page = render_html(figures)
    assert "<script" not in page and "src=" not in page and "<link" not in page
    svgs = Page.of(page).svgs
    assert len(svgs) == 5  # heatmap, energy, revenue (USD), re-pricing (empty), rejections
    for svg in svgs:
        parse(svg)
    assert "1.23 USD" in page and "1.500" in page


def test_every_section_says_whether_it_reads_one_run_or_every_run() -> None:
    sections = 7  # utilisation, revenue, re-pricing, rejections, latencies, one table, header
    run = render_html(sample_figures("run r1"))
    assert run.count("Scope: run r1") == sections and "<strong>Cumulative" not in run
    assert "match(station_id, &#x27;(^|:)s1([-:]|$)&#x27;)" in run  # the query to see it
    everything = render_html(sample_figures("cumulative"))
    assert "Scope: cumulative</strong> (no simulation run is recorded)" in everything
    assert everything.count("<strong>Cumulative</strong>: every row") == sections - 1
    assert "Scope: run" not in everything


# ---- the report on the real stack ---------------------------------------------------------------

class Page(HTMLParser):
    """Table rows (cell texts) and raw <svg> elements of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.svgs: list[str] = []
        self._cell: list[str] | None = None

    @classmethod
    def of(cls, text: str) -> Page:
        page = cls()
        page.feed(text)
        start = 0
        while (i := text.find("<svg", start)) >= 0:
            end = text.index("</svg>", i) + len("</svg>")
            page.svgs.append(text[i:end])
            start = end
        return page

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _settle(mesh: Mesh, prefix: str, currency: str, t: int) -> str:
    market = open_market(mesh, prefix, t, [sdk.connector("c1", 150_000)], tariff=TARIFF,
                         currency=currency, grid_zone_id=f"zone-{prefix}")
    vehicle = market.vehicle("ev")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    session = Session(market, vehicle, "s1", market.start_ms + SLOT_MS)
    mesh.publish(session.booking, session.start(), session.read(10, 9_337),
                 session.read(20, 17_901))
    mesh.publish(sdk.session_stopped(vehicle, session_id=session.session_id,
                                     station_id=market.station_id,
                                     at_ms=session.start_ms + 25 * MINUTE_MS),
                 session.close(25, 21_456))
    settlement_records(mesh, session.session_id, {"SettlementAdmitted"})
    return session.session_id


def _insert(mesh: Mesh, table: str, rows: list[tuple[Any, ...]]) -> None:
    client = clickhouse_client(mesh.settings)
    try:
        client.execute(f"INSERT INTO {table} VALUES", rows)
    finally:
        client.disconnect()


@pytest.mark.integration
def test_report_shows_currency_totals_and_latency_percentiles_as_clickhouse_has_them(
        mesh: Mesh, tmp_path: Path) -> None:
    t = now_ms()
    sessions = [_settle(mesh, "rpt-usd", "USD", t), _settle(mesh, "rpt-eur", "EUR", t)]
    mesh.wait_rows("SELECT session_id FROM settlements FINAL WHERE session_id IN %(s)s",
                   {"s": tuple(sessions)}, count=2)
    run_id = f"test-report-{uuid.uuid4()}"
    latencies = [48.5, 51.25, 52.0, 60.75, 140.0]  # p50 (exact) is the middle one: 52.0
    at = dt.datetime.fromtimestamp(t // 1000, tz=dt.UTC).replace(tzinfo=None)
    _insert(mesh, "simulation_latencies", [(run_id, "walk_up_authorisation", f"order-{i}", v,
                                            t, at) for i, v in enumerate(latencies)])
    _insert(mesh, "simulation_runs", [(run_id, 1234, t, t + 1000, at,
                                       json.dumps({"stations": 2}), "{}")])

    html_path = build_report(mesh.settings, tmp_path, run_id)

    page_text = html_path.read_text(encoding="utf-8")
    page = Page.of(page_text)
    for svg in page.svgs:
        parse(svg)
    # Revenue: every settlement (a reversal nets its voided one out) but those that expired
    # without their signatures (issue 16: they never became money).
    totals = dict(mesh.query("SELECT currency, sum(total_amount) FROM settlements FINAL "
                             "WHERE kind != 'INTERNAL_ACCOUNTING' AND settlement_id NOT IN "
                             "(SELECT settlement_id FROM settlement_expiries) "
                             "GROUP BY currency"))
    assert {"USD", "EUR"} <= set(totals)
    shown = {row[0]: row[1] for row in page.rows if len(row) == 2 and row[0] in totals}
    for currency, total in totals.items():
        amount, unit = shown[currency].split(" ")
        assert unit == currency and Decimal(amount) == total
    (p50,), = mesh.query("SELECT quantileExact(0.5)(latency_ms) FROM simulation_latencies FINAL "
                         "WHERE run_id = %(r)s AND kind = 'walk_up_authorisation'", {"r": run_id})
    assert p50 == sorted(latencies)[2]
    latency_row = next(r for r in page.rows if r[:1] == ["walk_up_authorisation"])
    assert latency_row[1:3] == ["5", f"{p50:.1f}"]
    assert f"p50 {p50:.1f} ms" in page_text and "1234" in page_text  # histogram line, seed
    figures = json.loads(html_path.with_suffix(".json").read_text())
    assert figures["meta"]["run_id"] == run_id
    assert {c: Decimal(v) for c, v in figures["energy_revenue"]["revenue_by_currency"].items()
            } == totals
    assert figures["latencies"]["kinds"][0]["p50_ms"] == p50
    assert f"--port {mesh.settings.clickhouse_port} -d" in page_text
