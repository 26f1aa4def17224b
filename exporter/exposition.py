"""The /metrics and /probe bodies, assembled from per-target fragments; only a changed target is re-encoded."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from exporter.collector import PartkeyCollector
from exporter.snapshot import FrozenSnapshot, Snapshot, SnapshotSource

Encoder = Callable[[Any], bytes]
# Level 1: a fleet's body is megabytes and is compressed again for every new snapshot; level 6 saves little
# more on this repetitive text and costs several times the CPU.
GZIP_LEVEL = 1
BODIES_PER_SNAPSHOT = 8  # cached whole bodies per snapshot: content types x gzip, never one per version sent
CACHED_CONTENT_TYPES = 4  # a client picks the version echoed in the content type: cache a few, never one per version
OPENMETRICS_EOF = b"# EOF\n"


@dataclass(frozen=True)
class Family:
    """One metric family of one fragment: its HELP/TYPE lines and its sample lines."""

    name: str
    header: bytes
    samples: bytes


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


def merge(fragments: Iterable[Sequence[Family]], openmetrics: bool) -> bytes:
    """One valid exposition from several fragments: each family's header once, then every fragment's samples."""
    order: list[str] = []
    headers: dict[str, bytes] = {}
    samples: dict[str, list[bytes]] = {}
    for fragment in fragments:
        for family in fragment:
            if family.name not in headers:
                order.append(family.name)
                headers[family.name] = family.header
                samples[family.name] = []
            if family.samples:
                samples[family.name].append(family.samples)
    body = b"".join(headers[name] + b"".join(samples[name]) for name in order)
    return body + OPENMETRICS_EOF if openmetrics else body


class _Collectors:
    """A registry stand-in: what an encoder needs is an object with collect()."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    def collect(self) -> Iterator[Any]:
        """The collector's families."""
        return iter(self._collector.collect())


def choose(accept: str) -> tuple[Encoder, str]:
    """The encoder and content type for an Accept header; a malformed one gets the classic text format."""
    try:
        return choose_encoder(accept)
    except (TypeError, ValueError):  # 'version=x': prometheus_client compares it with ints and raises
        return choose_encoder("")


def wants_gzip(accept_encoding: str) -> bool:
    """True when the client accepts gzip (and did not refuse it with q=0)."""
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in {"gzip", "x-gzip"}:
            quality = params.strip().lower().removeprefix("q=")
            try:
                return not params.strip() or float(quality) > 0
            except ValueError:
                return True
    return False


class Exposition:
    """Encodes each target's part of the snapshot once per change of that target, and bodies once per snapshot."""

    def __init__(self, store: SnapshotSource, targets: Sequence[str]) -> None:
        self.store = store
        self.targets = tuple(targets)
        self._lock = threading.Lock()
        # (target or None for the global part, content type) -> (generation, families)
        self._fragments: dict[tuple[str | None, str], tuple[int, list[Family]]] = {}
        self._bodies: tuple[Snapshot | None, dict[tuple[str | None, str, bool], bytes]] = (None, {})
        # The content types scrapes asked for (the classic text format from the start): refresh() encodes these.
        encoder, content_type = choose("")
        self._content_types: list[str] = [content_type]
        self._encoders: dict[str, Encoder] = {content_type: encoder}
        self.encoded_fragments = 0  # how many fragments were encoded since start, for tests and the benchmark

    def refresh(self, target: str) -> None:
        """Encode a target's fragment now, in the thread that published its result, so a scrape only assembles."""
        if target not in self.targets:
            return
        snapshot = self.store.current
        generation = snapshot.generations.get(target, 0)
        for content_type in list(self._content_types):
            encoder = self._encoders[content_type]
            families = self._encode(target, snapshot, encoder)
            with self._lock:
                cached = self._fragments.get((target, content_type))
                if cached is None or cached[0] < generation:
                    self._fragments[(target, content_type)] = (generation, families)

    def render(self, accept: str, *, target: str | None = None, compress: bool = False) -> tuple[bytes, str]:
        """The body of /metrics (target None) or /probe?target=...; gzip-compressed when asked."""
        encoder, content_type = choose(accept)
        snapshot = self.store.current
        key = (target, content_type, compress)
        with self._lock:
            cached_for, bodies = self._bodies
            if cached_for is not snapshot:
                bodies = {}
                self._bodies = (snapshot, bodies)
            if key in bodies:
                return bodies[key], content_type
            names = self.targets if target is None else (target,)
            fragments = [self._fragment(None, snapshot, encoder, content_type)]
            fragments += [self._fragment(name, snapshot, encoder, content_type) for name in names]
            body = merge(fragments, openmetrics=content_type.startswith("application/openmetrics-text"))
            if compress:
                body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
            if len(bodies) < BODIES_PER_SNAPSHOT:
                bodies[key] = body
            return body, content_type

    def _encode(self, target: str | None, snapshot: Snapshot, encoder: Encoder) -> list[Family]:
        """One target's families (None: the global part, build info only) as the encoder writes them."""
        if target is None:
            collector = PartkeyCollector(FrozenSnapshot(Snapshot()), [], build_info=True)
        else:
            collector = PartkeyCollector(FrozenSnapshot(snapshot.for_target(target)), [target], build_info=False)
        self.encoded_fragments += 1
        return split_families(encoder(_Collectors(collector)))

    def _fragment(self, target: str | None, snapshot: Snapshot, encoder: Encoder, content_type: str) -> list[Family]:
        """A target's families from the cache, encoded again only when its generation moved."""
        generation = -1 if target is None else snapshot.generations.get(target, 0)
        cached = self._fragments.get((target, content_type))
        if cached is not None and cached[0] >= generation:
            return cached[1]  # a newer one (refresh() ran after this scrape took its snapshot) is fine too
        families = self._encode(target, snapshot, encoder)
        if content_type not in self._content_types and len(self._content_types) < CACHED_CONTENT_TYPES:
            self._content_types.append(content_type)
            self._encoders[content_type] = encoder
        if content_type in self._content_types:
            latest = self._fragments.get((target, content_type))
            if latest is None or latest[0] < generation:
                self._fragments[(target, content_type)] = (generation, families)
        return families
