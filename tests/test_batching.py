"""Requests that arrive together share a generator pass, and get exactly their own rows back."""

from __future__ import annotations

import threading

import pytest
import torch

from facecomp.config import load_config
from facecomp.models import Generator
from facecomp.serve.batching import BatchingGenerator


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return Generator(load_config("smoke").generator).eval()


def test_concurrent_calls_share_passes_and_get_their_own_rows(generator):
    batcher = BatchingGenerator(generator, max_batch=6)
    torch.manual_seed(1)
    inputs = [torch.rand(1 + i % 2, 4, 128, 128) * 2 - 1 for i in range(8)]  # 12 images in all
    with torch.no_grad():
        alone = [generator(x) for x in inputs]
    outs: list[torch.Tensor | None] = [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def call(i: int) -> None:
        start.wait()
        outs[i] = batcher(inputs[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for got, want in zip(outs, alone, strict=True):
        assert got is not None and got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    s = batcher.stats
    assert s.calls == 8 and s.images == 12
    assert s.passes < s.calls, s  # callers that arrived while a pass ran shared the next one
    assert s.largest >= 2


@pytest.mark.parametrize("max_batch", [1, 3])
def test_max_batch_bounds_a_pass_and_one_disables_batching(generator, max_batch):
    batcher = BatchingGenerator(generator, max_batch=max_batch)
    start = threading.Barrier(6)

    def call() -> None:
        start.wait()
        batcher(torch.rand(1, 4, 128, 128))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    s = batcher.stats
    assert s.images == 6 and s.largest_images <= max_batch, s
    if max_batch == 1:
        assert s.passes == 6


def test_an_error_reaches_its_caller_and_the_batcher_keeps_working(generator):
    batcher = BatchingGenerator(generator, max_batch=4)
    with pytest.raises(AssertionError, match="expected"):
        batcher(torch.rand(1, 3, 64, 64))  # wrong shape: the generator's own check fires
    assert batcher(torch.rand(2, 4, 128, 128)).shape == (2, 3, 128, 128)
