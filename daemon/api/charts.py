"""Charts for the admin pages, drawn on the server as SVG.

No JavaScript library and nothing fetched from elsewhere: a chart is a string of
SVG put in the page, so it shows with scripts off, prints, and reads the same in
a screen reader (``role="img"`` with a ``<title>`` and a ``<desc>`` spelling out
every value). ``comparison_chart`` draws one horizontal bar per variant: the
bar's length is the variant's mean, a whisker with caps its interval, and the
control is drawn in another colour, named "(control)", with a dashed line at its
mean so every other bar is read against it.

The geometry is plain arithmetic on a fixed canvas (``viewBox``; the page scales
it): a value ``v`` sits at ``left + (v - low) / (high - low) * (right - left)``,
where ``low`` and ``high`` are the axis's ends, rounded out to tick steps. The plot
group carries them (``data-low``, ``data-high``, ``data-left``, ``data-right``) so
a reader (the tests) can map any drawn position back to its value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs
from markupsafe import Markup, escape

__all__ = ["Bar", "comparison_chart", "nice_axis"]

#: The canvas, in SVG user units.
WIDTH = 720
#: Where the variants' names end and the plot begins; where the plot ends and the
#: values' text begins.
LEFT, RIGHT = 190, 540
ROW, BAR, TOP, AXIS = 34, 18, 12, 28
CONTROL_FILL, VARIANT_FILL, INK = "#7a8699", "#3566c8", "#1d2430"


@attrs.frozen
class Bar:
    """One variant's mean and interval (None: nothing measured yet)."""

    label: str
    value: float | None
    interval: tuple[float, float] | None = None
    control: bool = False


def nice_axis(low: float, high: float, ticks: int = 5) -> tuple[float, float, float]:
    """``(low, high, step)``: the range widened to multiples of a round step
    (1, 2 or 5 times a power of ten) giving about ``ticks`` intervals."""
    if not high > low:
        high = low + 1.0
    rough = (high - low) / ticks
    power = 10.0 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


def _n(number: float) -> str:
    """A coordinate: two decimals at most, no trailing zeros."""
    return f"{number:.2f}".rstrip("0").rstrip(".")


def _v(value: float) -> str:
    """A value in a data attribute: six significant digits (small costs stay exact)."""
    return f"{value:.6g}"


def comparison_chart(bars: Sequence[Bar], *, title: str, chart_id: str,
                     fmt: Callable[[float], str] = _v) -> Markup:
    """The SVG (safe to put in a page as is) of ``bars``, one row each.

    ``fmt`` writes a value for people (a share as a percentage, seconds, cost);
    ``chart_id`` makes the ids of the title and description unique in the page.
    """
    points = [0.0]
    for bar in bars:
        if bar.value is not None:
            points.append(bar.value)
        if bar.interval is not None:
            points.extend(bar.interval)
    low, high, step = nice_axis(min(points), max(points))

    def x(value: float) -> float:
        return LEFT + (value - low) / (high - low) * (RIGHT - LEFT)

    def said(bar: Bar) -> str:
        name = bar.label + (" (control)" if bar.control else "")
        if bar.value is None:
            return f"{name}: no data yet"
        text = f"{name}: {fmt(bar.value)}"
        if bar.interval is not None:
            text += f", interval {fmt(bar.interval[0])} to {fmt(bar.interval[1])}"
        return text

    height = TOP + ROW * max(len(bars), 1) + AXIS
    bottom = height - AXIS
    ident = escape(chart_id)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
        f'aria-labelledby="{ident}-title {ident}-desc" id="{ident}">',
        f'<title id="{ident}-title">{escape(title)}</title>',
        f'<desc id="{ident}-desc">{escape("; ".join(said(bar) for bar in bars) or "No variants.")}</desc>',
        f'<g class="plot" data-low="{_v(low)}" data-high="{_v(high)}" '
        f'data-left="{LEFT}" data-right="{RIGHT}" font-family="system-ui, sans-serif" '
        f'font-size="13" fill="{INK}">',
    ]
    count = round((high - low) / step)
    for i in range(count + 1):
        value = low + i * step
        at = _n(x(value))
        parts.append(
            f'<g class="tick" data-value="{_v(value)}"><line x1="{at}" x2="{at}" y1="{TOP - 4}" '
            f'y2="{bottom}" stroke="#e3e6ea"/><text x="{at}" y="{bottom + 18}" '
            f'text-anchor="middle" font-size="11">{escape(fmt(value))}</text></g>')
    if low < 0 < high:
        zero = _n(x(0.0))
        parts.append(f'<line class="zero" x1="{zero}" x2="{zero}" y1="{TOP - 4}" '
                     f'y2="{bottom}" stroke="{INK}"/>')
    for row, bar in enumerate(bars):
        parts.append(_row(bar, TOP + row * ROW, x, fmt, said(bar)))
    control = next((bar for bar in bars if bar.control and bar.value is not None), None)
    if control is not None and control.value is not None:
        at = _n(x(control.value))
        parts.append(f'<line class="control-mean" x1="{at}" x2="{at}" y1="{TOP - 4}" '
                     f'y2="{bottom}" stroke="{CONTROL_FILL}" stroke-dasharray="4 3"/>')
    parts.append("</g></svg>")
    return Markup("".join(parts))


