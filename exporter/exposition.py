"""The /metrics and /probe bodies, kept up to date as each result is published; a scrape only joins bytes."""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.exposition import choose_encoder

from exporter.collector import PartkeyCollector
from exporter.gzip_pieces import GZIP_LEVEL, Piece, deflate, member
from exporter.malloc import return_large_blocks
from exporter.snapshot import FrozenSnapshot, Snapshot, SnapshotSource
from exporter.textformat import OPENMETRICS_EOF, Family, Format, encode, format_of, split_families

__all__ = ["Exposition", "Family", "Fragment", "choose", "gzip_member", "split_families", "wants_gzip"]

log = logging.getLogger(__name__)

Encoder = Callable[[Any], bytes]
Parts = tuple[tuple[bytes, ...], ...]  # a body: groups of buffers to send one after another
CACHED_CONTENT_TYPES = 4  # a client picks the version echoed in the content type: keep a few, never one per version
# A /metrics segment holds one family's lines of this many consecutive targets: a new result re-joins and
# re-compresses only its own segments. Fewer targets per segment compress worse (each compressed piece starts
# with an empty dictionary) and cost more pieces: 16 made a 200 x 100 fleet's body 812 KB against 750 KB in one
# piece (bench/exposition.py).
SEGMENT_TARGETS = 16
# A scrape that finds a result still being encoded by its publishing thread waits for it (rather than encode it
# a second time next to it) at most this long, then encodes it itself.
PUBLISHER_WAIT_SECONDS = 5.0
PIECE_BYTES = 64 * 1024  # consecutive segments are compressed together up to about this much plain text


def gzip_member(data: bytes) -> bytes:
    """DATA as one complete gzip member (mtime 0)."""
    return zlib.compress(data, GZIP_LEVEL, wbits=31)


@dataclass(frozen=True)
class Fragment:
    """One target's encoded families (or the global part's) at one generation of that target."""

    generation: int
    families: tuple[Family, ...]
    by_name: dict[str, Family] = field(compare=False, repr=False)
    # Per collector section: the inputs its families were written from, and those families (reused while equal).
    sections: dict[str, tuple[Any, tuple[Family, ...]]] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def of(
        generation: int, families: Sequence[Family], sections: dict[str, tuple[Any, tuple[Family, ...]]] | None = None
    ) -> Fragment:
        """A fragment with its families looked up by name."""
        return Fragment(generation, tuple(families), {family.name: family for family in families}, sections or {})


@dataclass(frozen=True, eq=False)
class Segment:
    """One family's lines for one run of targets (the first run starts with its HELP/TYPE lines)."""

    # The plain text is kept as its pieces (the fragments' own bytes objects), never joined: a fleet's plain body
    # is megabytes that the fragments already hold.
    pieces: tuple[bytes, ...]
    size: int


@dataclass(frozen=True)
class Body:
    """A whole /metrics body as the buffers to send, in order: plain (per segment) and, once asked for, gzip."""

    plain: Parts  # each segment's pieces: flattened only by the writer, a fleet's body has ~10,000 of them
    packed: Parts | None  # one gzip member, as its header, pieces and trailer

    def parts(self, compress: bool) -> Parts:
        """What to send."""
        if compress:
            assert self.packed is not None, "the gzip body is made before a gzip body is served"
            return self.packed
        return self.plain


