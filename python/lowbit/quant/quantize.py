"""``lowbit.quantize(in, out, type)``: write a GGUF with llama.cpp's per-tensor recipe.

    result = lowbit.quantize("model-f32.gguf", "model-q4_k_m.gguf", "Q4_K_M", imatrix="imatrix.gguf")
    result.tensor_types["blk.0.attn_v.weight"]   # "Q6_K"

Steps: read the input (any type lowbit computes), pick every tensor's type (``recipes``), then
stream tensor by tensor: copy the bytes when the type stays, else dequantize to f32 and quantize
rows in parallel chunks (the C++ quantizer releases the GIL). Metadata is copied (the GGUF.*
internals excepted), ``general.file_type`` and ``general.quantization_version`` set, tensors keep
their order. The output goes to a hidden temp file beside OUT and is renamed at the end, so an
error or Ctrl+C never leaves a partial OUT.
"""
from __future__ import annotations

import os
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import numpy as np

from lowbit.quant import CALIBRATED, METHODS, blocks  # noqa: F401 - METHODS re-exported
from lowbit.errors import Cancelled, LowbitError
from lowbit.runtime.gguf_file import GGUFFile
from lowbit.quant.imatrix import IMatrix, disk_error, load as load_imatrix
from lowbit.runtime.progress import ProgressFn
from lowbit.quant.awq import ARCHITECTURES as AWQ_ARCHITECTURES
from lowbit.quant.recipes import ModelFacts, TensorPlan, plan_types, resolve_recipe

QUANTIZATION_VERSION = 2
# Rows per parallel job: small enough that the C++ side runs each job on one thread.
_CHUNK_ELEMS = 1 << 17
_FLOAT_INPUTS = ("F32", "F16", "BF16")

ImatrixArg = Union[None, str, os.PathLike, IMatrix, Mapping[str, Any]]


class QuantizeError(LowbitError, ValueError):
    """Bad arguments to quantize: unknown type or method, OUT equal to IN, unwritable place."""


@dataclass
class QuantizeResult:
    path: str
    type: str
    file_type: int
    n_params: int
    n_bytes: int                      # tensor data bytes (without metadata and padding)
    file_size: int
    seconds: float
    tensor_types: Dict[str, str] = field(default_factory=dict)
    notices: List[str] = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.n_bytes / max(self.n_params, 1)