def _row(bar: Bar, top: float, x: Callable[[float], float], fmt: Callable[[float], str],
         said: str) -> str:
    """One variant: its name, bar, whisker and value."""
    middle = top + ROW / 2
    kind = "bar control" if bar.control else "bar"
    name = bar.label + (" (control)" if bar.control else "")
    weight = ' font-weight="600"' if bar.control else ""
    parts = [f'<g class="{kind}" data-label="{escape(bar.label)}"><title>{escape(said)}</title>',
             f'<text class="label" x="{LEFT - 8}" y="{_n(middle + 4)}" text-anchor="end"'
             f'{weight}>{escape(_clip(name))}</text>']
    if bar.value is None:
        parts.append(f'<text class="value" x="{LEFT + 6}" y="{_n(middle + 4)}" '
                     f'fill="#6b7480">no data yet</text></g>')
        return "".join(parts)
    start, end = sorted((x(0.0), x(bar.value)))
    fill = CONTROL_FILL if bar.control else VARIANT_FILL
    parts.append(f'<rect class="mean" data-value="{_v(bar.value)}" x="{_n(start)}" '
                 f'y="{_n(middle - BAR / 2)}" width="{_n(end - start)}" height="{BAR}" '
                 f'fill="{fill}" fill-opacity="0.75"/>')
    text = fmt(bar.value)
    if bar.interval is not None:
        low, high = (_n(x(v)) for v in bar.interval)
        cap_top, cap_bottom = _n(middle - BAR / 2 - 3), _n(middle + BAR / 2 + 3)
        parts.append(
            f'<g class="interval" data-low="{_v(bar.interval[0])}" data-high="{_v(bar.interval[1])}" '
            f'stroke="{INK}" stroke-width="1.5">'
            f'<line class="whisker" x1="{low}" x2="{high}" y1="{_n(middle)}" y2="{_n(middle)}"/>'
            f'<line class="cap" x1="{low}" x2="{low}" y1="{cap_top}" y2="{cap_bottom}"/>'
            f'<line class="cap" x1="{high}" x2="{high}" y1="{cap_top}" y2="{cap_bottom}"/></g>')
        text += f" [{fmt(bar.interval[0])}, {fmt(bar.interval[1])}]"
    parts.append(f'<text class="value" x="{RIGHT + 10}" y="{_n(middle + 4)}">{escape(text)}</text></g>')
    return "".join(parts)


def _clip(label: str, most: int = 24) -> str:
    """A name that fits the label column (the whole one is in the row's title)."""
    return label if len(label) <= most else label[: most - 1] + "…"
