"""`interp.heap.retained_heap` (`interp.run(retain_heap=True)`): glibc's mmap and trimming off
inside, its defaults back afterwards (also when the block raises), the free memory returned; a
no-op without glibc or when disabled; the images unchanged."""

from __future__ import annotations

import pytest
import torch

from interp import heap


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append(("mallopt", parameter, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


AFTER = [("mallopt", heap.M_MMAP_MAX, heap.DEFAULT_MMAP_MAX),
         ("mallopt", heap.M_TRIM_THRESHOLD, heap.DEFAULT_TRIM_THRESHOLD), ("malloc_trim", 0)]


def test_retained_heap_sets_and_restores_glibc_defaults_even_on_error(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    with pytest.raises(RuntimeError), heap.retained_heap():
        assert libc.calls == [("mallopt", heap.M_MMAP_MAX, 0), ("mallopt", heap.M_TRIM_THRESHOLD, heap.KEEP_UP_TO)]
        raise RuntimeError("a failed run")
    assert libc.calls[2:] == AFTER


def test_retained_heap_does_nothing_when_disabled_or_without_glibc(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    with heap.retained_heap(enabled=False):
        pass
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    with heap.retained_heap():
        pass
    assert libc.calls == []


def test_retained_heap_runs_on_this_machine():
    with heap.retained_heap():
        block = bytearray(64 * 2**20)  # above glibc's largest mmap threshold
    assert len(block) == 64 * 2**20


def test_a_run_with_the_heap_retained_gives_the_same_images(model):
    import interp
    from interp.graph import Graph, Run

    graph = Graph([Run("a", "a red circle", steps=2), Run("b", "a blue square", steps=2)])
    plain = interp.run(model, graph, progress=False).images
    retained = interp.run(model, graph, progress=False, retain_heap=True).images
    assert all(torch.equal(plain[name], retained[name]) for name in graph.runs)
