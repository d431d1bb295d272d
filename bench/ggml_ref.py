"""llama.cpp's CPU mat-mul (ggml's MUL_MAT op) through ctypes, for side-by-side kernel figures.

Loads libggml-base / libggml-cpu of the llama-cpp-python in the site-packages directory named by
LOWBIT_LLAMA_CPP_SITE (the dev oracle; absent: available() is False and the bench prints lowbit
alone). One GgmlMatmul holds a graph y = W x for fixed weights and activation rows, a persistent
ggml threadpool and its work buffer, so a call times only ggml_graph_compute: the activation
quantization to the weight type's vec_dot_type and the mat-mul (llama.cpp's tiled / llamafile /
vec_dot paths, whichever it picks for the type and batch), as llama.cpp runs a model's matmuls.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

GGML_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11,
             "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "IQ2_XXS": 16, "IQ2_XS": 17, "IQ3_XXS": 18, "IQ1_S": 19,
             "IQ4_NL": 20, "IQ3_S": 21, "IQ2_S": 22, "IQ4_XS": 23, "IQ1_M": 29, "BF16": 30, "TQ1_0": 34,
             "TQ2_0": 35, "MXFP4": 39, "NVFP4": 40}

_P = ctypes.c_void_p


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class _CPlan(ctypes.Structure):   # ggml-cpu.h struct ggml_cplan
    _fields_ = [("work_size", ctypes.c_size_t), ("work_data", ctypes.c_void_p), ("n_threads", ctypes.c_int),
                ("threadpool", ctypes.c_void_p), ("abort_callback", ctypes.c_void_p),
                ("abort_callback_data", ctypes.c_void_p), ("use_ref", ctypes.c_bool)]


class _ThreadpoolParams(ctypes.Structure):   # ggml.h struct ggml_threadpool_params (GGML_MAX_N_THREADS 512)
    _fields_ = [("cpumask", ctypes.c_bool * 512), ("n_threads", ctypes.c_int), ("prio", ctypes.c_int),
                ("poll", ctypes.c_uint32), ("strict_cpu", ctypes.c_bool), ("paused", ctypes.c_bool)]


_libs = None


def _load():
    global _libs
    if _libs is None:
        site = os.environ.get("LOWBIT_LLAMA_CPP_SITE", "")
        lib_dir = os.path.join(site, "llama_cpp", "lib")
        if not site or not os.path.exists(os.path.join(lib_dir, "libggml-cpu.so")):
            _libs = ()
            return _libs
        base = ctypes.CDLL(os.path.join(lib_dir, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        cpu = ctypes.CDLL(os.path.join(lib_dir, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
        for fn, args, res in [(base.ggml_init, [_InitParams], _P), (base.ggml_free, [_P], None),
                              (base.ggml_new_tensor_2d, [_P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64], _P),
                              (base.ggml_mul_mat, [_P, _P, _P], _P), (base.ggml_new_graph, [_P], _P),
                              (base.ggml_build_forward_expand, [_P, _P], None), (base.ggml_get_data, [_P], _P),
                              (base.ggml_threadpool_params_init, [_P, ctypes.c_int], None),
                              (cpu.ggml_threadpool_new, [_P], _P), (cpu.ggml_threadpool_free, [_P], None),
                              (cpu.ggml_threadpool_pause, [_P], None), (cpu.ggml_threadpool_resume, [_P], None),
                              (cpu.ggml_graph_plan, [_P, ctypes.c_int, _P], _CPlan),
                              (cpu.ggml_graph_compute, [_P, ctypes.POINTER(_CPlan)], ctypes.c_int)]:
            fn.argtypes, fn.restype = args, res
        cpu.ggml_cpu_init()
        _libs = (base, cpu)
    return _libs


def available() -> bool:
    return bool(_load())


def version_note() -> str:
    site = os.environ.get("LOWBIT_LLAMA_CPP_SITE", "")
    from importlib.metadata import distributions  # noqa: PLC0415
    for dist in distributions(path=[site]):
        if (dist.metadata["Name"] or "").lower().replace("_", "-") == "llama-cpp-python":
            return f"llama-cpp-python {dist.version} (ggml CPU backend)"
    return "llama-cpp-python (ggml CPU backend)"


class GgmlMatmul:
    """y (n, rows) = x (n, cols) @ W.T with W the raw GGML bytes of `type_name`, on `threads`
    threads; `copies` weight copies (distinct buffers, to stream from DRAM) share one x."""

    def __init__(self, type_name: str, weights: list[np.ndarray], rows: int, cols: int, n: int, threads: int):
        base, cpu = _load()
        self._base, self._cpu = base, cpu
        wbytes = sum(w.nbytes for w in weights)
        out_bytes = len(weights) * rows * n * 4
        self._ctx = base.ggml_init(_InitParams(wbytes + n * cols * 4 + out_bytes + (len(weights) + 2) * (1 << 20),
                                               None, False))
        if not self._ctx:
            raise MemoryError("ggml_init failed")
        self._x = base.ggml_new_tensor_2d(self._ctx, 0, cols, n)
        self._graphs, self._outs = [], []
        for w in weights:
            a = base.ggml_new_tensor_2d(self._ctx, GGML_TYPE[type_name], cols, rows)
            ctypes.memmove(base.ggml_get_data(a), w.ctypes.data, w.nbytes)
            y = base.ggml_mul_mat(self._ctx, a, self._x)
            g = base.ggml_new_graph(self._ctx)
            base.ggml_build_forward_expand(g, y)
            self._graphs.append(g)
            self._outs.append(y)
        self._rows, self._n = rows, n
        params = _ThreadpoolParams()
        base.ggml_threadpool_params_init(ctypes.byref(params), threads)
        self._pool = cpu.ggml_threadpool_new(ctypes.byref(params))
        cpu.ggml_threadpool_pause(self._pool)
        self._plans, self._work = [], []
        for g in self._graphs:
            plan = cpu.ggml_graph_plan(g, threads, self._pool)
            work = ctypes.create_string_buffer(max(1, plan.work_size))
            plan.work_data = ctypes.addressof(work)
            self._plans.append(plan)
            self._work.append(work)

    def set_x(self, x: np.ndarray) -> None:
        xa = np.ascontiguousarray(x, dtype=np.float32)
        ctypes.memmove(self._base.ggml_get_data(self._x), xa.ctypes.data, xa.nbytes)

    def resume(self) -> None:
        """Wake the threadpool (it polls for work as in llama.cpp) before a batch of runs."""
        self._cpu.ggml_threadpool_resume(self._pool)

    def pause(self) -> None:
        """Park the threadpool after a batch, so its polling threads do not compete with lowbit's."""
        self._cpu.ggml_threadpool_pause(self._pool)

    def run(self, i: int = 0) -> None:
        if self._cpu.ggml_graph_compute(self._graphs[i], ctypes.byref(self._plans[i])) != 0:
            raise RuntimeError("ggml_graph_compute failed")

    def output(self, i: int = 0) -> np.ndarray:
        ptr = ctypes.cast(self._base.ggml_get_data(self._outs[i]), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(ptr, (self._n, self._rows)).copy()

    def close(self) -> None:
        if self._ctx:
            self._cpu.ggml_threadpool_free(self._pool)
            self._base.ggml_free(self._ctx)
            self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
