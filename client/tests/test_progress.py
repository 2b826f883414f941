"""The progress line: formatting, width, throttling."""

from __future__ import annotations

import io

import pytest

from model_registry_client.progress import ProgressBar, format_bytes, format_duration, render

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (32 * MiB, "32.0 MiB"), (3 * 1024**4, "3.0 TiB"), (5 * 1024**5, "5120.0 TiB")],
)
def test_format_bytes(count, text):
    assert format_bytes(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00"), (59.4, "0:59"), (75, "1:15"), (3725, "1:02:05"), (None, "--:--"), (float("inf"), "--:--"), (float("nan"), "--:--"), (-1, "--:--")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_render_shows_bytes_rate_and_eta():
    line = render("push m", 8 * MiB, 32 * MiB, 2.0, 100)
    assert line.startswith("push m [")
    assert " 25%   8.0 MiB/32.0 MiB   4.0 MiB/s ETA  0:06" in line
    assert len(line) == 100


@pytest.mark.parametrize("width", [20, 40, 80, 200])
def test_render_never_exceeds_the_width(width):
    assert len(render("pull a-rather-long-model-name", 1, 3, 0.5, width)) <= width


def test_render_of_nothing_yet_and_of_an_empty_transfer():
    assert "ETA --:--" in render("x", 0, 10, 0.0, 80)
    assert "100%" in render("x", 0, 0, 0.0, 80)


def test_bar_redraws_at_most_every_interval_but_always_at_the_end():
    now = [0.0]
    stream = io.StringIO()
    bar = ProgressBar("push m", stream=stream, interval=0.1, clock=lambda: now[0])
    for done in range(0, 100, 10):
        bar(done, 100)  # the clock does not move: only the first draw happens
    assert stream.getvalue().count("\r") == 1
    now[0] = 0.5
    bar(50, 100)
    bar(100, 100)  # the end is always drawn
    assert stream.getvalue().count("\r") == 3
    bar.close()
    assert stream.getvalue().endswith("\n")
    assert "100%" in stream.getvalue().splitlines()[-1].split("\r")[-1]


def test_bar_that_never_drew_writes_nothing_on_close():
    stream = io.StringIO()
    ProgressBar("x", stream=stream).close()
    assert stream.getvalue() == ""


def test_a_long_label_is_shortened_before_the_bar_disappears():
    line = render("push model-with-a-very-long-name-indeed", 1, 2, 1.0, 79)
    assert len(line) <= 79
    assert "…" in line and "[" in line and "50%" in line