class Layout:
    """One content type's /metrics body: one segment per family and run of SEGMENT_TARGETS targets."""

    # Mutated only under Exposition._lock; `body` and `generations` are replaced whole, so a scrape reads them
    # without the lock. Consecutive segments are deflated together into pieces of about PIECE_BYTES (a piece
    # per segment made a 3-target body 3x the size of one gzip), and the pieces make one gzip member
    # (gzip_pieces); a piece is deflated again only when one of its segments changed.

    def __init__(self, form: Format, names: tuple[str | None, ...]) -> None:
        self.form = form
        self.names = names  # None first: the global part (build info)
        self.index = {name: position for position, name in enumerate(names)}
        self.fragments: list[Fragment | None] = [None] * len(names)
        self.order: list[str] = []  # family names in body order (first seen first)
        self.headers: dict[str, bytes] = {}
        self.segments: dict[tuple[str, int], Segment] = {}
        self.dirty: set[tuple[str, int]] = set()
        self.gzip = False  # keep the gzip body too (a scrape asked for gzip once)
        self.pieces: dict[tuple[int, ...], tuple[tuple[Segment, ...], Piece]] = {}  # by its segments' ids
        self.installed: dict[str, int] = {}  # generations of the fragments installed
        self.generations: dict[str, int] = {}  # of the fragments the body holds (set after the body)
        self.checked: Snapshot | None = None  # the last snapshot covers() found the body up to date with
        self.body = Body((), None)

    def install(self, name: str | None, fragment: Fragment) -> bool:
        """Put a newer fragment in place and mark the segments whose text changed; False if it was not newer."""
        position = self.index[name]
        old = self.fragments[position]
        if old is not None and old.generation >= fragment.generation:
            return False
        run = position // SEGMENT_TARGETS
        for family in fragment.families:
            if family.name not in self.headers:
                self.headers[family.name] = family.header
                self.order.append(family.name)
                self.dirty.add((family.name, 0))  # the first run carries the header, whoever holds the lines
            before = old.by_name.get(family.name) if old is not None else None
            if before is None or before.samples != family.samples:
                self.dirty.add((family.name, run))
        if old is not None:
            self.dirty.update((family.name, run) for family in old.families if family.name not in fragment.by_name)
        self.fragments[position] = _reusing(old, fragment)
        if name is not None:
            self.installed[name] = fragment.generation
        return True

    def rebuild(self) -> tuple[int, int]:
        """Re-make the dirty segments, then the body (and changed gzip pieces); (segments joined, pieces deflated)."""
        joined = 0
        for name, run in sorted(self.dirty):
            pieces = tuple(
                family.samples
                for fragment in self.fragments[run * SEGMENT_TARGETS : (run + 1) * SEGMENT_TARGETS]
                if fragment is not None and (family := fragment.by_name.get(name)) is not None and family.samples
            )
            if run == 0:
                pieces = (self.headers[name], *pieces)
            old = self.segments.get((name, run))
            if old is not None and len(old.pieces) == len(pieces) and all(map(_same, old.pieces, pieces)):
                continue  # the same text after all
            self.segments[(name, run)] = Segment(pieces, sum(map(len, pieces)))
            joined += 1
        self.dirty.clear()
        if not joined and self.body.plain:
            self.generations = dict(self.installed)  # the same text: the body holds these generations already
            return 0, 0
        return joined, self._assemble()

    def want_gzip(self) -> int:
        """Keep the gzip body from now on; pieces deflated."""
        if self.gzip:
            return 0
        self.gzip = True
        return self._assemble()

    def _assemble(self) -> int:
        """The body from the segments in order (each family's runs, then OpenMetrics' '# EOF'); pieces deflated."""
        runs = (len(self.names) + SEGMENT_TARGETS - 1) // SEGMENT_TARGETS
        found = [self.segments.get((name, run)) for name in self.order for run in range(runs)]
        segments = [segment for segment in found if segment is not None and segment.size]
        plain = [segment.pieces for segment in segments]
        made = 0
        packed: list[Piece] | None = None
        if self.gzip:
            packed, made = self._deflated(segments)
        if self.form.openmetrics:
            plain.append((OPENMETRICS_EOF,))
            if packed is not None:
                packed.append(_EOF_PIECE)
        self.body = Body(tuple(plain), None if packed is None else (tuple(member(packed)),))
        # Only now: a scrape that sees these generations finds a body that holds them.
        self.generations = dict(self.installed)
        return made

    def _deflated(self, segments: list[Segment]) -> tuple[list[Piece], int]:
        """Consecutive segments deflated together, about PIECE_BYTES each; only new groups are compressed."""
        groups: list[tuple[Segment, ...]] = []
        group: list[Segment] = []
        size = 0
        for segment in segments:
            group.append(segment)
            size += segment.size
            if size >= PIECE_BYTES:
                groups.append(tuple(group))
                group, size = [], 0
        if group:
            groups.append(tuple(group))
        kept: dict[tuple[int, ...], tuple[tuple[Segment, ...], Piece]] = {}
        packed: list[Piece] = []
        made = 0
        for grouped in groups:
            key = tuple(map(id, grouped))  # the cached value holds the segments: their ids cannot be reused
            cached = self.pieces.get(key)
            if cached is None:
                cached = (grouped, deflate(b"".join(piece for segment in grouped for piece in segment.pieces)))
                made += 1
            kept[key] = cached
            packed.append(cached[1])
        self.pieces = kept
        return packed, made

    def covers(self, snapshot: Snapshot, targets: Sequence[str]) -> bool:
        """The body holds every target's result up to the snapshot's (never less than the store has)."""
        if self.checked is snapshot:
            return True
        have, want = self.generations, snapshot.generations
        if all(have.get(name, -1) >= want.get(name, 0) for name in targets):
            self.checked = snapshot
            return True
        return False


