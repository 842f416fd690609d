"""Small, dependency-free SVG charts for the HTML report: heatmap, grouped bars, line/step
timeline, histogram.

Every function returns one standalone ``<svg>`` element as a string (valid XML, inline in HTML),
with axes, tick labels, axis titles (the caller puts the unit in them), a legend where there is
more than one series, and a ``<title>`` tooltip per mark. Empty data gives a chart frame saying
so, never an exception. Marks carry a class (``cell``, ``bar``, ``line``, ``marker``) so tests
can count them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

from chargemesh.checks import ensure

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"
TICKS_MAX = 12
CATEGORIES_MAX = 200
SERIES_MAX = 40
HEATMAP_CELLS_MAX = 20_000
HISTOGRAM_BINS_MAX = 200
POINTS_MAX = 100_000
LABEL_CHARS_MAX = 28
LABEL_CHARS_MIN = 4
# Widest glyph advance of the 12 px DejaVu Sans tick labels (capitals, digits, '_'), so a label
# cut to ``width / TICK_CHAR_PX`` characters never runs into its neighbour.
TICK_CHAR_PX = 8.0


@dataclasses.dataclass(frozen=True)
class Frame:
    """A chart's size and the margins around its plot area (pixels)."""
    width: int = 640
    height: int = 360
    left: int = 70
    right: int = 20
    top: int = 40
    bottom: int = 60

    @property
    def plot_width(self) -> float:
        return float(self.width - self.left - self.right)

    @property
    def plot_height(self) -> float:
        return float(self.height - self.top - self.bottom)


@dataclasses.dataclass(frozen=True)
class Series:
    """One line of a timeline: (x, y) points in x order; ``step`` holds y until the next x."""
    name: str
    points: Sequence[tuple[float, float]]
    step: bool = True


@dataclasses.dataclass(frozen=True)
class Marker:
    """A point drawn on a timeline: ``filled`` or open circle, in its series' colour."""
    series: int
    x: float
    y: float
    label: str
    filled: bool = True


# ---- helpers ------------------------------------------------------------------------------------

def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def short(label: str, chars_max: int = LABEL_CHARS_MAX) -> str:
    return label if len(label) <= chars_max else label[: chars_max - 1] + "…"


def tick_label(value: float) -> str:
    """A tick value without float noise: 0.1 + 0.2 prints as 0.3, 1500000 as 1.5M."""
    magnitude = abs(value)
    if magnitude >= 1_000_000:
        return f"{value / 1_000_000:.6g}M"
    if magnitude >= 10_000:
        return f"{value / 1_000:.6g}k"
    return f"{round(value, 6):.6g}"


def nice_ticks(low: float, high: float, count: int = 5, whole: bool = False) -> list[float]:
    """Round tick values covering [low, high] (at most TICKS_MAX); ``whole``: whole numbers
    only, for axes of counts (no tick at 0.5 measurements)."""
    ensure(1 <= count <= TICKS_MAX, f"tick count out of range: {count}")
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0]
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    power = 10.0 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if whole else (1, 2, 2.5, 5, 10)
    step = next(m * power for m in steps if m * power >= raw)
    if whole:
        step = max(1.0, step)
    first = math.floor(low / step) * step
    ticks: list[float] = []
    for i in range(TICKS_MAX + 1):
        value = first + i * step
        ticks.append(round(value, 12))
        if value >= high - step * 1e-9:
            break
    return ticks


def _svg(frame: Frame, title: str, body: list[str]) -> str:
    head = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{frame.width}' "
            f"height='{frame.height}' viewBox='0 0 {frame.width} {frame.height}' role='img' "
            f"{FONT} font-size='12'>")
    return "\n".join([head, f"<title>{escape(title)}</title>",
                      f"<rect width='{frame.width}' height='{frame.height}' fill='white'/>",
                      (f"<text x='{frame.width / 2}' y='22' text-anchor='middle' font-size='15' "
                      f"font-weight='bold'>{escape(title)}</text>"), *body, "</svg>"])


def empty_chart(title: str, message: str = "no data", frame: Frame = Frame()) -> str:
    """The frame of a chart with nothing to draw: says so instead of drawing empty axes."""
    return _svg(frame, title, [
        (f"<rect class='empty' x='{frame.left}' y='{frame.top}' width='{frame.plot_width}' "
        f"height='{frame.plot_height}' fill='#f6f6f6' stroke='#ccc'/>"),
        (f"<text x='{frame.left + frame.plot_width / 2}' y='{frame.top + frame.plot_height / 2}' "
        f"text-anchor='middle' fill='#666'>{escape(message)}</text>")])


