"""The CPU thread pool (cpu/threadpool.h) under the conditions decode puts it in: many tiny jobs
back to back, several threads driving pools at once (one shared pool serialises its callers),
more threads than cores, and an idle pool that must sleep instead of spinning (a session that
waits for its next request burns no CPU)."""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf.quants import quantize

sys.path.insert(0, os.path.dirname(__file__))

from lowbit import _core  # noqa: E402


def q8_weights(rng, rows, cols):
    return quantize(rng.standard_normal((rows, cols)).astype(np.float32), QT.Q8_0).reshape(-1)


def test_threads_driving_pools_at_once_get_the_lone_results():
    rng = np.random.default_rng(7100)
    w = q8_weights(rng, 96, 256)
    xs = [rng.standard_normal((n, 256)).astype(np.float32) for n in (1, 2, 5, 17)]
    refs = [_core.cpu_matmul(w, "Q8_0", 96, 256, x, _core.CpuThreadPool(1), "high") for x in xs]
    shared = _core.CpuThreadPool(3)
    failures = []

    def drive(seed):
        own = _core.CpuThreadPool(2)
        order = np.random.default_rng(seed).integers(0, len(xs), 150)
        for i in order:
            for pool in (shared, own):
                if not np.array_equal(_core.cpu_matmul(w, "Q8_0", 96, 256, xs[i], pool, "high"), refs[i]):
                    failures.append((seed, int(i)))
    threads = [threading.Thread(target=drive, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)   # hang guard
    assert not any(t.is_alive() for t in threads), "a pool deadlocked"
    assert not failures, failures[:5]


def test_idle_pool_sleeps():
    """After a job, workers spin and yield for at most a few milliseconds, then sleep: an idle
    8-thread pool costs (almost) no CPU time over the next 300 ms."""
    rng = np.random.default_rng(7101)
    w = q8_weights(rng, 64, 256)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    pool = _core.CpuThreadPool(8)
    for _ in range(20):
        _core.cpu_matmul(w, "Q8_0", 64, 256, x, pool)
    time.sleep(0.05)   # past the spin / yield budget
    cpu0, t0 = time.process_time(), time.perf_counter()
    time.sleep(0.3)
    busy = time.process_time() - cpu0
    wall = time.perf_counter() - t0
    assert busy < 0.1 * wall, f"idle pool used {busy:.3f} s of CPU in {wall:.3f} s"
    # and it wakes up again
    assert np.array_equal(_core.cpu_matmul(w, "Q8_0", 64, 256, x, pool),
                          _core.cpu_matmul(w, "Q8_0", 64, 256, x, _core.CpuThreadPool(1)))
