"""The unit of work of a template build: a fixed chunk of member images, accumulated, then scored.

:mod:`heatmap_templates.templates.build` cuts the union of every requested class's members, in store order,
into equal chunks of at most ``chunk_images`` (:func:`plan_chunks`). A chunk carries what a worker needs without
the store's index: the files and rows of its images and, per image, the path, hash and class
probabilities of its member records; per class, which of its images are members. Two passes:

1. :func:`accumulate_chunk`: read each image and its maps once, register the image once, and add
   every class's prepared map to that class's accumulator; the result (:class:`PartialBuild`) keeps
   the alignments. Partial builds fold together in chunk order with :func:`merge_partials` (the
   accumulators' exact merge), wherever they were computed.
2. :func:`leave_one_out_chunk`: each member's leave-one-out correlation against its finished
   template, from the maps moved with the kept alignments (no registration, no image reads).

The chunking does not depend on the executor, so a cluster build equals a local one bit for bit.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from heatmap_templates.data.preprocess import unit_pixels
from heatmap_templates.store.heatmap_store import read_at
from heatmap_templates.templates.accumulator import ClassAccumulator, Member, leave_one_out_correlations
from heatmap_templates.templates.prepare import prepare_maps
from heatmap_templates.templates.registration import Alignment, Reference, Registrar

# At most this many images per chunk (chunks are cut equal, chunk_bounds): the unit a thread or a cluster task works on.
# 256 rather than 512: a 1525-image build makes 6 chunks that share 2 threads evenly, not 3 (365 vs 342 maps/s side by
# side; the same at 224 px); clusters want more (docs/cluster.md).
DEFAULT_CHUNK_IMAGES = 256


@dataclass(frozen=True)
class BuildSettings:
    """What every chunk task shares: the frame, and how maps are prepared and accumulated."""

    registration: str
    reference: Reference
    class_indices: dict[str, int]  # class name -> its column in the store's maps and probabilities
    normalisation: str
    n_components: int
    bootstrap_replicates: int
    median: bool
    batch_size: int

    def accumulator(self, name: str) -> ClassAccumulator:
        return ClassAccumulator(name, self.reference.shape, normalisation=self.normalisation, n_components=self.n_components,
                                bootstrap_replicates=self.bootstrap_replicates, median=self.median)


@dataclass(frozen=True)
class BuildChunk:
    """A run of member images (store order) and, per class, which of them are its members."""

    number: int
    sources: tuple[str, ...]  # the store's files (final file and shards)
    locations: np.ndarray  # (n, 2) file number, row
    paths: tuple[str, ...]
    sha256: tuple[str, ...]
    probabilities: np.ndarray  # (n, K) float32
    members: dict[str, np.ndarray]  # class name -> sorted rows of this chunk that are its members

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class PartialBuild:
    """Accumulators over some chunks (classes with members there) and the alignments of their images, in order."""

    accumulators: dict[str, ClassAccumulator]
    alignments: list[Alignment] = field(default_factory=list)


def chunk_bounds(images: int, chunk_images: int = DEFAULT_CHUNK_IMAGES) -> list[tuple[int, int]]:
    """(start, stop) of each chunk of ``images``: as many chunks as ``chunk_images`` needs, of sizes that differ by at
    most one. Equal chunks keep threads busy to the end: 800 images cut as 256, 256, 256 and 32 left one chunk running
    alone on one of two threads for a seventh of a 224-px build."""
    count = -(-images // chunk_images)
    edges = [round(i * images / count) for i in range(count + 1)] if count else [0]
    return list(itertools.pairwise(edges))


def plan_chunks(reader, members: dict[str, np.ndarray], chunk_images: int = DEFAULT_CHUNK_IMAGES) -> list[BuildChunk]:
    """Cut the union of ``members`` (store indices per class) into chunks of at most ``chunk_images`` (:func:`chunk_bounds`),
    in store order."""
    union = np.unique(np.concatenate(list(members.values()))) if members else np.zeros(0, np.int64)
    belongs = {name: np.isin(union, indices) for name, indices in members.items()}
    sources = tuple(str(path) for path in reader.sources)
    chunks = []
    for number, (start, stop) in enumerate(chunk_bounds(len(union), chunk_images)):
        indices = union[start:stop]
        chunk_members = {name: np.flatnonzero(mask[start:stop]) for name, mask in belongs.items()}
        chunks.append(BuildChunk(
            number=number, sources=sources, locations=reader.locations(indices),
            paths=tuple(reader.paths[i] for i in indices), sha256=tuple(reader.sha256[i] for i in indices),
            probabilities=np.asarray(reader.probabilities[indices], dtype=np.float32),
            members={name: rows for name, rows in chunk_members.items() if len(rows)},
        ))
    return chunks


def _batches(chunk: BuildChunk, batch_size: int):
    for start in range(0, len(chunk), batch_size):
        yield start, min(start + batch_size, len(chunk))


def _members_between(chunk: BuildChunk, start: int, stop: int) -> list[tuple[str, np.ndarray]]:
    """Per class, its member rows of the chunk that lie in [start, stop)."""
    pairs = []
    for name, rows in chunk.members.items():
        inside = rows[(rows >= start) & (rows < stop)]
        if len(inside):
            pairs.append((name, inside))
    return pairs


def accumulate_chunk(chunk: BuildChunk, settings: BuildSettings, threads: int = 1) -> PartialBuild:
    """Pass one over a chunk: register each image once and add every class's prepared map to its accumulator.

    With ``threads`` > 1 the registrations, the classes' map preparation and the statistics' updates run in
    threads; every class's arithmetic is the same in any case, so the result does not depend on ``threads``.
    """
    registrar = Registrar(settings.registration, settings.reference)
    accumulators = {name: settings.accumulator(name) for name in chunk.members}
    alignments: list[Alignment] = []
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    run = pool.map if pool is not None else map
    try:
        for start, stop in _batches(chunk, settings.batch_size):
            images = read_at(chunk.sources, chunk.locations[start:stop], "image")
            raw = read_at(chunk.sources, chunk.locations[start:stop], "raw")
            found = registrar.estimate_many([unit_pixels(image) for image in images], threads)
            alignments.extend(found)

            def prepared(pair: tuple[str, np.ndarray], start: int = start, raw: np.ndarray = raw,
                         found: list[Alignment] = found) -> tuple[str, np.ndarray, np.ndarray]:
                name, rows = pair
                local = rows - start
                maps = prepare_maps(None, raw[local, settings.class_indices[name]], registrar, settings.normalisation,
                                    alignments=[found[row] for row in local]).maps  # the images themselves are not needed
                return name, rows, maps

            for name, rows, maps in list(run(prepared, _members_between(chunk, start, stop))):
                k = settings.class_indices[name]
                accumulators[name].add(maps, [
                    Member(chunk.paths[row], chunk.sha256[row], float(chunk.probabilities[row, k]), float(found[row - start].quality),
                           found[row - start].method, tuple(float(v) for v in np.ravel(found[row - start].matrix)))
                    for row in rows
                ], normalised=True, run=run)
        for accumulator in accumulators.values():
            accumulator.flush(run)
    finally:
        if pool is not None:
            pool.shutdown()
    return PartialBuild(accumulators, alignments)


def merge_partials(first: PartialBuild, second: PartialBuild) -> PartialBuild:
    """``second`` folded into ``first`` (which is modified and returned): exact accumulator merges, alignments appended."""
    for name, accumulator in second.accumulators.items():
        if name in first.accumulators:
            first.accumulators[name].merge(accumulator)
        else:
            first.accumulators[name] = accumulator
    first.alignments.extend(second.alignments)
    return first


def leave_one_out_chunk(item: tuple[BuildChunk, Sequence[Alignment]], settings: BuildSettings,
                        sums: dict[str, tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
    """Pass two over a chunk: per class, its members' correlations with the template left without them.

    ``item`` is the chunk and its images' alignments from pass one; ``sums`` per class the sum of its
    members' prepared maps and their count (the template mean times the count).
    """
    chunk, alignments = item
    registrar = Registrar(settings.registration, settings.reference)
    values: dict[str, list[np.ndarray]] = {name: [] for name in chunk.members}
    for start, stop in _batches(chunk, settings.batch_size):
        pairs = _members_between(chunk, start, stop)
        if not pairs:
            continue
        raw = read_at(chunk.sources, chunk.locations[start:stop], "raw")
        for name, rows in pairs:
            maps = prepare_maps(None, raw[rows - start, settings.class_indices[name]], registrar, settings.normalisation,
                                alignments=[alignments[row] for row in rows]).maps
            total, count = sums[name]
            values[name].append(leave_one_out_correlations(maps, total, count))
    return {name: np.concatenate(parts) for name, parts in values.items() if parts}
