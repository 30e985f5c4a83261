"""The admin pages' SVG chart: parsed back with ``xml.etree``, each bar's length
and each whisker's ends map to the values drawn, the control is marked, and the
title and description say in words what the picture shows."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from daemon.api.charts import Bar, comparison_chart, nice_axis

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def scale(root: ET.Element):
    """The chart's value -> x mapping, read from its plot group."""
    plot = root.find(f"{SVG}g[@class='plot']")
    assert plot is not None
    low, high = float(plot.get("data-low")), float(plot.get("data-high"))
    left, right = float(plot.get("data-left")), float(plot.get("data-right"))
    return lambda value: left + (value - low) / (high - low) * (right - left)


def bars(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if "bar" in (g.get("class") or "").split()]


def percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def test_bars_and_intervals_map_to_their_values() -> None:
    drawn = [Bar("A", 0.62, (0.55, 0.68), control=True), Bar("B", 0.71, (0.65, 0.77)),
             Bar("C", 0.40, (0.30, 0.52))]
    root = parse(comparison_chart(drawn, title="Success rate", chart_id="c1", fmt=percent))
    x = scale(root)
    found = bars(root)
    assert [g.get("data-label") for g in found] == ["A", "B", "C"]
    for g, bar in zip(found, drawn, strict=True):
        rect = g.find(f"{SVG}rect")
        start, width = float(rect.get("x")), float(rect.get("width"))
        assert start == pytest.approx(x(0.0), abs=0.01)
        assert start + width == pytest.approx(x(bar.value), abs=0.01)
        whisker = g.find(f".//{SVG}line[@class='whisker']")
        assert float(whisker.get("x1")) == pytest.approx(x(bar.interval[0]), abs=0.01)
        assert float(whisker.get("x2")) == pytest.approx(x(bar.interval[1]), abs=0.01)
        caps = g.findall(f".//{SVG}line[@class='cap']")
        assert sorted(float(c.get("x1")) for c in caps) == pytest.approx(
            [x(bar.interval[0]), x(bar.interval[1])], abs=0.01)
        value = g.find(f"{SVG}text[@class='value']").text
        assert percent(bar.value) in value and percent(bar.interval[1]) in value
    # B's bar is longer than A's, C's shorter: the picture ranks as the numbers do.
    widths = [float(g.find(f"{SVG}rect").get("width")) for g in found]
    assert widths[2] < widths[0] < widths[1]


def test_the_control_is_marked_and_read_against() -> None:
    root = parse(comparison_chart([Bar("old model", 12.0, (10.0, 14.0), control=True),
                                   Bar("new model", 9.5, (8.0, 11.0))],
                                  title="Run time", chart_id="rt"))
    control, other = bars(root)
    assert control.get("class") == "bar control" and other.get("class") == "bar"
    assert "(control)" in control.find(f"{SVG}text[@class='label']").text
    assert control.find(f"{SVG}rect").get("fill") != other.find(f"{SVG}rect").get("fill")
    line = root.find(f".//{SVG}line[@class='control-mean']")
    assert float(line.get("x1")) == pytest.approx(scale(root)(12.0), abs=0.01)


def test_title_and_description_make_it_accessible() -> None:
    root = parse(comparison_chart([Bar("A", 0.5, (0.4, 0.6), control=True), Bar("B", None)],
                                  title="Success <rate>", chart_id="acc", fmt=percent))
    assert root.get("role") == "img"
    assert root.get("aria-labelledby") == "acc-title acc-desc"
    assert root.find(f"{SVG}title").text == "Success <rate>"
    assert root.find(f"{SVG}title").get("id") == "acc-title"
    desc = root.find(f"{SVG}desc").text
    assert "A (control): 50.0 %, interval 40.0 % to 60.0 %" in desc
    assert "B: no data yet" in desc
    # Each row says its own value on hover too; a variant without data has no bar.
    control, empty = bars(root)
    assert control.find(f"{SVG}title").text.startswith("A (control): 50.0 %")
    assert empty.find(f"{SVG}rect") is None


def test_the_axis_has_round_ticks_covering_every_interval() -> None:
    root = parse(comparison_chart([Bar("A", 3.2, (2.1, 4.4)), Bar("B", 5.0, (3.9, 6.3))],
                                  title="Cost", chart_id="cost"))
    ticks = [float(g.get("data-value")) for g in root.iter(f"{SVG}g")
             if g.get("class") == "tick"]
    assert ticks[0] == 0 and ticks[-1] >= 6.3
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1


def test_negative_values_grow_from_zero() -> None:
    root = parse(comparison_chart([Bar("A", -0.2, (-0.35, -0.05)), Bar("B", 0.3, (0.1, 0.5))],
                                  title="Lift", chart_id="lift"))
    x = scale(root)
    negative, positive = (g.find(f"{SVG}rect") for g in bars(root))
    assert float(negative.get("x")) == pytest.approx(x(-0.2), abs=0.01)
    assert float(negative.get("x")) + float(negative.get("width")) == pytest.approx(x(0), abs=0.01)
    assert float(positive.get("x")) == pytest.approx(x(0), abs=0.01)
    assert root.find(f".//{SVG}line[@class='zero']") is not None


def test_small_values_keep_their_digits() -> None:
    root = parse(comparison_chart([Bar("A", 0.0042, (0.0031, 0.0055))], title="Cost",
                                  chart_id="small"))
    [bar] = bars(root)
    assert float(bar.find(f"{SVG}rect").get("data-value")) == 0.0042
    assert float(bar.find(f".//{SVG}g[@class='interval']").get("data-high")) == 0.0055
    x = scale(root)
    rect = bar.find(f"{SVG}rect")
    assert float(rect.get("x")) + float(rect.get("width")) == pytest.approx(x(0.0042), abs=0.01)


def test_names_are_escaped() -> None:
    markup = comparison_chart([Bar('<script>"x"</script>', 1.0)], title="t", chart_id='a"b')
    root = parse(markup)
    assert "<script>" not in str(markup)
    assert bars(root)[0].get("data-label") == '<script>"x"</script>'


@pytest.mark.parametrize(("low", "high", "expected"), [
    (0.0, 0.77, (0.0, 0.8, 0.2)),
    (0.0, 1.0, (0.0, 1.0, 0.2)),
    (0.0, 6.3, (0.0, 8.0, 2.0)),
    (-0.35, 0.5, (-0.4, 0.6, 0.2)),
    (0.0, 0.0, (0.0, 1.0, 0.2)),
    (0.0, 1234.0, (0.0, 1500.0, 500.0)),
    (0.0, 0.0123, (0.0, 0.015, 0.005)),
])
def test_nice_axis(low: float, high: float, expected: tuple[float, float, float]) -> None:
    assert nice_axis(low, high) == pytest.approx(expected)
