"""The text exposition of metric families written directly: byte for byte what prometheus_client writes, faster."""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import exposition as classic_exposition
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString as _untyped_go_string

Encoder = Callable[[Any], bytes]
OPENMETRICS_EOF = b"# EOF\n"
# Escaping schemes that leave a legacy-valid name unchanged ('dots' rewrites every '_'): the fast path serves these.
_NAME_KEEPING = {om_exposition.UNDERSCORES, om_exposition.VALUES, om_exposition.ALLOWUTF8}
# Names every escaping scheme above and both formats print unchanged (no ':', which OpenMetrics sample names lose).
_PLAIN_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_FAST_TYPES = {"gauge", "counter", "histogram", "summary"}
# Classic-format samples prometheus_client moves into a family of their own after the family (created timestamps).
_MOVED_SUFFIXES = ("_created", "_gsum", "_gcount")


@dataclass(frozen=True)
class Family:
    """One metric family of one fragment: its HELP/TYPE lines and its sample lines."""

    name: str
    header: bytes
    samples: bytes


@dataclass(frozen=True)
class Format:
    """How an Accept header wants families written, and the encoder for what the fast path leaves alone."""

    openmetrics: bool
    fast: bool  # False: every family goes through prometheus_client's encoder
    encoder: Encoder


def format_of(encoder: Encoder) -> Format:
    """The Format of an encoder prometheus_client's choose_encoder returned."""
    function: Any = encoder
    keywords: dict[str, Any] = {}
    if isinstance(encoder, functools.partial):
        function, keywords = encoder.func, dict(encoder.keywords)
    escaping = keywords.get("escaping", om_exposition.UNDERSCORES)
    if function is classic_exposition.generate_latest:
        return Format(False, escaping in _NAME_KEEPING and set(keywords) <= {"escaping"}, encoder)
    if function is om_exposition.generate_latest:
        # 1.x: what changes from 2.0.0 on (native histograms) is left to prometheus_client.
        fast = escaping in _NAME_KEEPING and str(keywords.get("version", "1.0.0")).split(".")[0] == "1"
        return Format(True, fast and set(keywords) <= {"escaping", "version"}, encoder)
    return Format(False, False, encoder)


class _Rows:
    """Label values and values kept as added; prometheus_client's Samples are made only when something reads them."""

    # A fleet's fragment holds thousands of series: a Sample and a label dict each cost more than writing the line.
    _labelnames: tuple[str, ...]
    name: str
    rows: list[tuple[tuple[str, ...], float]]
    _samples: list[Sample]

    def _sample_name(self) -> str:
        """The name of this family's samples."""
        return self.name

    @property
    def samples(self) -> list[Sample]:
        """prometheus_client's Samples, made from the rows on first read (the rows move into them)."""
        if self.rows:
            name = self._sample_name()
            labelnames = self._labelnames
            self._samples.extend(Sample(name, dict(zip(labelnames, row, strict=False)), v) for row, v in self.rows)
            self.rows = []
        return self._samples

    @samples.setter
    def samples(self, samples: list[Sample]) -> None:
        self._samples = samples


class GaugeRows(_Rows, GaugeMetricFamily):
    """A GaugeMetricFamily that writes fast (textformat.encode)."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.rows = []
        super().__init__(name, documentation, labels=labels)

    def add_metric(self, labels: Iterable[str], value: float, timestamp: Any = None) -> None:
        """Add one series."""
        if timestamp is None:
            self.rows.append((tuple(labels), value))
        else:
            super().add_metric(list(labels), value, timestamp)


class CounterRows(_Rows, CounterMetricFamily):
    """A CounterMetricFamily that writes fast (textformat.encode); no created timestamps."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.rows = []
        super().__init__(name, documentation, labels=labels)

    def _sample_name(self) -> str:
        """Counters' samples end in _total."""
        return self.name + "_total"

    def add_metric(  # type: ignore[override]
        self, labels: Iterable[str], value: float, created: float | None = None, timestamp: Any = None
    ) -> None:
        """Add one series."""
        if created is None and timestamp is None:
            self.rows.append((tuple(labels), value))
        else:
            super().add_metric(list(labels), value, created, timestamp)


class _One:
    """A registry stand-in holding one family, for the fallback encoder."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterator[Metric]:
        """The one family."""
        yield self._metric


def encode(metrics: Iterable[Metric], form: Format) -> list[Family]:
    """Every family written as form's prometheus_client encoder writes it ('# EOF' left out)."""
    families: list[Family] = []
    for metric in metrics:
        written = _fast(metric, form.openmetrics) if form.fast else None
        if written is None:
            families.extend(split_families(form.encoder(_One(metric))))
        else:
            families.append(written)
    return families


def floatToGoString(value: float) -> str:
    """A value as prometheus_client writes it (Go's formatting: +Inf, NaN, exponents from 1e7)."""
    text: str = _untyped_go_string(value)  # type: ignore[no-untyped-call]
    return text


