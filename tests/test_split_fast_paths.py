"""The conversion's fast paths change no byte: chunks written by the reader threads
themselves (``_ChunkSink``) and the page-cache hints (:mod:`utils.batching.page_cache`).
Whole runs with one process, shard-writer processes and Dask: ``test_split_parallel.py``."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from utils.batching import page_cache
from utils.batching.split_and_batch import _ChunkSink


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