class _Scale:
    """Linear map from a data range onto a pixel range."""

    def __init__(self, low: float, high: float, pixel_low: float, pixel_high: float) -> None:
        self.low, self.high = low, (high if high > low else low + 1.0)
        self.pixel_low, self.pixel_high = pixel_low, pixel_high

    def __call__(self, value: float) -> float:
        share = (value - self.low) / (self.high - self.low)
        return self.pixel_low + share * (self.pixel_high - self.pixel_low)


def _y_axis(frame: Frame, ticks: list[float], y: _Scale, label: str) -> list[str]:
    x0 = frame.left
    parts = [(f"<line x1='{x0}' y1='{frame.top}' x2='{x0}' y2='{frame.top + frame.plot_height}' "
             "stroke='#333'/>")]
    for tick in ticks:
        py = y(tick)
        parts.append(f"<line x1='{x0}' y1='{_num(py)}' x2='{x0 + frame.plot_width}' "
                     f"y2='{_num(py)}' stroke='#e3e3e3'/>")
        parts.append(f"<text class='ytick' x='{x0 - 6}' y='{_num(py + 4)}' text-anchor='end'>"
                     f"{tick_label(tick)}</text>")
    mid = frame.top + frame.plot_height / 2
    parts.append(f"<text class='ylabel' x='16' y='{_num(mid)}' text-anchor='middle' "
                 f"transform='rotate(-90 16 {_num(mid)})'>{escape(label)}</text>")
    return parts


def _x_label(frame: Frame, label: str) -> str:
    return (f"<text class='xlabel' x='{_num(frame.left + frame.plot_width / 2)}' "
            f"y='{frame.height - 10}' text-anchor='middle'>{escape(label)}</text>")


def _x_axis_line(frame: Frame) -> str:
    bottom = frame.top + frame.plot_height
    return (f"<line x1='{frame.left}' y1='{_num(bottom)}' x2='{frame.left + frame.plot_width}' "
            f"y2='{_num(bottom)}' stroke='#333'/>")


def _legend(frame: Frame, names: Sequence[str], open_filled: bool = False) -> list[str]:
    """Swatches in one row under the title; ``open_filled`` adds the marker key."""
    parts: list[str] = []
    x = float(frame.left)
    entries = [(short(n), PALETTE[i % len(PALETTE)]) for i, n in enumerate(names)]
    for name, colour in entries:
        parts.append(f"<rect class='legend' x='{_num(x)}' y='29' width='10' height='10' "
                     f"fill='{colour}'/>")
        parts.append(f"<text x='{_num(x + 14)}' y='38' font-size='11'>{escape(name)}</text>")
        x += 24 + 6.5 * len(name)
    if open_filled:
        parts.append(f"<circle cx='{_num(x + 5)}' cy='34' r='4' fill='white' stroke='#333'/>")
        parts.append(f"<text x='{_num(x + 13)}' y='38' font-size='11'>proposed</text>")
        parts.append(f"<circle cx='{_num(x + 80)}' cy='34' r='4' fill='#333'/>")
        parts.append(f"<text x='{_num(x + 88)}' y='38' font-size='11'>accepted</text>")
    return parts


# ---- heatmap ------------------------------------------------------------------------------------

def _heat_colour(share: float) -> str:
    """White (0) to dark blue (1)."""
    share = min(1.0, max(0.0, share))
    red, green, blue = (int(255 + (a - 255) * share) for a in (8, 48, 107))
    return f"#{red:02x}{green:02x}{blue:02x}"