def split_families(text: bytes) -> list[Family]:
    """Cut an encoded exposition into its families (HELP starts one); OpenMetrics' '# EOF' is dropped."""
    families: list[Family] = []
    name: str | None = None
    header: list[bytes] = []
    samples: list[bytes] = []
    for line in text.splitlines(keepends=True):
        if line == OPENMETRICS_EOF:
            continue
        if line.startswith((b"# HELP ", b"# TYPE ", b"# UNIT ")):
            line_name = line.split(b" ", 3)[2].decode()
            if line.startswith(b"# HELP ") or line_name != name:
                if name is not None:
                    families.append(Family(name, b"".join(header), b"".join(samples)))
                name, header, samples = line_name, [], []
            header.append(line)
        else:
            samples.append(line)
    if name is not None:
        families.append(Family(name, b"".join(header), b"".join(samples)))
    return families


@functools.lru_cache(maxsize=4096)
def _plain_name(name: str) -> bool:
    """A metric or label name every supported escaping writes unchanged (no reserved '__' label prefix)."""
    return _PLAIN_NAME.fullmatch(name) is not None and not name.startswith("__")


@functools.lru_cache(maxsize=1024)
def _header(name: str, kind: str, documentation: str, unit: str, openmetrics: bool) -> bytes:
    """HELP, TYPE (and OpenMetrics' UNIT) lines of a family."""
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    if openmetrics:
        doc = doc.replace('"', r"\"")
        unit_line = f"# UNIT {name} {unit}\n" if unit else ""
        return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n{unit_line}".encode()
    printed = name + "_total" if kind == "counter" else name
    return f"# HELP {printed} {doc}\n# TYPE {printed} {kind}\n".encode()


def _fast(metric: Metric, openmetrics: bool) -> Family | None:
    """The family written directly; None when it holds something only prometheus_client's encoder writes."""
    # Only what this exporter's families hold takes the fast path: plain names, no timestamps, exemplars or
    # native histograms, and (classic format) no samples prometheus_client moves into a family of their own.
    if metric.type not in _FAST_TYPES or not _plain_name(metric.name):
        return None
    header = _header(metric.name, metric.type, metric.documentation, metric.unit, openmetrics)
    printed = metric.name + "_total" if metric.type == "counter" and not openmetrics else metric.name
    if isinstance(metric, _Rows) and not metric._samples:
        text = _rows_text(metric)
        return None if text is None else Family(printed, header, text)
    text = _samples_text(metric, openmetrics)
    return None if text is None else Family(printed, header, text)


def _rows_text(metric: _Rows) -> bytes | None:
    """A row family's sample lines: label names sorted once, a line per row from one template."""
    names = metric._labelnames
    if not all(_plain_name(name) for name in names) or not _plain_name(metric._sample_name()):
        return None
    order = sorted(range(len(names)), key=names.__getitem__)
    if names:
        template = metric._sample_name() + "{" + ",".join(names[i] + '="%s"' for i in order) + "} %s\n"
    else:
        template = metric._sample_name() + " %s\n"
    pick = operator.itemgetter(*order) if len(order) > 1 else None  # label values in sorted-name order
    values: dict[float, str] = {}
    lines: list[str] = []
    try:
        for labels, value in metric.rows:
            if len(labels) != len(names):
                return None  # prometheus_client would zip them short: leave that to it
            joined = "".join(labels)  # a TypeError if one is not a string: prometheus_client's encoder decides
            if "\\" in joined or "\n" in joined or '"' in joined:
                args: tuple[str, ...] = tuple(_escaped(labels[index]) for index in order)
            else:
                args = pick(labels) if pick is not None else tuple(labels)
            shown = values.get(value) if value else None  # never 0.0 for -0.0: they are equal keys
            if shown is None:
                shown = values[value] = floatToGoString(value)
            lines.append(template % (*args, shown))
    except TypeError:
        return None
    return "".join(lines).encode()


def _escaped(text: str) -> str:
    """A label value as the exposition writes it (backslash, newline and double quote escaped)."""
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _samples_text(metric: Metric, openmetrics: bool) -> bytes | None:
    """Any family's sample lines, from its Samples; None for what the fast path leaves to prometheus_client."""
    moved = tuple(metric.name + suffix for suffix in _MOVED_SUFFIXES)
    lines: list[str] = []
    for sample in metric.samples:
        name, labels = sample.name, sample.labels
        if sample.timestamp is not None or sample.exemplar is not None or sample.value is None:
            return None
        if getattr(sample, "native_histogram", None) is not None or not _plain_name(name):
            return None
        if not openmetrics and name in moved:
            return None
        if labels:
            parts = []
            for key, value in sorted(labels.items()):
                if not _plain_name(key) or not isinstance(value, str):
                    return None
                parts.append(key + '="' + _escaped(value) + '"')
            lines.append(name + "{" + ",".join(parts) + "} " + floatToGoString(sample.value) + "\n")
        else:
            lines.append(name + " " + floatToGoString(sample.value) + "\n")
    return "".join(lines).encode()
