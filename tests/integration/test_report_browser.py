"""The report of a simulated day, opened as its readers open it: in a real browser.

`chargemesh simulate` runs the smallest market that exercises every capability on a private
stack and writes its report; headless Debian Chromium (through Debian's chromedriver) loads it
from ``file://``. Every chart must be painted with data (its marks match the figures the report
wrote beside it, lie inside the chart, and no label is cut off or collides with its neighbour),
every table must show its rows, the page must raise no script error and log no console error
(Chromium logs malformed SVG attributes such as ``NaN`` there), every internal reference must
resolve, and nothing may load from outside the file. A deliberately broken page proves each
check can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.conftest import private_settings
from tests.integration.test_simulate import CHARGEMESH, RUN_TIMEOUT_S, SMALL

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# STACK.md: as root, offline; without the background-networking flags Chromium's own
# connections are refused many at a time.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000")
PAGE_LOAD_TIMEOUT_S = 30
SCRIPT_TIMEOUT_S = 30
DOWN_TIMEOUT_S = 120
MARK_CLASSES = ("cell", "bar", "line", "marker")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is absent: infra/setup.sh installs Debian's chromium and chromium-driver")

# Runs before any script of every page: collects uncaught errors, failed resource loads and
# unhandled promise rejections (console messages come from the browser log instead).
COLLECT_ERRORS_JS = """
window.__pageErrors = [];
window.addEventListener('error', (e) => {
  const t = e.target;
  window.__pageErrors.push(t && t !== window
    ? `failed to load <${t.tagName.toLowerCase()}> ${t.src || t.href || ''}`
    : `${e.message} (${e.filename}:${e.lineno})`);
}, true);
window.addEventListener('unhandledrejection', (e) => {
  window.__pageErrors.push(`unhandled rejection: ${e.reason}`);
});
"""

# What a reader sees, measured by the browser's own layout and rendering.
INSPECT_JS = """
const markSelector = arguments[0].map((c) => '.' + c).join(',');
const painted = (el) => {
  const style = getComputedStyle(el);
  if (style.display === 'none' || style.visibility !== 'visible') return false;
  if (Number(style.opacity) === 0 || (style.fill === 'none' && style.stroke === 'none')) {
    return false;
  }
  if (el instanceof SVGPolylineElement) return el.getTotalLength() > 0;  // flat: zero height
  const box = el.getBBox();
  return box.width > 0 && box.height > 0;
};
const within = (r, f) => r.left >= f.left - 1 && r.right <= f.right + 1
  && r.top >= f.top - 1 && r.bottom <= f.bottom + 1;
const overlap = (a, b) => a.left < b.right - 1 && b.left < a.right - 1
  && a.top < b.bottom - 1 && b.top < a.bottom - 1;
const titleOf = (el) => {
  const t = el.querySelector(':scope > title');
  return t ? t.textContent : '';
};
const label = (t) => Array.from(t.childNodes).filter((n) => n.nodeType === Node.TEXT_NODE)
  .map((n) => n.textContent).join('').trim();

const charts = Array.from(document.querySelectorAll('svg')).map((svg) => {
  const frame = svg.getBoundingClientRect();
  const texts = Array.from(svg.querySelectorAll('text')).filter((t) => label(t));
  const ticks = texts.filter((t) => /tick/.test(t.getAttribute('class') || '')
    && !t.hasAttribute('transform'));
  const collisions = [];
  ticks.forEach((a, i) => ticks.slice(i + 1).forEach((b) => {
    if (a.getAttribute('class') === b.getAttribute('class')
        && overlap(a.getBoundingClientRect(), b.getBoundingClientRect())) {
      collisions.push(`${label(a)} / ${label(b)}`);
    }
  }));
  const title = titleOf(svg);
  return {
    title, width: frame.width, height: frame.height,
    titleShown: texts.some((t) => label(t) === title && painted(t)),
    empty: svg.querySelector('.empty') !== null,
    marks: Array.from(svg.querySelectorAll(markSelector)).map((m) => ({
      cls: m.getAttribute('class'), painted: painted(m),
      inside: within(m.getBoundingClientRect(), frame), title: titleOf(m)})),
    cutOff: texts.filter((t) => !within(t.getBoundingClientRect(), frame)).map(label),
    collisions,
  };
});

