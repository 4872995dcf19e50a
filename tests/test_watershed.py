"""The numba watershed (:mod:`hpc_profiler.watershed`) against a plain-Python
transcription of scikit-image 0.24's flooding: a textbook binary heap of
``(value, age, pixel)`` items (sift up while strictly smaller than the parent;
sift down to the strictly smaller child, left first), markers pushed in raster
order with age 0, neighbours in the order up, left, right, down, up-left,
up-right, down-left, down-right. Small images with many tied values, where the
order in which the heap releases equal keys decides the labels.
"""
from __future__ import annotations

import numpy as np
import pytest

from hpc_profiler.watershed import watershed, watershed_numpy


def _textbook_watershed(image, markers, mask):
    h, w = image.shape
    W = w + 2
    img = np.pad(image.astype(np.float64), 1).ravel().tolist()
    out = np.pad((markers * mask).astype(np.int64), 1).ravel().tolist()
    m = np.pad(mask, 1).ravel().tolist()
    offsets = [-W, -1, 1, W, -W - 1, -W + 1, W - 1, W + 1]
    heap = []

    def smaller(a, b):
        return (a[0], a[1]) < (b[0], b[1])

    def push(item):
        heap.append(item)
        c = len(heap) - 1
        while c > 0:
            p = (c - 1) // 2
            if not smaller(heap[c], heap[p]):
                break
            heap[c], heap[p] = heap[p], heap[c]
            c = p

    def pop():
        top = heap[0]
        last = heap.pop()
        if heap:
            heap[0] = last
            i = 0
            while True:
                best, left, right = i, 2 * i + 1, 2 * i + 2
                if left < len(heap) and smaller(heap[left], heap[best]):
                    best = left
                if right < len(heap) and smaller(heap[right], heap[best]):
                    best = right
                if best == i:
                    break
                heap[i], heap[best] = heap[best], heap[i]
                i = best
        return top

    for idx in range(len(out)):
        if out[idx] != 0:
            push((img[idx], 0, idx))
    age = 1
    while heap:
        _, _, idx = pop()
        for off in offsets:
            nb = idx + off
            if m[nb] and out[nb] == 0:
                age += 1
                out[nb] = out[idx]
                push((img[nb], age, nb))
    return np.array(out, dtype=np.int32).reshape(h + 2, W)[1:-1, 1:-1]


def _case(rng, t):
    n = int(rng.randint(3, 40))
    levels = int(rng.choice([1, 2, 3, 7, 0]))
    img = rng.rand(n, n) if levels == 0 else rng.randint(0, levels, (n, n)) / levels
    markers = np.zeros((n, n), np.int32)
    for j in range(int(rng.randint(1, 10))):
        y, x = rng.randint(0, n, 2)
        markers[y : y + rng.randint(1, 4), x : x + rng.randint(1, 4)] = (j + 1) if t % 3 else -(j + 1)
    mask = rng.rand(n, n) > rng.rand() * 0.6
    return img, markers, mask


@pytest.mark.parametrize("seed", range(4))
def test_watershed_equals_textbook_heap_on_ties(seed):
    rng = np.random.RandomState(seed)
    for t in range(40):
        img, markers, mask = _case(rng, t)
        ref = _textbook_watershed(img, markers, mask)
        assert np.array_equal(watershed_numpy(img, markers, mask), ref), (seed, t)


def test_watershed_without_mask_and_any_backend_array():
    rng = np.random.RandomState(11)
    img, markers, _ = _case(rng, 1)
    full = np.ones(img.shape, bool)
    ref = _textbook_watershed(img, markers, full)
    assert np.array_equal(watershed_numpy(img, markers), ref)
    assert np.array_equal(watershed(img, markers), ref)


def test_watershed_refuses_bad_shapes():
    with pytest.raises(ValueError, match="same 2-D shape"):
        watershed_numpy(np.zeros((4, 4)), np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match="mask"):
        watershed_numpy(np.zeros((4, 4)), np.zeros((4, 4), np.int32), np.ones((4, 5), bool))
