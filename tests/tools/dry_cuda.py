"""Dry run of the device tests' and bench_cuda.py's Python on a machine without a GPU: a pytest
plugin (and importable module) that makes lowbit believe a CUDA device is present and stands the
CPU in for it. Device time is scarce (minutes per lent GPU); a slip in a test's Python (a wrong
attribute, a bad helper) should not be what a device run finds. It checks nothing about the GPU:
the numbers are the CPU's.

    PYTHONPATH=python:tests:tests/tools python -m pytest -p dry_cuda tests/test_cuda_model.py tests/test_cuda_real.py
    PYTHONPATH=python:tests:tests/tools python -c "import dry_cuda, runpy, sys; \\
        sys.argv = ['bench_cuda.py', '--shapes', '', '--models', 'm.gguf']; \\
        runpy.run_path('bench/bench_cuda.py', run_name='__main__')"

Stand-ins: cuda_status() reports one device; engine_to_cuda(engine, n_gpu_layers) is
engine_split_on_cpu (the layer hand-over of layer offload, every layer but the first for -1);
CudaModel is a CPU session of the engine's model at act_precision "high" behind CudaModel's
methods (its plan from cuda_plan, its fit checked against 80 GiB); cuda_copy_gbs is 1000. Expect
the assertions on backend names, device byte counts and the device's own error messages to fail.
"""
import os

from lowbit import _core
from lowbit.errors import Cancelled

_real_status = _core.cuda_status


def cuda_status():
    s = dict(_real_status())
    s.update(device_count=1, message="dry run: the CPU stands in for the GPU")
    return s


def engine_to_cuda(engine, n_gpu_layers=-1):
    n = int(engine.n_layers)
    _core.engine_split_on_cpu(engine, 1 if n_gpu_layers == -1 or n_gpu_layers >= n else n - n_gpu_layers)


class CudaModel:
    def __init__(self, engine, n_ctx, n_batch=512, kv_type="f16"):
        self._plan = _core.cuda_plan(engine, n_ctx, n_batch, kv_type=kv_type)
        _core.cuda_check_fit(engine, n_ctx, n_batch, 80 << 30, kv_type=kv_type)
        self._e = engine.new_session(int(n_ctx), 2, int(n_batch), kv_type, "high")
        self._cancel = False
        self._graph = ("off (LOWBIT_CUDA_GRAPHS=0)" if os.environ.get("LOWBIT_CUDA_GRAPHS") == "0"
                       else "captured (dry run)")

    def eval(self, tokens, all_logits=False):
        if self._cancel:
            raise Cancelled("CUDA eval cancelled (dry run)")
        return self._e.eval(tokens, all_logits=all_logits)

    def truncate(self, n):
        self._e.truncate(n)

    def cancel(self):
        self._cancel = True

    def reset_cancel(self):
        self._cancel = False

    n_past = property(lambda self: self._e.n_past)
    n_ctx = property(lambda self: self._e.n_ctx)
    device = property(lambda self: "dry run (CPU)")

    def memory(self):
        d = {k: v for k, v in self._plan.items() if k != "tensors"}
        d.update(peak_used_bytes=d["total_bytes"], device=self.device,
                 decode_graph=self._graph)
        return d


_core.cuda_status = cuda_status
_core.engine_to_cuda = engine_to_cuda
_core.CudaModel = CudaModel
_core.cuda_copy_gbs = lambda n: 1000.0

import lowbit  # noqa: E402

lowbit.cuda_status = cuda_status