const tables = Array.from(document.querySelectorAll('table')).map((t) => ({
  headers: Array.from(t.querySelectorAll('thead th')).map((th) => th.textContent),
  rows: Array.from(t.querySelectorAll('tbody tr')).map(
    (tr) => Array.from(tr.cells).map((td) => td.textContent)),
  shown: t.getBoundingClientRect().height > 0,
}));

const ids = new Map();
document.querySelectorAll('[id]').forEach((e) => ids.set(e.id, (ids.get(e.id) || 0) + 1));
const broken = [];
const idLists = ['aria-labelledby', 'aria-describedby', 'aria-controls', 'for', 'headers',
                 'list', 'form'];
const urlRefs = (text) => Array.from(text.matchAll(/url\\(\\s*['"]?#([^'")\\s]+)/g), (m) => m[1]);
for (const el of document.querySelectorAll('*')) {
  for (const attr of el.attributes) {
    const value = attr.value;
    const refs = urlRefs(value);
    if (/^(xlink:)?href$/.test(attr.name) && value.startsWith('#') && value.length > 1) {
      refs.push(decodeURIComponent(value.slice(1)));
    }
    if (idLists.includes(attr.name)) refs.push(...value.split(/\\s+/).filter(Boolean));
    refs.filter((id) => !ids.has(id)).forEach(
      (id) => broken.push(`<${el.tagName.toLowerCase()} ${attr.name}="${value}">`));
  }
}
document.querySelectorAll('style').forEach((s) => urlRefs(s.textContent)
  .filter((id) => !ids.has(id)).forEach((id) => broken.push(`<style> url(#${id})`)));
const external = Array.from(document.querySelectorAll('[src], link[href], [href]'))
  .map((e) => e.getAttribute('src') || e.getAttribute('href'))
  .filter((ref) => ref && !ref.startsWith('#'));

return {
  charts, tables, broken, external,
  duplicateIds: Array.from(ids).filter(([, n]) => n > 1).map(([id]) => id),
  errors: window.__pageErrors || ['the error collector did not run'],
};
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile, collecting page errors from the first script."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
        driver.set_script_timeout(SCRIPT_TIMEOUT_S)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                               {"source": COLLECT_ERRORS_JS})
        yield driver
    finally:
        driver.quit()


def browser_log(driver: webdriver.Chrome, name: str) -> list[dict[str, Any]]:
    """Entries of one of Chromium's logs since the last read (``goog:loggingPrefs``)."""
    entries: list[dict[str, Any]] = driver.get_log(name)  # type: ignore[no-untyped-call]
    return entries


def open_and_inspect(driver: webdriver.Chrome, page: Path) -> dict[str, Any]:
    """Load ``page`` as a reader would and return what the browser made of it, with the
    console's SEVERE entries (script errors, failed loads, malformed SVG attributes) and every
    other resource the page asked for (the network log; resource timing omits file:// loads)."""
    for log in ("browser", "performance"):
        browser_log(driver, log)  # drop what earlier pages (and the start page) logged
    url = page.as_uri()
    driver.get(url)
    seen: dict[str, Any] = driver.execute_script(INSPECT_JS, list(MARK_CLASSES))
    seen["console_errors"] = [entry["message"] for entry in browser_log(driver, "browser")
                              if entry["level"] == "SEVERE"]
    network = [json.loads(entry["message"])["message"]
               for entry in browser_log(driver, "performance")]
    seen["loaded"] = [m["params"]["request"]["url"] for m in network
                      if m["method"] == "Network.requestWillBeSent"
                      and m["params"].get("documentURL") == url
                      and m["params"]["request"]["url"] != url]
    return seen


@pytest.fixture(scope="module")
def simulated_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML report `chargemesh simulate` writes for the smallest every-capability market,
    on a stack of its own (stopped again by simulate itself, or by `down` if it failed)."""
    settings = private_settings(tmp_path_factory.mktemp("report-stack"))
    out_dir = tmp_path_factory.mktemp("report")
    env = dict(os.environ, **settings.as_environ(), COLUMNS="160")
    try:
        done = subprocess.run(
            [CHARGEMESH, "simulate", "--seed", str(SMALL.seed), "--stations",
             str(SMALL.stations), "--vehicles", str(SMALL.vehicles), "--hours", str(SMALL.hours),
             "--out", str(out_dir)],
            env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    finally:
        subprocess.run([CHARGEMESH, "down"], env=env, capture_output=True,
                       timeout=DOWN_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (page,) = out_dir.glob("report-*.html")
    return page


@pytest.fixture(scope="module")
def figures(simulated_report: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(simulated_report.with_suffix(".json").read_text())
    return loaded


@pytest.fixture(scope="module")
def seen(browser: webdriver.Chrome, simulated_report: Path) -> dict[str, Any]:
    return open_and_inspect(browser, simulated_report)


def expected_marks(figures: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Chart title -> how many marks of each class the report's figures call for."""
    util, energy = figures["utilisation"], figures["energy_revenue"]["by_jurisdiction"]
    reprice, rejections = figures["reprice"], figures["rejections"]["by_reason_and_topic"]
    currencies = sorted({r["currency"] for r in energy})
    sessions = reprice["sessions"]
    out = {
        "Slot utilisation per station and hour": {
            "cell": len(util["stations"]) * len(util["hours_ms"])},
        "Energy delivered by jurisdiction (settled)": {"bar": len(energy)},
        **{f"Revenue in {c} by jurisdiction": {"bar": sum(r["currency"] == c for r in energy)}
           for c in currencies},
        f"Re-pricing around a grid event {reprice['grid_event_id']}": {
            "line": len(sessions),
            "marker": len(sessions) + sum(bool(s["accepted_at_ms"]) for s in sessions)},
        "Rejections by reason and source topic": {"bar": len(rejections)},
    }
    for kind in figures["latencies"]["kinds"]:
        out[f"{kind['kind']} latency (n={kind['count']})"] = {}  # bars: one per non-empty bin
    return out


# ---- the report of a simulated day ------------------------------------------------------------

@pytest.mark.integration
def test_the_simulated_day_gives_every_chart_data(figures: dict[str, Any]) -> None:
    assert len(figures["utilisation"]["stations"]) >= 2 and figures["utilisation"]["hours_ms"]
    assert len(figures["energy_revenue"]["revenue_by_currency"]) >= 2
    assert figures["reprice"]["sessions"] and figures["rejections"]["by_reason_and_topic"]
    kinds = {k["kind"] for k in figures["latencies"]["kinds"]}
    assert {"walk_up_authorisation", "settlement_finality", "reprice"} <= kinds


@pytest.mark.integration
def test_every_chart_is_painted_with_its_data(seen: dict[str, Any],
                                              figures: dict[str, Any]) -> None:
    charts = {c["title"]: c for c in seen["charts"]}
    expected = expected_marks(figures)
    assert sorted(charts) == sorted(expected) and len(charts) == len(seen["charts"])
    for title, chart in charts.items():
        assert chart["width"] > 0 and chart["height"] > 0, title
        assert chart["titleShown"] and not chart["empty"], title
        assert chart["marks"] and all(m["painted"] and m["inside"] for m in chart["marks"]), title
        drawn = {cls: sum(m["cls"] == cls for m in chart["marks"]) for cls in MARK_CLASSES}
        for cls, count in expected[title].items():
            assert drawn[cls] == count, (title, cls, drawn)
        assert chart["cutOff"] == [] and chart["collisions"] == [], title
    for kind in figures["latencies"]["kinds"]:
        bars = charts[f"{kind['kind']} latency (n={kind['count']})"]["marks"]
        # Each bar's tooltip ends in its count; together they hold every measurement.
        assert sum(int(b["title"].rsplit(": ", 1)[1]) for b in bars) == kind["count"]


@pytest.mark.integration
def test_every_table_shows_its_rows(seen: dict[str, Any], figures: dict[str, Any]) -> None:
    shown = [(t["headers"], t["rows"]) for t in seen["tables"]]
    assert all(t["shown"] and t["rows"] for t in seen["tables"])
    for table in figures["tables"]:
        assert (table["headers"], table["rows"]) in shown, table["key"]
    latency_rows = [row[:2] for headers, rows in shown if headers[:1] == ["kind"] for row in rows]
    assert latency_rows == [[k["kind"], str(k["count"])] for k in figures["latencies"]["kinds"]]


@pytest.mark.integration
def test_the_market_rules_of_the_day_are_tabled(figures: dict[str, Any]) -> None:
    """Issue 16: the simulator's price window, curtailment without observers, tariff version,
    unanswered re-price, expiry (naming its missing signer) and reversal, one row each."""
    (table,) = [t for t in figures["tables"] if t["key"] == "market_rules"]
    rules = sorted(row[0] for row in table["rows"] if row[0] != "sessions power-limited")
    assert rules == ["curtailment (no observers)", "price window", "settlement expired",
                     "settlement reversed", "tariff version", "unanswered re-price"]
    expired = next(row for row in table["rows"] if row[0] == "settlement expired")
    assert "missing vehicle:" in expired[2]
    reversal = next(row for row in table["rows"] if row[0] == "settlement reversed")
    assert reversal[1].startswith("rev:") and "voids stl:" in reversal[2]


@pytest.mark.integration
def test_the_page_raises_no_script_error_and_logs_no_console_error(
        seen: dict[str, Any]) -> None:
    assert seen["errors"] == []
    assert seen["console_errors"] == []


@pytest.mark.integration
def test_every_internal_reference_resolves_and_nothing_loads_from_outside(
        seen: dict[str, Any]) -> None:
    assert seen["broken"] == [] and seen["duplicateIds"] == []
    assert seen["external"] == [] and seen["loaded"] == []


# ---- the checks themselves --------------------------------------------------------------------

BROKEN_PAGE = """<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>
<title>broken</title></head><body>
<a href='#nowhere'>dangling link</a><p id='twice'>a</p><p id='twice'>b</p>
<svg xmlns='http://www.w3.org/2000/svg' width='200' height='100'><title>Broken chart</title>
<text x='100' y='20' text-anchor='middle'>Broken chart</text>
<rect class='bar' x='10' y='30' width='NaN' height='10' fill='url(#no-gradient)'/>
<rect class='bar' x='150' y='30' width='80' height='10' fill='#0072B2'/>
<text class='xtick' x='50' y='90'>first label</text><text class='xtick' x='60' y='90'>second</text>
<text x='190' y='60'>cut off at the edge</text>
</svg>
<img src='missing.png' alt='missing'>
<script>throw new Error('boom');</script>
</body></html>
"""


def test_the_checks_catch_a_broken_page(browser: webdriver.Chrome, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(BROKEN_PAGE, encoding="utf-8")
    seen = open_and_inspect(browser, page)
    assert any("boom" in e for e in seen["errors"])
    assert any("missing.png" in e for e in seen["errors"])
    assert any("NaN" in m for m in seen["console_errors"])
    assert any("#nowhere" in b for b in seen["broken"])
    assert any("#no-gradient" in b for b in seen["broken"])
    assert seen["duplicateIds"] == ["twice"] and seen["external"] == ["missing.png"]
    assert seen["loaded"] == [(tmp_path / "missing.png").as_uri()]
    (chart,) = seen["charts"]
    assert chart["titleShown"]
    assert [m["painted"] for m in chart["marks"]] == [False, True]
    assert [m["inside"] for m in chart["marks"]] == [True, False]
    assert chart["collisions"] == ["first label / second"]
    assert chart["cutOff"] == ["cut off at the edge"]