def quantize(inp: "str | os.PathLike[str]", out: "str | os.PathLike[str]", type: str,
             imatrix: ImatrixArg = None, method: str = "rtn", n_threads: Optional[int] = None,
             progress: Optional[ProgressFn] = None, *, pure: bool = False, calibration: Any = None,
             calib_ctx: int = 512, calib_chunks: Optional[int] = None,
             log: Optional[Callable[[str], None]] = None) -> QuantizeResult:
    """Quantize GGUF ``inp`` to ``out`` with recipe / type ``type`` (see ``recipes``).

    imatrix: a path (GGUF or .dat), an ``IMatrix`` or {tensor name: importances}.
    n_threads: worker threads (default: all CPUs). progress(fraction) may return False to cancel
    (raises Cancelled); any exception it raises (KeyboardInterrupt too) aborts and cleans up.
    pure: every quantizable tensor gets the one type (llama-quantize --pure).
    method "gptq", "awq" or "awq+gptq" (see ``METHODS``) needs ``calibration``: a text (run through
    the input model in chunks of calib_ctx tokens, at most calib_chunks) or a ``gptq.Hessians``.
    log: receives fallback and missing-imatrix notices (also kept in the result)."""
    t0 = time.monotonic()
    recipe, ftype_id, _, _ = _check_recipe(type)
    if method not in METHODS:
        raise QuantizeError(f"unknown quantization method {method!r}; choose one of {', '.join(METHODS)}")
    from lowbit.quant.evaluate import check_chunks
    check_chunks(calib_chunks, "calib_chunks")
    src_path, dst_path = _check_paths(inp, out)
    importances = _importance_source(imatrix)
    hessians = _hessians(method, calibration, src_path, calib_ctx, calib_chunks)
    n_threads = max(1, int(n_threads or os.cpu_count() or 1))
    notices: List[str] = []

    def note(msg: str) -> None:
        notices.append(msg)
        if log is not None:
            log(msg)

    with GGUFFile(src_path) as src:
        facts = ModelFacts.from_metadata(src.metadata)
        infos = src.tensors
        plans = plan_types([(t.name, t.shape, t.type) for t in infos], recipe, facts,
                           has_imatrix=importances is not None, pure=pure)
        for line in summarize_notices(plans):
            note(line)
        _check_convertible(plans)
        if method.startswith("awq") and facts.arch not in AWQ_ARCHITECTURES:
            raise QuantizeError(f"method {method!r} folds scales into RMSNorm weights, which lowbit does for "
                                f"{', '.join(AWQ_ARCHITECTURES)}; {src_path} is {facts.arch!r}")
        # the calibrated methods weight every block by the calibration inputs' diag(H), an imatrix
        _check_imatrix_present(plans, importances is not None or hessians is not None, recipe)
        requantized = sorted({p.src_type for p in plans if p.src_type != p.dst_type
                              and p.src_type not in _FLOAT_INPUTS and p.dst_type not in _FLOAT_INPUTS})
        if requantized:
            warnings.warn(f"{src_path} is already quantized ({', '.join(requantized)}): its tensors are "
                          f"dequantized first, so quantization error adds up", stacklevel=2)
        awq_plan = _plan_awq(src, plans, facts, hessians, note) if method.startswith("awq") else None
        calib = None if hessians is None else _Calibration(hessians, awq_plan, gptq="gptq" in method)
        tmp = _temp_beside(dst_path)
        need = sum(_tensor_nbytes(p.shape, p.dst_type) for p in plans)
        try:
            n_bytes = _write(src, plans, tmp, ftype_id, importances, calib, n_threads, progress, note)
            _finish_file(tmp, dst_path)
            os.replace(tmp, dst_path)
        except OSError as e:
            _remove(tmp)
            raise disk_error(e, dst_path, need, QuantizeError) from None
        except BaseException:
            _remove(tmp)
            raise
    n_params = sum(int(np.prod(p.shape)) for p in plans)
    return QuantizeResult(dst_path, recipe, ftype_id, n_params, n_bytes, os.path.getsize(dst_path),
                          time.monotonic() - t0, {p.name: p.dst_type for p in plans}, notices)


# ---- argument checks --------------------------------------------------------------------------
def _check_recipe(type: str):
    try:
        return resolve_recipe(type)
    except ValueError as e:
        raise QuantizeError(str(e)) from None


