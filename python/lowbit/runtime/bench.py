"""``lowbit bench``: llama-bench style prompt-processing (pp) and text-generation (tg) speed.

pp N: evaluate N random tokens from an empty context in batches; tg N: generate N tokens one
at a time from an empty context (llama-bench's definitions). Each test runs ``reps`` times;
tok/s is reported as mean ± stddev. With ``vs_llama_cpp`` the same file runs through
llama-cpp-python in the same process, alternating repetitions, and ratios are printed.

Roofline: decode is bound by reading the weights, so each report carries the weight bytes one
decode step reads (``memory.decode_reads``, the rule ``lowbit info`` prints: every matrix once,
one token_embd row unless it is also the output head, n_expert_used / n_expert of the stacked
experts), the read bandwidth measured in the same run with the same thread count
(``cpu.read_bandwidth``: threads summing a buffer larger than the caches, best of a few passes,
measured before the tests and after each repetition; the largest is the limit), the limit
bandwidth / bytes in tok/s, and each runtime's tg as a fraction of it (tg x bytes / bandwidth).
On a shared host the bandwidth left to one process moves by tens of percent within a minute
(other tenants), so each tg repetition is also set against the probes on either side of it (the
larger of the two): ``tg_fraction_paired`` is the median of those per-repetition fractions, next to
the whole-run ``tg_fraction`` (mean tg against the best probe of the run, the stricter figure).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

import numpy as np

from lowbit.errors import LowbitError
from lowbit.runtime.generate import peak_rss_bytes
from lowbit.runtime.memory import decode_reads
from lowbit.runtime.progress import human_bytes


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


@dataclass
class TestResult:
    runtime: str                 # "lowbit" or "llama.cpp"
    test: str                    # "pp512", "tg128"
    n_tokens: int
    tok_s: List[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.tok_s) if self.tok_s else 0.0

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.tok_s) if len(self.tok_s) > 1 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(mean=self.mean, stdev=self.stdev, median=statistics.median(self.tok_s) if self.tok_s else 0.0)
        return d


class LowbitRunner:
    name = "lowbit"

    def __init__(self, path: str, n_ctx: int, n_threads: Optional[int], n_batch: int,
                 act_precision: str = "auto", device: str = "cpu", n_gpu_layers: int = -1):
        from lowbit.runtime.model import load
        rss0 = current_rss_bytes()
        t0 = time.perf_counter()
        self.model = load(path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, act_precision=act_precision,
                          device=device, n_gpu_layers=n_gpu_layers)
        self.load_seconds = time.perf_counter() - t0
        self.loaded_rss_bytes = current_rss_bytes() - rss0
        self.engine = self.model._engine
        self.n_vocab = self.engine.n_vocab
        mem = self.model.memory()
        self.backend = (mem["backend"] if self.model.device == "cuda"
                        else f"CPU {mem.get('kernels', '')} act={act_precision}".strip())
        # every layer on the device (the host runs no layer, so holds no KV layer): its decode
        # roofline is the device's bandwidth (layer offload mixes two memories: no roofline)
        self.on_device = self.model.device == "cuda"
        self.all_on_device = self.on_device and mem["kv_cache"]["layers"] == 0
        self.n_threads = mem.get("n_threads", n_threads)

    def prompt(self, tokens: np.ndarray) -> None:
        self.engine.truncate(0)
        self.engine.eval(tokens.astype(np.int32))

    def generate(self, first: int, n: int) -> None:
        self.engine.truncate(0)
        tok = np.array([first], dtype=np.int32)
        for _ in range(n):
            logits = self.engine.eval(tok)
            tok[0] = int(np.argmax(logits))

    def close(self) -> None:
        self.model.close()


class LlamaCppRunner:
    name = "llama.cpp"
    on_device = False   # a CPU build of llama-cpp-python

    def __init__(self, path: str, n_ctx: int, n_threads: Optional[int], n_batch: int):
        llama_cpp = import_llama_cpp()
        self._llama_cpp = llama_cpp
        rss0 = current_rss_bytes()
        t0 = time.perf_counter()
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                   n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
        self.load_seconds = time.perf_counter() - t0
        self.loaded_rss_bytes = current_rss_bytes() - rss0
        self.n_vocab = self.llm.n_vocab()
        self.backend = f"CPU llama.cpp {getattr(llama_cpp, '__version__', '')}".strip()
        self.n_threads = n_threads

    def _empty_context(self) -> None:
        self.llm.reset()
        if hasattr(self.llm._ctx, "kv_cache_clear"):
            self.llm._ctx.kv_cache_clear()

    def prompt(self, tokens: np.ndarray) -> None:
        self._empty_context()
        self.llm.eval(tokens.tolist())

    def last_logits(self) -> np.ndarray:
        """The logits of the last evaluated token. Not ``Llama.scores``: without logits_all,
        llama-cpp-python 0.3 leaves it zero (its sampler reads the context), so an argmax over
        it would feed token 0 back every step."""
        ptr = self._llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def generate(self, first: int, n: int) -> None:
        self._empty_context()
        tok = first
        for _ in range(n):
            self.llm.eval([tok])
            tok = int(np.argmax(self.last_logits()))

    def close(self) -> None:
        self.llm.close()


def import_llama_cpp():
    """llama-cpp-python, also from a separate venv named by $LOWBIT_LLAMA_CPP_SITE."""
    site = os.environ.get("LOWBIT_LLAMA_CPP_SITE")
    if site and site not in sys.path:
        sys.path.append(site)
    try:
        import llama_cpp
    except ImportError:
        raise LowbitError("--vs-llama-cpp needs llama-cpp-python: pip install llama-cpp-python "
                          "(or point LOWBIT_LLAMA_CPP_SITE at a site-packages that has it)") from None
    return llama_cpp


def busy_warning(n_threads: Optional[int], load1: Optional[float] = None) -> Optional[str]:
    """A one-line warning when the 1-minute load average (default: the machine's now) exceeds
    the threads the benchmark will use (other work competes for the cores, so the figures come
    out low and noisy), else None."""
    if load1 is None:
        try:
            load1 = os.getloadavg()[0]
        except (OSError, AttributeError):
            return None
    if n_threads is None:
        from lowbit.runtime.cpu import features
        n_threads = features()["physical_cores"]
    if load1 <= n_threads:
        return None
    return (f"the machine is busy: 1-minute load average {load1:.1f} is above the {n_threads} "
            f"thread{'s' if n_threads != 1 else ''} the benchmark uses; figures will be low and noisy")


BANDWIDTH_BUFFER_BYTES = 256 << 20   # well past any last-level cache
BANDWIDTH_PASSES = 3


def measure_bandwidth(n_threads: int) -> float:
    """Read bandwidth (GB/s) of ``n_threads`` threads, best of a few passes."""
    from lowbit.runtime.cpu import read_bandwidth
    return read_bandwidth(n_threads, BANDWIDTH_BUFFER_BYTES, BANDWIDTH_PASSES)


def decode_bytes_per_token(path: str) -> int:
    """Weight bytes one decode step reads (``memory.decode_reads``, as ``lowbit info``)."""
    from lowbit.runtime.gguf_file import GGUFFile
    with GGUFFile(path) as g:
        return int(decode_reads(g.model_config(), g.tensors)["decode_bytes_per_token"])


DEVICE_COPY_BYTES = 1 << 30


def measure_device_bandwidth() -> float:
    """The CUDA device's copy bandwidth (GB/s, bytes read + written), as bench/bench_cuda.py."""
    from lowbit import _core
    return float(_core.cuda_copy_gbs(DEVICE_COPY_BYTES))


def roofline(path: str, bandwidths_gbs: List[float], tg_means: dict, tg_reps: Optional[dict] = None) -> dict:
    """The decode limit of ``path`` at the best of ``bandwidths_gbs`` and each runtime's
    tg tok/s (``tg_means``: {runtime: tok/s}) as a fraction of it. With ``tg_reps``
    ({runtime: [tok/s of recorded repetition k = 0, 1, ...]}), ``bandwidths_gbs[k + 1]`` and
    ``[k + 2]`` are the probes on either side of repetition k (probe 0 precedes the unrecorded
    warm-up, probe 1 follows it), and each
    repetition is also set against the larger of its two probes (``tg_fraction_paired``: the
    median over repetitions; ``tg_fraction_paired_reps``: each)."""
    per_token = decode_bytes_per_token(path)
    bandwidth = max(bandwidths_gbs)
    limit = bandwidth * 1e9 / per_token if per_token else 0.0
    out = {"decode_bytes_per_token": per_token, "read_bandwidth_gbs": bandwidth,
           "read_bandwidth_measured_gbs": list(bandwidths_gbs), "roofline_tok_s": limit,
           "tg_fraction": {name: (tok_s * per_token / (bandwidth * 1e9) if bandwidth > 0 else 0.0)
                           for name, tok_s in tg_means.items()}}
    if tg_reps:
        if any(len(bandwidths_gbs) < len(reps) + 2 for reps in tg_reps.values()):
            raise ValueError(f"need a probe on either side of each of the repetitions: "
                             f"{len(bandwidths_gbs)} probes for {max(map(len, tg_reps.values()))} repetitions")
        paired = {name: [tok_s * per_token / (max(bandwidths_gbs[k + 1], bandwidths_gbs[k + 2]) * 1e9)
                         for k, tok_s in enumerate(reps)] for name, reps in tg_reps.items()}
        out["tg_fraction_paired_reps"] = paired
        out["tg_fraction_paired"] = {name: statistics.median(f) for name, f in paired.items() if f}
    return out


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_model(path: str, *, n_prompt: int = 512, n_gen: int = 128, reps: int = 5,
                n_threads: Optional[int] = None, n_batch: int = 512, vs_llama_cpp: bool = False,
                act_precision: str = "auto", progress: Optional[Callable[[str], None]] = None,
                device: str = "cpu", n_gpu_layers: int = -1) -> dict:
    if reps < 1 or n_prompt < 0 or n_gen < 0 or (n_prompt == 0 and n_gen == 0):
        raise ValueError(f"need reps >= 1 and a positive -p or -n (got reps={reps}, p={n_prompt}, n={n_gen})")
    n_ctx = max(n_prompt + n_gen + 8, 64)
    runners = [LowbitRunner(path, n_ctx, n_threads, n_batch, act_precision, device, n_gpu_layers)]
    if vs_llama_cpp:
        runners.append(LlamaCppRunner(path, n_ctx, n_threads or runners[0].n_threads, n_batch))
    lead = runners[0]
    if lead.on_device:   # the roofline of a whole-model device run: the device's copy bandwidth
        probe = measure_device_bandwidth if lead.all_on_device else None
    else:
        probe = lambda: measure_bandwidth(lead.n_threads)   # noqa: E731
    bandwidths = [probe()] if probe else []
    rng = np.random.default_rng(0)
    n_vocab = runners[0].n_vocab
    results = {(r.name, t): TestResult(r.name, t, n) for r in runners
               for t, n in ((f"pp{n_prompt}", n_prompt), (f"tg{n_gen}", n_gen)) if n > 0}
    try:
        for rep in range(reps + 1):               # rep 0 warms up and is not recorded
            tokens = rng.integers(0, n_vocab, size=max(n_prompt, 1))
            for r in runners:                     # alternate runtimes within each repetition
                if progress:
                    progress(f"{r.name} rep {rep}/{reps}")
                if n_prompt:
                    secs = _timed(lambda: r.prompt(tokens))
                    if rep:
                        results[(r.name, f"pp{n_prompt}")].tok_s.append(n_prompt / secs)
                if n_gen:
                    secs = _timed(lambda: r.generate(int(tokens[0]), n_gen))
                    if rep:
                        results[(r.name, f"tg{n_gen}")].tok_s.append(n_gen / secs)
            if probe:
                bandwidths.append(probe())   # after each repetition
        from lowbit.runtime.gguf_file import GGUFFile
        with GGUFFile(path) as g:
            n_params = sum(t.n_elements for t in g.tensors)
            size = sum(t.nbytes for t in g.tensors)
        out = {
            "model": os.path.basename(path), "path": path, "size_bytes": size, "n_params": n_params,
            "reps": reps, "n_batch": n_batch,
            "runtimes": {r.name: {"backend": r.backend, "threads": r.n_threads,
                                  "load_seconds": r.load_seconds, "loaded_rss_bytes": r.loaded_rss_bytes}
                         for r in runners},
            "tests": [res.to_dict() for res in results.values()],
            "process_peak_rss_bytes": peak_rss_bytes(),
            # a device's roofline is lowbit's alone (llama.cpp's runner is the CPU)
            "roofline": {} if not probe else dict(
                roofline(path, bandwidths, {r.name: results[(r.name, f"tg{n_gen}")].mean
                                            for r in runners if n_gen and r.on_device == lead.on_device},
                         {r.name: results[(r.name, f"tg{n_gen}")].tok_s
                          for r in runners if n_gen and r.on_device == lead.on_device}),
                bandwidth_kind="cuda device-to-device copy (read + written)" if lead.on_device else "cpu read"),
        }
        if vs_llama_cpp:
            out["ratios"] = {t: results[("lowbit", t)].mean / results[("llama.cpp", t)].mean
                             for (_, t) in results if ("llama.cpp", t) in results
                             and results[("llama.cpp", t)].mean > 0}
        return out
    finally:
        for r in runners:
            r.close()


def format_table(reports: List[dict]) -> str:
    """The llama-bench style table; tg rows carry their fraction of the decode roofline."""
    lines = ["| model | size | params | backend | threads | test | t/s | of roofline, paired | of roofline |",
             "|---|---:|---:|---|---:|---|---:|---:|---:|"]
    for rep in reports:
        roof = rep.get("roofline", {})
        fractions, paired = roof.get("tg_fraction", {}), roof.get("tg_fraction_paired", {})
        for t in rep["tests"]:
            rt = rep["runtimes"][t["runtime"]]
            tg = t["test"].startswith("tg")
            share = f"{fractions[t['runtime']]:.2f}" if tg and t["runtime"] in fractions else ""
            share_paired = f"{paired[t['runtime']]:.2f}" if tg and t["runtime"] in paired else ""
            lines.append(f"| {rep['model']} | {human_bytes(rep['size_bytes'])} | {rep['n_params'] / 1e6:.1f} M "
                         f"| {rt['backend']} | {rt['threads']} | {t['test']} | {t['mean']:.2f} ± {t['stdev']:.2f} "
                         f"| {share_paired} | {share} |")
    extra = []
    for rep in reports:
        roof = rep.get("roofline")
        if roof:
            kind = "device copy" if roof.get("bandwidth_kind", "cpu read") != "cpu read" else "read"
            extra.append(f"- {rep['model']}: a decode step reads {human_bytes(roof['decode_bytes_per_token'])} of "
                         f"weights; {kind} bandwidth {roof['read_bandwidth_gbs']:.1f} GB/s (best of "
                         f"{', '.join(f'{b:.1f}' for b in roof['read_bandwidth_measured_gbs'])}) "
                         f"-> roofline {roof['roofline_tok_s']:.1f} tok/s")
        for name, rt in rep["runtimes"].items():
            extra.append(f"- {rep['model']} / {name}: load {rt['load_seconds']:.2f} s, "
                         f"RSS after load +{human_bytes(rt['loaded_rss_bytes'])}")
        extra.append(f"- process peak RSS {human_bytes(rep['process_peak_rss_bytes'])}")
        for test, ratio in rep.get("ratios", {}).items():
            extra.append(f"- {rep['model']} {test}: lowbit / llama.cpp = {ratio:.2f}x")
    return "\n".join(lines + [""] + extra)
