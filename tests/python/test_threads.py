"""Threads under PyTorch: the torch op runs msda's parallel sections on PyTorch's OpenMP team
(msda._C's openmp=True) instead of msda's own pool, with the same results, from any Python
thread; msda.numpy keeps msda's pool."""
import os
import sys
import threading

import numpy as np
import pytest
import torch

import msda
import msda.numpy as mnp
import msda.ops as ops
from msda import _C

LEVELS = ((13, 17), (7, 9), (3, 5))
needs_openmp = pytest.mark.skipif(
    not (ops._OPENMP and sys.platform.startswith("linux")),
    reason="PyTorch's intra-op threads are not an OpenMP team here",
)


def _arrays(seed=0, B=2, Q=700, H=4, D=16, P=3):
    rng = np.random.default_rng(seed)
    ss = np.array(LEVELS, np.int64)
    lsi = mnp.level_start_index(ss)
    K = int((ss[:, 0] * ss[:, 1]).sum())
    L = len(LEVELS)
    v = rng.standard_normal((B, K, H, D)).astype(np.float32)
    loc = rng.uniform(-0.1, 1.1, (B, Q, H, L, P, 2)).astype(np.float32)
    a = rng.random((B, Q, H, L, P)).astype(np.float32)
    g = rng.standard_normal((B, Q, H * D)).astype(np.float32)
    return v, ss, lsi, loc, a, g


def _run(arrays, threads, openmp):
    v, ss, lsi, loc, a, g = arrays
    out = np.full((v.shape[0], loc.shape[1], v.shape[2] * v.shape[3]), np.nan, np.float32)
    _C.forward(v, ss, lsi, loc, a, out, threads, None, False, openmp)
    grads = [np.full_like(x, np.nan) for x in (v, loc, a)]
    _C.backward(v, ss, lsi, loc, a, g, *grads, threads, None, False, openmp)
    return [out] + grads


@needs_openmp
def test_the_openmp_runtime_found_is_pytorchs():
    path = _C.openmp_runtime()
    assert path is not None
    name = os.path.basename(path)
    assert any(lib in name for lib in ("libgomp", "libiomp", "libomp")), path
    maps = open("/proc/self/maps").read()
    assert os.path.realpath(path) in maps  # Loaded already: msda never loads a runtime itself.
    # Where PyTorch ships its own runtime (its pip wheels: torch/lib), that one: the runtime
    # libtorch_cpu binds GOMP_parallel to, not another loaded beside it.
    torch_dir = os.path.dirname(os.path.realpath(torch.__file__))
    shipped = {line.split()[-1] for line in maps.splitlines()
               if line.split()[-1].startswith(torch_dir) and "omp" in os.path.basename(line)}
    if shipped:
        assert os.path.realpath(path) in shipped, (path, shipped)


@needs_openmp
@pytest.mark.parametrize("threads", [2, 3, 5])
def test_openmp_sections_give_the_pool_results_bit_for_bit(threads):
    arrays = _arrays(seed=threads)
    expected = _run(arrays, threads, False)
    sections = _C._openmp_sections()
    actual = _run(arrays, threads, True)
    assert _C._openmp_sections() > sections  # The team ran them, not msda's pool.
    sections = _C._openmp_sections()
    _run(arrays, threads, False)
    assert _C._openmp_sections() == sections
    for e, a in zip(expected, actual):
        assert not np.isnan(a).any()
        np.testing.assert_array_equal(a, e)
    # And the pool's results on one thread (the backward's order never depends on threads).
    for e, a in zip(_run(arrays, 1, False), actual):
        np.testing.assert_array_equal(a, e)


@needs_openmp
def test_openmp_sections_from_several_python_threads():
    # Each Python thread is the master of its own OpenMP team.
    cases = [_arrays(seed=10 + i, Q=300) for i in range(3)]
    expected = [_run(c, 1, False) for c in cases]
    results = [None] * len(cases)

    def work(i):
        for _ in range(3):
            results[i] = _run(cases[i], 2, True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e, r in zip(expected, results):
        for x, y in zip(e, r):
            np.testing.assert_array_equal(y, x)


def test_the_torch_op_asks_for_pytorchs_threads(monkeypatch):
    # The op passes openmp=True exactly when PyTorch's backend is OpenMP, and its thread count.
    seen = []
    real = ops._C

    class Spy:
        openmp_runtime = staticmethod(real.openmp_runtime)

        @staticmethod
        def forward(*args):
            seen.append(("forward", args[6], args[-1]))
            return real.forward(*args)

        @staticmethod
        def backward(*args):
            seen.append(("backward", args[9], args[-1]))
            return real.backward(*args)

    monkeypatch.setattr(ops, "_C", Spy)
    monkeypatch.setattr(ops, "_eager_op", None)  # The Python node (test_torch_ops: the C++ one).
    v, ss, lsi, loc, a, g = (torch.from_numpy(x) for x in _arrays(Q=20))
    v.requires_grad_(True)
    sections = real._openmp_sections()
    out = msda.ms_deform_attn(v, ss, lsi, loc, a)
    out.backward(g)
    if ops._OPENMP and torch.get_num_threads() > 1:
        assert real._openmp_sections() > sections
    threads = torch.get_num_threads()
    assert seen == [("forward", threads, ops._OPENMP), ("backward", threads, ops._OPENMP)]
    assert ops._OPENMP == ("parallel backend: OpenMP" in torch.__config__.parallel_info())


def test_numpy_entry_keeps_msdas_pool(monkeypatch):
    seen = []
    real = mnp._C

    class Spy:
        @staticmethod
        def forward(*args):
            seen.append(args)
            return real.forward(*args)

    monkeypatch.setattr(mnp, "_C", Spy)
    v, ss, lsi, loc, a, _ = _arrays(Q=5)
    mnp.ms_deform_attn(v, ss, lsi, loc, a, num_threads=2)
    assert len(seen) == 1 and len(seen[0]) == 9  # No openmp argument: the default, False.