def heatmap(title: str, rows: Sequence[str], columns: Sequence[str],
            values: Sequence[Sequence[float | None]], x_label: str, y_label: str,
            value_unit: str, value_max: float | None = None, frame: Frame | None = None) -> str:
    """One cell per (row, column); ``None`` is drawn grey (no data). Colour bar on the right."""
    ensure(len(values) == len(rows), "heatmap: one value row per row label")
    ensure(all(len(r) == len(columns) for r in values), "heatmap: one value per column")
    ensure(len(rows) * len(columns) <= HEATMAP_CELLS_MAX, "heatmap: too many cells")
    frame = frame or Frame(width=1300, height=max(200, 110 + 22 * len(rows)), left=170,
                           right=110, top=40, bottom=70)
    if not rows or not columns:
        return empty_chart(title, frame=frame)
    found = [v for r in values for v in r if v is not None]
    top = value_max if value_max is not None else max(found, default=0.0)
    top = top if top > 0 else 1.0
    cell_w, cell_h = frame.plot_width / len(columns), frame.plot_height / len(rows)
    body: list[str] = []
    for ri, (row, row_values) in enumerate(zip(rows, values)):
        y = frame.top + ri * cell_h
        body.append(f"<text class='ytick' x='{frame.left - 6}' y='{_num(y + cell_h / 2 + 4)}' "
                    f"text-anchor='end'>{escape(short(row))}</text>")
        for ci, value in enumerate(row_values):
            fill = "#dddddd" if value is None else _heat_colour(value / top)
            shown = "no data" if value is None else f"{tick_label(value)} {value_unit}"
            body.append(f"<rect class='cell' x='{_num(frame.left + ci * cell_w)}' y='{_num(y)}' "
                        f"width='{_num(cell_w)}' height='{_num(cell_h)}' fill='{fill}' "
                        f"stroke='white' stroke-width='0.5'><title>"
                        f"{escape(f'{row} @ {columns[ci]}: {shown}')}</title></rect>")
    body += _column_labels(frame, columns, cell_w)
    body += _colour_bar(frame, top, value_unit)
    mid = frame.top + frame.plot_height / 2
    body.append(f"<text class='ylabel' x='14' y='{_num(mid)}' text-anchor='middle' "
                f"transform='rotate(-90 14 {_num(mid)})'>{escape(y_label)}</text>")
    body.append(_x_label(frame, x_label))
    return _svg(frame, title, body)


def _column_labels(frame: Frame, columns: Sequence[str], cell_w: float) -> list[str]:
    every = max(1, math.ceil(len(columns) / 24))
    bottom = frame.top + frame.plot_height
    parts = []
    for ci in range(0, len(columns), every):
        x = frame.left + (ci + 0.5) * cell_w
        parts.append(f"<text class='xtick' x='{_num(x)}' y='{_num(bottom + 14)}' "
                     f"text-anchor='end' font-size='10' transform='rotate(-35 {_num(x)} "
                     f"{_num(bottom + 14)})'>{escape(columns[ci])}</text>")
    return parts


def _colour_bar(frame: Frame, top: float, unit: str) -> list[str]:
    x, height = frame.width - frame.right + 20, min(frame.plot_height, 160.0)
    parts = [f"<text x='{x}' y='{frame.top - 6}' font-size='11'>{escape(unit)}</text>"]
    steps = 10
    for i in range(steps):
        share = 1 - i / steps
        parts.append(f"<rect x='{x}' y='{_num(frame.top + i * height / steps)}' width='14' "
                     f"height='{_num(height / steps + 0.5)}' fill='{_heat_colour(share)}'/>")
    parts.append(f"<rect x='{x}' y='{frame.top}' width='14' height='{_num(height)}' "
                 "fill='none' stroke='#999'/>")
    parts.append(f"<text x='{x + 18}' y='{frame.top + 10}' font-size='10'>"
                 f"{tick_label(top)}</text>")
    parts.append(f"<text x='{x + 18}' y='{_num(frame.top + height)}' font-size='10'>0</text>")
    return parts


# ---- grouped bars -------------------------------------------------------------------------------