def _check_paths(inp, out):
    src, dst = os.fspath(inp), os.fspath(out)
    if not os.path.exists(src):
        raise FileNotFoundError(f"input model not found: {src}")
    if os.path.isdir(dst):
        raise QuantizeError(f"output {dst} is a directory; give a file name")
    if os.path.realpath(src) == os.path.realpath(dst) or (os.path.exists(dst) and os.path.samefile(src, dst)):
        raise QuantizeError(f"output {dst} is the input file; choose another output path")
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise QuantizeError(f"output directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise QuantizeError(f"output directory {folder} is not writable")
    os.unlink(_temp_beside(os.path.abspath(dst)))      # fail now, not after the work
    return src, os.path.abspath(dst)


def _temp_beside(dst: str) -> str:
    """A new empty hidden file in dst's folder; QuantizeError when the folder refuses it."""
    folder = os.path.dirname(dst)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise QuantizeError(f"output directory {folder} is not writable: {e.strerror or e}") from None
    os.close(fd)
    return tmp


def _check_imatrix_present(plans: List[TensorPlan], has_imatrix: bool, recipe: str) -> None:
    from lowbit.quant.recipes import requires_imatrix
    if has_imatrix:
        return
    needy = [p for p in plans if p.src_type != p.dst_type and requires_imatrix(p.name, p.dst_type)]
    if needy:
        types = ", ".join(sorted({p.dst_type for p in needy}))
        raise QuantizeError(f"{recipe} puts {len(needy)} tensors (e.g. {needy[0].name}) in {types}, which needs an "
                            "importance matrix (--imatrix FILE; make one with `lowbit imatrix`), as in llama.cpp")


def _check_convertible(plans: List[TensorPlan]) -> None:
    computable = {t["name"] for t in blocks.types()}
    for p in plans:
        if p.src_type != p.dst_type and p.src_type not in computable:
            raise QuantizeError(f"tensor {p.name} has type {p.src_type}, which lowbit cannot dequantize "
                                f"(needed to convert it to {p.dst_type})")


def _hessians(method: str, calibration: Any, model_path: str, n_ctx: int, n_chunks: Optional[int]):
    if method not in CALIBRATED:
        if calibration is not None:
            raise QuantizeError(f"calibration data is used by methods {', '.join(CALIBRATED)} only")
        return None
    from lowbit.quant.gptq import Hessians, collect_hessians
    if calibration is None:
        raise QuantizeError(f"method {method!r} needs calibration text (--text FILE)")
    if isinstance(calibration, Hessians):
        return calibration
    if not isinstance(calibration, str):
        raise QuantizeError(f"calibration must be a text or gptq.Hessians, got {type(calibration).__name__}")
    return collect_hessians(model_path, calibration, n_ctx=n_ctx, n_chunks=n_chunks)


def _importance_source(imatrix: ImatrixArg):
    if imatrix is None:
        return None
    if isinstance(imatrix, IMatrix):
        return imatrix.importance
    if isinstance(imatrix, Mapping):
        table = {str(k): np.asarray(v, dtype=np.float32).reshape(-1) for k, v in imatrix.items()}
        return table.get
    return load_imatrix(imatrix).importance


# ---- writing ----------------------------------------------------------------------------------
def _write(src: GGUFFile, plans: List[TensorPlan], path: str, ftype_id: int, importances, calib,
           n_threads: int, progress: Optional[ProgressFn], note) -> int:
    import gguf
    writer = _make_writer(src, path, ftype_id)
    for p in plans:
        nbytes = _tensor_nbytes(p.shape, p.dst_type)
        writer.add_tensor_info(p.name, tuple(reversed(p.shape)), np.dtype(np.float32), nbytes,
                               raw_dtype=gguf.GGMLQuantizationType[p.dst_type])
    total = sum(int(np.prod(p.shape)) for p in plans)
    done = 0
    n_bytes = 0
    try:
        _write_prefix(writer)
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            for p in plans:
                def tick(n_elems: int) -> None:
                    if progress is not None and progress((done + n_elems) / max(total, 1)) is False:
                        raise Cancelled(f"quantization of {src.path} cancelled by the progress callback")
                data = _convert(src, p, importances, calib, pool, tick, note)
                writer.write_tensor_data(data)
                n_bytes += data.nbytes
                done += int(np.prod(p.shape))
                tick(0)
    finally:
        writer.close()
    if calib is not None and calib.gptq:
        note(f"gptq: kept for {calib.kept_gptq} of {calib.kept_gptq + calib.kept_plain} matrices; the others "
             f"rounded imatrix-weighted, which had the lower error on the held-out calibration chunks")
    return n_bytes


def _tensor_nbytes(shape, type_name: str) -> int:
    rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return rows * blocks.row_bytes(type_name, shape[0])


def _finish_file(path: str, dst: str) -> None:
    """The new file's mode: the replaced file's when OUT exists, else 0666 less the umask."""
    try:
        mode = os.stat(dst).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(path, mode)


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def summarize_notices(plans: List[TensorPlan]) -> List[str]:
    """One line per distinct notice rule with how many tensors it hit (plans' notices read
    '<tensor>: <rule>'), instead of one line per tensor."""
    by_rule: Dict[str, List[str]] = {}
    for p in plans:
        if p.notice:
            name, _, rule = p.notice.partition(": ")
            by_rule.setdefault(rule or p.notice, []).append(name)
    lines = []
    for rule, names in by_rule.items():
        if len(names) == 1:
            lines.append(f"{names[0]}: {rule}")
        else:
            lines.append(f"{len(names)} tensors ({names[0]}, ...): {rule}")
    return lines


class _Calibration:
    """What the calibrated methods need while writing: the Hessians, the AWQ plan (or None), and
    whether GPTQ runs; counts which of GPTQ / plain rounding each matrix kept."""

    def __init__(self, hessians, awq_plan, gptq: bool):
        self.hessians, self.awq, self.gptq = hessians, awq_plan, gptq
        self.kept_gptq = self.kept_plain = 0

    def hessian(self, name: str) -> Optional[tuple]:
        """(fit, held-out or None) Hessians of ``name``'s input as the quantizer sees it (scaled by AWQ)."""
        h = self.hessians.mean(name)
        if h is None:
            return None
        held = self.hessians.holdout_mean(name)
        if self.awq is not None:
            h, held = self.awq.hessian(name, h), None if held is None else self.awq.hessian(name, held)
        return h, held


def _read_float(src: GGUFFile, p: TensorPlan) -> np.ndarray:
    """Tensor ``p`` as float32 (rows, ne0)."""
    raw = src.tensor_bytes(p.name)
    n = p.shape[0]
    rows = int(np.prod(p.shape[1:])) if len(p.shape) > 1 else 1
    if p.src_type == "F32":
        return raw.view(np.float32).reshape(rows, n)
    return blocks.dequantize(raw, p.src_type, (rows, n))


def _plan_awq(src: GGUFFile, plans: List[TensorPlan], facts: ModelFacts, hessians, note):
    from lowbit.quant import awq
    by_name = {p.name: p for p in plans}
    plan = awq.plan_awq(lambda name: _read_float(src, by_name[name]), {p.name: p.shape for p in plans},
                        {p.name: p.dst_type for p in plans}, hessians, facts.n_layer)
    note(awq.summary(plan))
    return plan


def _as_type(x: np.ndarray, type_name: str) -> np.ndarray:
    """float values -> the bytes of a float tensor type (the AWQ-scaled norms keep their type)."""
    if type_name == "F32":
        return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8)
    if type_name == "F16":
        return np.ascontiguousarray(x, dtype=np.float16).view(np.uint8)
    return blocks.quantize(np.ascontiguousarray(x, dtype=np.float32), type_name)


