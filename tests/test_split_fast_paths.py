"""The conversion's fast paths change no byte: reused per-thread buffers
(:mod:`utils.batching.scratch`), chunks written by the reader threads themselves
(``_ChunkSink``) and the page-cache hints (:mod:`utils.batching.page_cache`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from hostile_factory import record, spread_records, write_framed

from extract_GPS_images.tfrecord import frame_record
from utils.batching import page_cache
from utils.batching.scratch import Scratch
from utils.batching.scratch import array as scratch_array
from utils.batching.shard_writer import ChunkCodec, SampleSummary
from utils.batching.split_and_batch import _ChunkSink
from utils.batching.validate_records import RecordRules, iter_results, read_file

RULES = RecordRules(8)


def test_scratch_hands_out_its_buffers_in_turn() -> None:
    scratch = Scratch()
    a = scratch.array("x", (2, 3), np.float32, ring=2)
    b = scratch.array("x", (2, 3), np.float32, ring=2)
    c = scratch.array("x", (4,), np.float32, ring=2)  # smaller: the first buffer again
    assert a.shape == (2, 3) and a.dtype == np.float32 and a.flags.c_contiguous
    assert not np.shares_memory(a, b) and np.shares_memory(a, c)
    big = scratch.array("x", (10, 10), np.float64, ring=2)  # grows the second buffer
    assert big.shape == (10, 10) and not np.shares_memory(big, c)
    assert scratch.array("y", (3,), np.uint8) is not None  # names are apart
    fresh = scratch_array(None, "x", (2, 3), np.float32)
    assert not np.shares_memory(fresh, a) and fresh.shape == (2, 3)


def _images(path: Path, scratch: Scratch | None) -> list[np.ndarray]:
    """Each valid sample's image, copied as soon as its result comes."""
    return [r.sample.image.copy() for r in iter_results(path, RULES, scratch) if r.sample]


def test_reading_with_a_scratch_gives_the_same_samples(tmp_path: Path) -> None:
    # several records in one file: iter_results holds the first while it reads the second
    many = write_framed(tmp_path / "many.tfrecord.gz", map(frame_record, spread_records(4)))
    one = write_framed(tmp_path / "one.tfrecord.gz", [frame_record(record(9))])
    scratch = Scratch()
    for path in (many, one, many):  # the same scratch across files, as a reader thread
        expected = [r.sample.image for r in read_file(path, RULES).records]
        got = _images(path, scratch)
        assert len(got) == len(expected) > 0
        assert all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True))
    results = list(iter_results(many, RULES, scratch))  # held results: only the last two
    assert np.array_equal(results[-1].sample.image, read_file(many, RULES).records[-1].sample.image)


def test_encode_and_summary_do_not_depend_on_the_scratch() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (25, 8, 8)).astype(np.float32)
    codec, scratch = ChunkCodec((25, 8, 8)), Scratch()
    assert codec.encode(image, scratch) == codec.encode(image) == codec.encode(image, scratch)
    summary = SampleSummary.of(image, 1)  # the grid is every pixel: still a copy
    before = summary.grid.copy()
    image[:] = -1.0
    assert np.array_equal(summary.grid, before)


def test_chunk_sink_threads_write_disjoint_spans(tmp_path: Path) -> None:
    path = tmp_path / "part.chunks"
    chunks = [bytes([i]) * (1000 + 37 * i) for i in range(40)]
    spans: dict[int, tuple[int, int]] = {}
    with open(path, "wb") as handle:
        sink = _ChunkSink(handle.fileno())

        def write(first: int) -> None:
            for i in range(first, len(chunks), 4):
                spans[i] = sink.append(chunks[i])

        threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    data = path.read_bytes()
    assert len(data) == sum(map(len, chunks)) == sink.end
    for i, (offset, size) in spans.items():
        assert data[offset : offset + size] == chunks[i]
    ordered = sorted(spans.values())
    assert all(a + n == b for (a, n), (b, _) in zip(ordered, ordered[1:], strict=False))


def test_page_cache_hints_keep_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    payload = os.urandom(1 << 20)
    with open(path, "wb") as handle:
        handle.write(payload)
        handle.flush()
        page_cache.write_behind(handle.fileno())
        page_cache.write_behind(handle.fileno(), 4096, 8192)
        os.fsync(handle.fileno())
        page_cache.drop_pages(handle.fileno(), 0, 4096)
        page_cache.drop_pages(handle.fileno())
    assert path.read_bytes() == payload
    read, write = os.pipe()  # no such hints on a pipe: ignored, no error
    try:
        page_cache.drop_pages(read)
        page_cache.write_behind(write)
    finally:
        os.close(read)
        os.close(write)