def grouped_bars(title: str, categories: Sequence[str], series: Sequence[str],
                 values: Sequence[Sequence[float | None]], x_label: str, y_label: str,
                 frame: Frame | None = None) -> str:
    """For each category, one bar per series (``None``: no bar). Bars start at zero; values
    that are all whole numbers (counts) get whole-number ticks. Category labels are cut to the
    width of their group (the bars' tooltips keep the full name)."""
    ensure(len(categories) <= CATEGORIES_MAX and len(series) <= SERIES_MAX, "too many bars")
    ensure(len(values) == len(categories), "grouped_bars: one value row per category")
    ensure(all(len(r) == len(series) for r in values), "grouped_bars: one value per series")
    frame = frame or Frame()
    found = [v for r in values for v in r if v is not None]
    if not found:
        return empty_chart(title, frame=frame)
    whole = all(float(v).is_integer() for v in found)
    ticks = nice_ticks(min(0.0, *found), max(0.0, *found), whole=whole)
    y = _Scale(ticks[0], ticks[-1], frame.top + frame.plot_height, frame.top)
    body = _y_axis(frame, ticks, y, y_label)
    group_w = frame.plot_width / len(categories)
    label_chars = min(LABEL_CHARS_MAX, max(LABEL_CHARS_MIN, int(group_w / TICK_CHAR_PX)))
    bar_w = min(group_w * 0.8 / max(1, len(series)), 120.0)
    for ci, category in enumerate(categories):
        present = [(si, v) for si, v in enumerate(values[ci]) if v is not None]
        x0 = frame.left + (ci + 0.5) * group_w - bar_w * len(present) / 2  # centred
        for slot, (si, value) in enumerate(present):
            top, bottom = sorted((y(value), y(0.0)))
            colour = PALETTE[si % len(PALETTE)]
            body.append(f"<rect class='bar' x='{_num(x0 + slot * bar_w)}' y='{_num(top)}' "
                        f"width='{_num(bar_w - 1)}' height='{_num(max(bottom - top, 0.5))}' "
                        f"fill='{colour}'><title>{escape(f'{category} / {series[si]}: ')}"
                        f"{tick_label(value)}</title></rect>")
        cx = frame.left + (ci + 0.5) * group_w
        below = frame.top + frame.plot_height + 16
        body.append(f"<text class='xtick' x='{_num(cx)}' y='{_num(below)}' "
                    f"text-anchor='middle'>{escape(short(category, label_chars))}</text>")
    body.append(f"<line x1='{frame.left}' y1='{_num(y(0.0))}' x2='{frame.left + frame.plot_width}' "
                f"y2='{_num(y(0.0))}' stroke='#333'/>")
    if len(series) > 1:
        body += _legend(frame, series)
    body.append(_x_label(frame, x_label))
    return _svg(frame, title, body)


# ---- timeline -----------------------------------------------------------------------------------

def timeline(title: str, series: Sequence[Series], x_label: str, y_label: str,
             markers: Sequence[Marker] = (), vertical_lines: Sequence[tuple[float, str]] = (),
             frame: Frame | None = None) -> str:
    """Lines (step or straight) over a numeric x axis, with point markers and labelled
    vertical reference lines (e.g. the grid event)."""
    ensure(len(series) <= SERIES_MAX, f"timeline: at most {SERIES_MAX} series")
    ensure(sum(len(s.points) for s in series) <= POINTS_MAX, "timeline: too many points")
    frame = frame or Frame(top=50)
    xs = [p[0] for s in series for p in s.points] + [m.x for m in markers]
    ys = [p[1] for s in series for p in s.points] + [m.y for m in markers]
    if not xs:
        return empty_chart(title, frame=frame)
    xs += [v[0] for v in vertical_lines]
    y_ticks = nice_ticks(min(ys), max(ys)) if max(ys) > min(ys) else nice_ticks(
        min(ys) * 0.9, max(ys) * 1.1 + 1e-9)
    x_ticks = nice_ticks(min(xs), max(xs), 6)
    y = _Scale(y_ticks[0], y_ticks[-1], frame.top + frame.plot_height, frame.top)
    x = _Scale(x_ticks[0], x_ticks[-1], frame.left, frame.left + frame.plot_width)
    body = _y_axis(frame, y_ticks, y, y_label) + [_x_axis_line(frame)]
    body += _x_ticks(frame, x_ticks, x)
    for value, label in vertical_lines:
        px = _num(x(value))
        body.append(f"<line class='vline' x1='{px}' y1='{frame.top}' x2='{px}' "
                    f"y2='{_num(frame.top + frame.plot_height)}' stroke='#C00' "
                    f"stroke-dasharray='5,4'/>")
        # Beside the line, not across it, on the side with more room.
        left_half = x(value) < frame.left + frame.plot_width / 2
        anchor, dx = ("start", 4) if left_half else ("end", -4)
        body.append(f"<text x='{_num(x(value) + dx)}' y='{frame.top + 12}' fill='#C00' "
                    f"font-size='11' text-anchor='{anchor}'>{escape(label)}</text>")
    for si, line in enumerate(series):
        # Earlier series drawn wider, so lines that coincide stay visible as nested bands.
        width = 2 + 2 * min(len(series) - 1 - si, 4)
        body.append(_polyline(line, PALETTE[si % len(PALETTE)], x, y, width))
    for marker in markers:
        colour = PALETTE[marker.series % len(PALETTE)]
        fill = colour if marker.filled else "white"
        body.append(f"<circle class='marker' cx='{_num(x(marker.x))}' cy='{_num(y(marker.y))}' "
                    f"r='5' fill='{fill}' stroke='{colour}' stroke-width='2'>"
                    f"<title>{escape(marker.label)}</title></circle>")
    body += _legend(frame, [s.name for s in series], open_filled=bool(markers))
    body.append(_x_label(frame, x_label))
    return _svg(frame, title, body)


