"""The /metrics and /probe bodies, assembled from per-target fragments; only a changed target is re-encoded."""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from exporter.collector import PartkeyCollector
from exporter.gzip_pieces import GZIP_LEVEL, PieceCache
from exporter.malloc import return_large_blocks
from exporter.snapshot import FrozenSnapshot, Snapshot, SnapshotSource

log = logging.getLogger(__name__)

Encoder = Callable[[Any], bytes]
BODIES_PER_SNAPSHOT = 8  # cached whole bodies per snapshot: content types x gzip, never one per version sent
CACHED_CONTENT_TYPES = 4  # a client picks the version echoed in the content type: cache a few, never one per version
OPENMETRICS_EOF = b"# EOF\n"
# The background builder assembles /metrics at most this often: a burst of results (a fleet publishes several a
# second) costs one build, and a scrape is at most this much (plus one build) behind the newest result.
BUILD_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class Family:
    """One metric family of one fragment: its HELP/TYPE lines and its sample lines."""

    name: str
    header: bytes
    samples: bytes


@dataclass(frozen=True)
class Fragment:
    """One target's encoded families (or the global part's) at one generation of that target."""

    generation: int
    families: tuple[Family, ...]


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


def pieces(fragments: Sequence[Fragment], openmetrics: bool) -> list[tuple[tuple[str, int], bytes]]:
    """The body's pieces in order, keyed by (family, fragment index): each family's header once, then its samples."""
    # The header comes from the family's first fragment (index -1 keys it); '# EOF' ends an OpenMetrics body.
    order: list[str] = []
    found: dict[str, list[tuple[tuple[str, int], bytes]]] = {}
    for index, fragment in enumerate(fragments):
        for family in fragment.families:
            if family.name not in found:
                order.append(family.name)
                found[family.name] = [((family.name, -1), family.header)]
            if family.samples:
                found[family.name].append(((family.name, index), family.samples))
    body = [piece for name in order for piece in found[name]]
    return [*body, (("", -2), OPENMETRICS_EOF)] if openmetrics else body


def plain_body(fragments: Sequence[Fragment], openmetrics: bool) -> bytes:
    """One valid exposition from fragments."""
    return b"".join(data for _, data in pieces(fragments, openmetrics))


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


BodyKey = tuple[str, bool]  # (content type, gzip)