def _convert(src: GGUFFile, p: TensorPlan, importances, calib: Optional[_Calibration], pool: ThreadPoolExecutor,
             tick, note) -> np.ndarray:
    """The bytes of tensor ``p`` in its target type: (rows, row_bytes) uint8 (rows = all but ne0)."""
    scaled = calib is not None and calib.awq is not None and calib.awq.transforms(p.name)
    if p.src_type == p.dst_type and not scaled:
        return src.tensor_bytes(p.name)
    x = _read_float(src, p)
    if scaled:
        x = calib.awq.apply(p.name, x)
        if p.dst_type in _FLOAT_INPUTS:
            return _as_type(x, p.dst_type)
    n = p.shape[0]
    rows = x.shape[0]
    n_mat = int(np.prod(p.shape[2:])) if len(p.shape) > 2 else 1
    hs = None
    if calib is not None and len(p.shape) == 2 and p.dst_type not in _FLOAT_INPUTS:
        hs = calib.hessian(p.name)
    if hs is not None and calib.gptq:
        from lowbit.quant.gptq import choose
        out, kept = choose(x, hs[0], hs[1], p.dst_type)
        calib.kept_gptq += kept
        calib.kept_plain += not kept
        return out
    if hs is not None:       # awq without gptq: importance from the (scaled) calibration inputs
        qw = np.maximum(np.diag(hs[0]), 0).astype(np.float32)
    else:
        qw = _tensor_importance(p, importances, n * n_mat, note)
    out = np.empty((rows, blocks.row_bytes(p.dst_type, n)), dtype=np.uint8)
    rows_per_mat = rows // n_mat
    step = max(1, _CHUNK_ELEMS // n)
    jobs = []
    for m in range(n_mat):
        w = None if qw is None else qw[m * n:(m + 1) * n]
        for r0 in range(m * rows_per_mat, (m + 1) * rows_per_mat, step):
            r1 = min(r0 + step, (m + 1) * rows_per_mat)
            jobs.append(pool.submit(_quantize_rows, x, out, r0, r1, p.dst_type, w))
    try:
        for i, job in enumerate(jobs):
            job.result()
            if i % 64 == 63:
                tick(int(np.prod(p.shape)) * (i + 1) // len(jobs))
    except BaseException:
        for job in jobs:
            job.cancel()
        raise
    return out


def _quantize_rows(x: np.ndarray, out: np.ndarray, r0: int, r1: int, type_name: str, w) -> None:
    out[r0:r1] = blocks.quantize(x[r0:r1], type_name, imatrix=w)


def _tensor_importance(p: TensorPlan, importances, expected: int, note) -> Optional[np.ndarray]:
    if importances is None or p.dst_type in _FLOAT_INPUTS:
        return None
    qw = importances(p.name)
    if qw is None:
        from lowbit.quant.recipes import requires_imatrix
        if requires_imatrix(p.name, p.dst_type):   # llama.cpp stops here too
            raise QuantizeError(f"imatrix has no entry for {p.name}, which {p.dst_type} needs (a very low-bit "
                                "type: quantize it with an importance matrix that covers every matrix)")
        note(f"imatrix has no entry for {p.name}: quantized without it")
        return None
    if qw.size != expected:
        msg = f"imatrix entry for {p.name} has {qw.size} values, the tensor needs {expected}"
        if p.name in ("token_embd.weight", "per_layer_token_embd.weight"):
            note(msg + ": ignored")
            return None
        raise QuantizeError(msg)
    return qw


# ---- metadata ---------------------------------------------------------------------------------
def _gguf_writer(path: str, arch: str):
    """A GGUFWriter that can also write empty arrays (which the gguf package refuses)."""
    import gguf

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == gguf.GGUFValueType.ARRAY and isinstance(val, (list, tuple)) and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type or gguf.GGUFValueType.UINT8) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(path, arch=arch)


def _value_type(kind: str):
    """"ARRAY[ARRAY[INT32]]" -> (ARRAY, ARRAY); "UINT32" -> (UINT32, None)."""
    import gguf
    if kind.startswith("ARRAY[") and kind.endswith("]"):
        inner = kind[len("ARRAY["):-1]
        return gguf.GGUFValueType.ARRAY, gguf.GGUFValueType[inner.split("[", 1)[0]]
    return gguf.GGUFValueType[kind], None


def _encode(value: Any) -> Any:
    """Strings back to their exact bytes (the reader decodes with surrogateescape)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, np.ndarray):      # a long numeric array, read as a view of the mapping
        return value.tolist()
    return value


def _make_writer(src: GGUFFile, path: str, ftype_id: int):
    meta, kinds = src.metadata, src.metadata_types
    writer = _gguf_writer(path, str(meta.get("general.architecture", "")))
    writer.kv_data[0].clear()          # re-added below, in the input's order
    writer.data_alignment = src.alignment
    for key, value in meta.items():
        if key.startswith("GGUF.") or key in ("general.quantization_version", "general.file_type"):
            continue
        vtype, sub = _value_type(kinds[key])
        if key == "general.alignment":
            writer.data_alignment = int(value)
        writer.add_key_value(key, _encode(value), vtype, sub_type=sub)
    writer.add_uint32("general.quantization_version", QUANTIZATION_VERSION)
    writer.add_uint32("general.file_type", ftype_id)
    return writer


def _write_prefix(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()


def format_result(r: QuantizeResult) -> str:
    counts: Dict[str, int] = {}
    for t in r.tensor_types.values():
        counts[t] = counts.get(t, 0) + 1
    mix = ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"{r.path}: {r.type} (file type {r.file_type}), {r.file_size / 2**20:.1f} MiB, "
            f"{r.bits_per_weight:.2f} bits/weight, {r.seconds:.1f} s; tensors: {mix}")