def _x_ticks(frame: Frame, ticks: list[float], x: _Scale) -> list[str]:
    bottom = frame.top + frame.plot_height
    return [f"<text class='xtick' x='{_num(x(t))}' y='{_num(bottom + 16)}' "
            f"text-anchor='middle'>{tick_label(t)}</text>" for t in ticks]


def _polyline(line: Series, colour: str, x: _Scale, y: _Scale, width: int) -> str:
    points: list[str] = []
    previous: tuple[float, float] | None = None
    for px, py in line.points:
        if line.step and previous is not None:
            points.append(f"{_num(x(px))},{_num(y(previous[1]))}")
        points.append(f"{_num(x(px))},{_num(y(py))}")
        previous = (px, py)
    return (f"<polyline class='line' points={quoteattr(' '.join(points))} fill='none' "
            f"stroke='{colour}' stroke-width='{width}' stroke-linejoin='round'><title>"
            f"{escape(line.name)}</title></polyline>")


# ---- histogram ----------------------------------------------------------------------------------

def histogram_bins(values: Sequence[float], bins: int) -> tuple[list[float], list[int]]:
    """Equal-width bins over [min, max]: (edges, counts); the last bin includes max."""
    ensure(1 <= bins <= HISTOGRAM_BINS_MAX, f"bins out of range: {bins}")
    low, high = min(values), max(values)
    if high <= low:
        high = low + 1.0
    width = (high - low) / bins
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / width))] += 1
    return [low + i * width for i in range(bins + 1)], counts


def histogram(title: str, values: Sequence[float], x_label: str, y_label: str = "count",
              bins: int = 20, lines: Sequence[tuple[float, str]] = (),
              frame: Frame | None = None) -> str:
    """Counts per equal-width bin, with labelled vertical lines (e.g. p50 and p99)."""
    frame = frame or Frame(top=50)
    if not values:
        return empty_chart(title, frame=frame)
    edges, counts = histogram_bins(values, min(bins, max(1, len(set(values)))))
    y_ticks = nice_ticks(0.0, float(max(counts)), whole=True)
    x_ticks = nice_ticks(edges[0], edges[-1], 6)
    y = _Scale(y_ticks[0], y_ticks[-1], frame.top + frame.plot_height, frame.top)
    x = _Scale(x_ticks[0], x_ticks[-1], frame.left, frame.left + frame.plot_width)
    body = _y_axis(frame, y_ticks, y, y_label) + [_x_axis_line(frame)]
    body += _x_ticks(frame, x_ticks, x)
    for i, count in enumerate(counts):
        if count == 0:
            continue
        left, right = x(edges[i]), x(edges[i + 1])
        body.append(f"<rect class='bar' x='{_num(left)}' y='{_num(y(count))}' "
                    f"width='{_num(max(right - left - 1, 1))}' "
                    f"height='{_num(y(0.0) - y(count))}' fill='{PALETTE[5]}'><title>"
                    f"{tick_label(edges[i])}–{tick_label(edges[i + 1])}: {count}</title></rect>")
    key_x = float(frame.left)
    for i, (value, label) in enumerate(lines):
        px = _num(x(value))
        colour = ("#D55E00", "#000000")[i % 2]
        body.append(f"<line class='vline' x1='{px}' y1='{frame.top}' x2='{px}' "
                    f"y2='{_num(frame.top + frame.plot_height)}' stroke='{colour}' "
                    f"stroke-width='2' stroke-dasharray='6,3'><title>{escape(label)}</title>"
                    "</line>")
        body.append(f"<line x1='{_num(key_x)}' y1='36' x2='{_num(key_x + 18)}' y2='36' "
                    f"stroke='{colour}' stroke-width='2' stroke-dasharray='6,3'/>")
        body.append(f"<text class='linelabel' x='{_num(key_x + 22)}' y='40' font-size='11' "
                    f"fill='{colour}'>{escape(label)}</text>")
        key_x += 40 + 7 * len(label)
    body.append(_x_label(frame, x_label))
    return _svg(frame, title, body)