class Exposition:
    """Encodes each target's part of the snapshot once per change of that target; bodies are built ahead."""

    # A scrape assembles the body of the current snapshot once per snapshot; gzip compresses only the pieces of the
    # targets that changed (PieceCache). After start(), a builder thread also assembles every /metrics body scrapes
    # asked for, at most once per BUILD_INTERVAL_SECONDS after a change: a scrape that finds the snapshot unchanged
    # since then only sends bytes. A built body is never served once a newer result is in the store.

    def __init__(self, store: SnapshotSource, targets: Sequence[str]) -> None:
        self.store = store
        self.targets = tuple(targets)
        self._lock = threading.Lock()
        # (target or None for the global part, content type) -> its latest fragment
        self._fragments: dict[tuple[str | None, str], Fragment] = {}
        self._bodies: tuple[Snapshot | None, dict[tuple[str | None, str, bool], bytes]] = (None, {})
        # /probe bodies per target generation: a probe of an unchanged target is a lookup.
        self._probes: dict[tuple[str, str, bool], tuple[int, bytes]] = {}
        # The content types scrapes asked for (the classic text format from the start): refresh() encodes these.
        encoder, content_type = choose("")
        self._content_types: list[str] = [content_type]
        self._encoders: dict[str, Encoder] = {content_type: encoder}
        self.encoded_fragments = 0  # how many fragments were encoded since start, for tests and the benchmark
        self.building = False  # a build is in progress (tests wait for it to end)
        self.builds = 0  # bodies the builder assembled, for tests and the benchmark
        # The builder's latest /metrics bodies, and the snapshot they show: served only while it is the current one,
        # so a scrape never shows less than what was published before it (a result the store has, /metrics has).
        self._built: dict[BodyKey, bytes] = {}
        self._built_for: Snapshot | None = None
        self._wanted: set[BodyKey] = set()  # the /metrics bodies scrapes asked for: the builder keeps these fresh
        self._gzip: dict[str, PieceCache] = {}  # per content type; used under _gzip_lock
        self._gzip_lock = threading.Lock()
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._builder: threading.Thread | None = None

    def start(self) -> None:
        """Build /metrics bodies in the background from now on."""
        if self._builder is None:
            return_large_blocks()  # the builder allocates and frees megabyte bodies every second
            self._builder = threading.Thread(target=self._build_loop, name="exposition-builder", daemon=True)
            self._builder.start()

    def stop(self) -> None:
        """Stop the builder (a build in progress finishes in its daemon thread)."""
        self._stopping.set()
        self._changed.set()

    def set_targets(self, targets: Sequence[str], restarted: Sequence[str] = ()) -> None:
        """A reload changed the targets: bodies hold these from now; removed and restarted ones' fragments go."""
        with self._lock:
            self.targets = tuple(targets)
            kept = set(self.targets) - set(restarted)
            self._fragments = {k: v for k, v in self._fragments.items() if k[0] is None or k[0] in kept}
            self._probes = {k: v for k, v in self._probes.items() if k[0] in kept}
            self._bodies = (None, {})
            self._built = {}  # never serve a body of the old target list: scrapes assemble until the next build
        self._changed.set()

    def refresh(self, target: str) -> None:
        """Encode a target's fragment now, in the thread that published its result, so a scrape only assembles."""
        if target not in self.targets:
            return
        snapshot = self.store.current
        generation = snapshot.generations.get(target, 0)
        for content_type in list(self._content_types):
            encoder = self._encoders[content_type]
            fragment = Fragment(generation, tuple(self._encode(target, snapshot, encoder)))
            with self._lock:
                cached = self._fragments.get((target, content_type))
                if cached is None or cached.generation < generation:
                    self._fragments[(target, content_type)] = fragment
        self._changed.set()

    def fragment(self, target: str | None, content_type: str) -> Fragment | None:
        """The cached fragment of a target (None: the global part), for tests and diagnostics."""
        return self._fragments.get((target, content_type))

    def render(self, accept: str, *, target: str | None = None, compress: bool = False) -> tuple[bytes, str]:
        """The body of /metrics (target None) or /probe?target=...; gzip-compressed when asked."""
        encoder, content_type = choose(accept)
        self._remember(content_type, encoder)
        if target is not None:
            return self._probe(target, encoder, content_type, compress), content_type
        if self._builder is not None:
            built = self._built.get((content_type, compress)) if self._built_for is self.store.current else None
            if built is not None:
                return built, content_type
            if content_type in self._content_types:
                with self._lock:
                    self._wanted.add((content_type, compress))  # the builder keeps it fresh from now on
        snapshot = self.store.current
        key = (target, content_type, compress)
        with self._lock:
            cached_for, bodies = self._bodies
            if cached_for is not snapshot:
                bodies = {}
                self._bodies = (snapshot, bodies)
            if key in bodies:
                return bodies[key], content_type
            body = self._assemble(snapshot, self.targets, encoder, content_type, compress)
            if len(bodies) < BODIES_PER_SNAPSHOT:
                bodies[key] = body
        if self._builder is not None and content_type in self._content_types:
            with self._lock:
                if self._built_for is not snapshot:
                    self._built, self._built_for = {}, snapshot
                self._built = {**self._built, (content_type, compress): body}
        return body, content_type

    def _probe(self, target: str, encoder: Encoder, content_type: str, compress: bool) -> bytes:
        """One target's body, cached until that target's next result."""
        snapshot = self.store.current
        generation = snapshot.generations.get(target, 0)
        key = (target, content_type, compress)
        cached = self._probes.get(key)
        if cached is not None and cached[0] >= generation:
            return cached[1]
        with self._lock:
            body = self._assemble(snapshot, (target,), encoder, content_type, compress)
            if content_type in self._content_types:
                self._probes[key] = (generation, body)
        return body

    def _remember(self, content_type: str, encoder: Encoder) -> None:
        """Encode (and build) this content type ahead from now on, up to CACHED_CONTENT_TYPES of them."""
        if content_type not in self._content_types and len(self._content_types) < CACHED_CONTENT_TYPES:
            self._encoders[content_type] = encoder
            self._content_types.append(content_type)

    def _assemble(
        self, snapshot: Snapshot, names: Sequence[str], encoder: Encoder, content_type: str, compress: bool
    ) -> bytes:
        """A body from the cached fragments (encoding the missing ones); the caller holds the lock."""
        fragments = self._fragments_of(snapshot, names, encoder, content_type)
        # A probe: one target's body is small, and it has no neighbours to share pieces with.
        return self._body(fragments, content_type, compress, whole_gzip=len(names) == 1)

    def _fragments_of(
        self, snapshot: Snapshot, names: Sequence[str], encoder: Encoder, content_type: str
    ) -> list[Fragment]:
        """The global fragment, then each named target's (encoding the missing ones); the caller holds the lock."""
        fragments = [self._fragment(None, snapshot, encoder, content_type)]
        return fragments + [self._fragment(name, snapshot, encoder, content_type) for name in names]

    def _body(self, fragments: Sequence[Fragment], content_type: str, compress: bool, whole_gzip: bool) -> bytes:
        """The bytes sent: plain, gzip in one go (whole_gzip), or gzip from the per-piece cache."""
        openmetrics = content_type.startswith("application/openmetrics-text")
        if not compress:
            return plain_body(fragments, openmetrics)
        if whole_gzip:
            return gzip.compress(plain_body(fragments, openmetrics), compresslevel=GZIP_LEVEL, mtime=0)
        with self._gzip_lock:
            return self._gzip.setdefault(content_type, PieceCache()).gzip(pieces(fragments, openmetrics))

    def _build_loop(self) -> None:
        """After each change, at most once per BUILD_INTERVAL_SECONDS: rebuild every body scrapes asked for."""
        while not self._stopping.is_set():
            self._changed.wait()
            if self._stopping.is_set():
                return
            self._changed.clear()
            self.building = True
            try:
                self._build()
            except Exception:  # the builder must outlive a bug in one build: scrapes then assemble themselves
                log.exception("building the /metrics body failed")
                self._built = {}
            finally:
                self.building = False
            self._stopping.wait(BUILD_INTERVAL_SECONDS)

    def _build(self) -> None:
        """Every wanted body from the current snapshot, swapped in whole."""
        snapshot = self.store.current
        built: dict[BodyKey, bytes] = {}
        with self._lock:
            wanted = sorted(self._wanted)
        for content_type, compress in wanted:
            with self._lock:  # held for the fragments only: scrapes are not kept waiting while this compresses
                fragments = self._fragments_of(snapshot, self.targets, self._encoders[content_type], content_type)
            built[(content_type, compress)] = self._body(fragments, content_type, compress, whole_gzip=False)
        with self._lock:
            self._built, self._built_for = built, snapshot
            if self._bodies[0] is not self.store.current:
                self._bodies = (None, {})  # what scrapes assembled for an older snapshot: megabytes, unused
        self.builds += len(built)

    def _encode(self, target: str | None, snapshot: Snapshot, encoder: Encoder) -> list[Family]:
        """One target's families (None: the global part, build info only) as the encoder writes them."""
        if target is None:
            collector = PartkeyCollector(FrozenSnapshot(Snapshot()), [], build_info=True)
        else:
            collector = PartkeyCollector(FrozenSnapshot(snapshot.for_target(target)), [target], build_info=False)
        self.encoded_fragments += 1
        return split_families(encoder(_Collectors(collector)))

    def _fragment(self, target: str | None, snapshot: Snapshot, encoder: Encoder, content_type: str) -> Fragment:
        """A target's fragment from the cache, encoded again only when its generation moved."""
        generation = -1 if target is None else snapshot.generations.get(target, 0)
        cached = self._fragments.get((target, content_type))
        if cached is not None and cached.generation >= generation:
            return cached  # a newer one (refresh() ran after this scrape took its snapshot) is fine too
        fragment = Fragment(generation, tuple(self._encode(target, snapshot, encoder)))
        if content_type in self._content_types:
            latest = self._fragments.get((target, content_type))
            if latest is None or latest.generation < generation:
                self._fragments[(target, content_type)] = fragment
        return fragment