_EOF_PIECE = deflate(OPENMETRICS_EOF)


def _reusing(old: Fragment | None, new: Fragment) -> Fragment:
    """NEW, holding OLD's bytes objects where the text is the same: later comparisons are identity checks."""
    if old is None:
        return new
    kept = {
        family.name: before
        for family in new.families
        if (before := old.by_name.get(family.name)) is not None and before is not family and before == family
    }
    if not kept:
        return new
    families = tuple(kept.get(family.name, family) for family in new.families)
    sections = {
        name: (inputs, tuple(kept.get(family.name, family) for family in written))
        for name, (inputs, written) in new.sections.items()
    }
    return Fragment.of(new.generation, families, sections)


def _same(a: bytes, b: bytes) -> bool:
    """The same bytes: the same object (an unchanged fragment) or, rarely, equal text."""
    return a is b or a == b


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
    """Encodes a target's part when it publishes and keeps each /metrics body up to date; scrapes join bytes."""

    # A result's thread encodes its target's fragment (textformat: prometheus_client's bytes, written directly),
    # then re-joins and re-compresses only the segments whose text changed. A scrape whose body holds every result
    # the store has sends the segments as they are; one that arrives before the publishing thread is done brings
    # the body up to date itself first, so /metrics never shows less than the store.

    def __init__(self, store: SnapshotSource, targets: Sequence[str]) -> None:
        self.store = store
        self.targets = tuple(targets)
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)  # a publishing thread finished its update
        # (target, content type) -> the generation a publishing thread is encoding: a scrape waits for it
        self._inflight: dict[tuple[str, str], int] = {}
        # (target or None for the global part, content type) -> its latest fragment
        self._fragments: dict[tuple[str | None, str], Fragment] = {}
        self._layouts: dict[str, Layout] = {}
        # /probe bodies per target generation: a probe of an unchanged target is a lookup.
        # Plain ones are the fragments' own bytes in order (a tuple of references, no copy of 70 KB per target).
        self._probes: dict[tuple[str, str, bool], tuple[int, tuple[bytes, ...]]] = {}
        self._probed: set[tuple[str, bool]] = set()  # (content type, gzip) probes asked for: made ahead from now on
        encoder, content_type = choose("")
        self._content_types: list[str] = [content_type]
        self._formats: dict[str, Format] = {content_type: format_of(encoder)}
        self.encoded_fragments = 0  # fragments encoded since the start, for tests and the benchmark
        self.reused_sections = 0  # sections of those whose families were kept from the fragment before
        self.joined_segments = 0  # segments joined again
        self.compressed_pieces = 0  # groups of segments deflated

    def start(self) -> None:
        """Serving starts: large freed bodies go back to the system at once."""
        return_large_blocks()  # segments of up to a few megabytes come and go with every result

    def stop(self) -> None:
        """Nothing runs in the background."""

    def set_targets(self, targets: Sequence[str], restarted: Sequence[str] = ()) -> None:
        """A reload changed the targets: bodies hold these from now; removed and restarted ones' fragments go."""
        with self._lock:
            self.targets = tuple(targets)
            kept = set(self.targets) - set(restarted)
            self._fragments = {k: v for k, v in self._fragments.items() if k[0] is None or k[0] in kept}
            self._probes = {k: v for k, v in self._probes.items() if k[0] in kept}
            wanted = {content_type: layout.gzip for content_type, layout in self._layouts.items()}
            self._layouts = {}
        for content_type, compress in wanted.items():  # made here, in the reload's thread, not by a scrape
            self._current(content_type, self.store.current, compress)

    def refresh(self, target: str) -> None:
        """A result was published: encode the target's fragment and update the bodies, in the publishing thread."""
        if target not in self.targets:
            return
        snapshot = self.store.current
        generation = snapshot.generations.get(target, 0)
        for content_type in list(self._content_types):
            key = (target, content_type)
            with self._lock:
                self._inflight[key] = max(generation, self._inflight.get(key, -1))
            try:
                fragment = self._encode(
                    target, snapshot, self._formats[content_type], generation, self._fragments.get(key)
                )
                with self._lock:
                    fragment = self._keep(target, content_type, fragment)
                    layout = self._layouts.get(content_type)
                    if layout is not None and target in layout.index and layout.install(target, fragment):
                        self._rebuilt(layout.rebuild())
            finally:
                with self._lock:
                    if self._inflight.get(key) == generation:
                        del self._inflight[key]
                    self._done.notify_all()
            for content_type_, compress in list(self._probed):
                if content_type_ == content_type:
                    self._probe(target, content_type, compress)

    def fragment(self, target: str | None, content_type: str) -> Fragment | None:
        """The cached fragment of a target (None: the global part), for tests and diagnostics."""
        return self._fragments.get((target, content_type))

    def render(self, accept: str, *, target: str | None = None, compress: bool = False) -> tuple[bytes, str]:
        """The body of /metrics (target None) or /probe?target=... as one bytes object."""
        parts, content_type = self.render_parts(accept, target=target, compress=compress)
        return b"".join(piece for group in parts for piece in group), content_type

    def render_parts(self, accept: str, *, target: str | None = None, compress: bool = False) -> tuple[Parts, str]:
        """The body of /metrics or /probe as buffers to send in order (never joined into one: it is megabytes)."""
        encoder, content_type = choose(accept)
        self._remember(content_type, encoder)
        snapshot = self.store.current
        if content_type not in self._formats:  # more content types than we keep: made for this request alone
            return ((self._uncached(snapshot, encoder, target, compress),),), content_type
        if target is not None:
            return (self._probe(target, content_type, compress),), content_type
        layout = self._layouts.get(content_type)
        if (
            layout is not None
            and layout.names == (None, *self.targets)
            and (layout.gzip or not compress)
            and layout.covers(snapshot, self.targets)
        ):
            return layout.body.parts(compress), content_type
        return self._current(content_type, snapshot, compress).body.parts(compress), content_type

    def _current(self, content_type: str, snapshot: Snapshot, compress: bool) -> Layout:
        """The content type's layout brought up to SNAPSHOT (made on first use), with the gzip body if asked."""
        form = self._formats[content_type]
        targets = self.targets
        names: tuple[str | None, ...] = (None, *targets)
        stale = [name for name in names if self._stale(name, content_type, snapshot)]
        if stale:
            stale = self._await_publishers(stale, content_type, snapshot)
        # Encode what is still missing or older than the snapshot outside the lock: other scrapes keep being served.
        fresh = {
            name: self._encode(
                name, snapshot, form, self._generation(name, snapshot), self._fragments.get((name, content_type))
            )
            for name in stale
        }
        with self._lock:
            for name, fragment in fresh.items():
                self._keep(name, content_type, fragment)
            layout = self._layouts.get(content_type)
            if layout is None or layout.names != names:
                layout = self._layouts[content_type] = Layout(form, names)
            for name in names:
                cached = self._fragments.get((name, content_type))
                if cached is not None:
                    layout.install(name, cached)
            if compress:
                self.compressed_pieces += layout.want_gzip()
            self._rebuilt(layout.rebuild())
            return layout

    def _await_publishers(self, stale: list[str | None], content_type: str, snapshot: Snapshot) -> list[str | None]:
        """Wait for the publishing threads already encoding these results (never encode one twice); what is left."""
        deadline = time.monotonic() + PUBLISHER_WAIT_SECONDS
        with self._lock:
            while True:
                stale = [name for name in stale if self._stale(name, content_type, snapshot)]
                busy = [
                    name
                    for name in stale
                    if name is not None
                    and self._inflight.get((name, content_type), -1) >= self._generation(name, snapshot)
                ]
                left = deadline - time.monotonic()
                if not busy or left <= 0:
                    return stale
                self._done.wait(left)

    def _stale(self, name: str | None, content_type: str, snapshot: Snapshot) -> bool:
        """NAME's cached fragment is missing or older than SNAPSHOT."""
        cached = self._fragments.get((name, content_type))
        return cached is None or cached.generation < self._generation(name, snapshot)

    @staticmethod
    def _generation(name: str | None, snapshot: Snapshot) -> int:
        """NAME's generation in SNAPSHOT (-1: the global part never changes)."""
        return -1 if name is None else snapshot.generations.get(name, 0)

    def _keep(self, name: str | None, content_type: str, fragment: Fragment) -> Fragment:
        """Cache a fragment unless a newer one is there (unchanged families keep their bytes); under the lock."""
        cached = self._fragments.get((name, content_type))
        if cached is None or cached.generation < fragment.generation:
            # The cached fragment's bytes where the text is the same: one copy in memory, identity checks later.
            fragment = self._fragments[(name, content_type)] = _reusing(cached, fragment)
        return fragment

    def _rebuilt(self, counts: tuple[int, int]) -> None:
        """Count what a rebuild did; the caller holds the lock."""
        self.joined_segments += counts[0]
        self.compressed_pieces += counts[1]

    def _probe(self, target: str, content_type: str, compress: bool) -> tuple[bytes, ...]:
        """One target's body, cached until that target's next result."""
        snapshot = self.store.current
        generation = snapshot.generations.get(target, 0)
        key = (target, content_type, compress)
        cached = self._probes.get(key)
        if cached is not None and cached[0] >= generation:
            return cached[1]
        form = self._formats[content_type]
        parts = []
        for name in (None, target):
            fragment = self._fragments.get((name, content_type))
            if fragment is None or fragment.generation < self._generation(name, snapshot):
                fragment = self._encode(name, snapshot, form, self._generation(name, snapshot), fragment)
                with self._lock:
                    self._keep(name, content_type, fragment)
            parts.append(fragment)
        body = _ordered(parts, form.openmetrics)
        if compress:
            body = (gzip_member(b"".join(body)),)
        with self._lock:
            self._probed.add((content_type, compress))
            latest = self._probes.get(key)
            if latest is None or latest[0] < parts[1].generation:
                self._probes[key] = (parts[1].generation, body)
        return body

    def _uncached(self, snapshot: Snapshot, encoder: Encoder, target: str | None, compress: bool) -> bytes:
        """A body for a content type beyond the cached ones, encoded for this request."""
        form = format_of(encoder)
        names = (None, *self.targets) if target is None else (None, target)
        fragments = [self._encode(name, snapshot, form, self._generation(name, snapshot)) for name in names]
        body = b"".join(_ordered(fragments, form.openmetrics))
        return gzip_member(body) if compress else body

    def _remember(self, content_type: str, encoder: Encoder) -> None:
        """Keep this content type's fragments and bodies from now on, up to CACHED_CONTENT_TYPES of them."""
        if content_type not in self._formats and len(self._content_types) < CACHED_CONTENT_TYPES:
            with self._lock:
                if content_type not in self._formats:
                    self._formats[content_type] = format_of(encoder)
                    self._content_types.append(content_type)

    def _encode(
        self, name: str | None, snapshot: Snapshot, form: Format, generation: int, base: Fragment | None = None
    ) -> Fragment:
        """One target's families (None: the global part, build info only), written in FORM.

        A section whose inputs equal those BASE (an earlier fragment of the same target and format) was written
        from keeps BASE's families: an incremental verification's result re-writes its target's few check and
        verification series, not the 100-partition distribution families next to them.
        """
        if name is None:
            collector = PartkeyCollector(FrozenSnapshot(Snapshot()), [], build_info=True)
            self.encoded_fragments += 1
            return Fragment.of(generation, encode(collector.collect(), form))
        part = snapshot.for_target(name)
        collector = PartkeyCollector(FrozenSnapshot(part), [name], build_info=False)
        families: list[Family] = []
        sections: dict[str, tuple[Any, tuple[Family, ...]]] = {}
        for section in collector.sections(part):
            kept = base.sections.get(section.name) if base is not None else None
            if kept is not None and section.inputs is not None and kept[0] == section.inputs:
                written = kept[1]
                self.reused_sections += 1
            else:
                written = tuple(encode(section.families(), form))
            sections[section.name] = (section.inputs, written)
            families.extend(written)
        self.encoded_fragments += 1
        return Fragment.of(generation, families, sections)


def _ordered(fragments: Sequence[Fragment], openmetrics: bool) -> tuple[bytes, ...]:
    """One valid exposition's pieces from fragments: each family's header once (from its first fragment), its lines."""
    order: list[str] = []
    found: dict[str, list[bytes]] = {}
    for fragment in fragments:
        for family in fragment.families:
            if family.name not in found:
                order.append(family.name)
                found[family.name] = [family.header]
            if family.samples:
                found[family.name].append(family.samples)
    pieces = tuple(piece for name in order for piece in found[name])
    return (*pieces, OPENMETRICS_EOF) if openmetrics else pieces
