"""``lowbit compare``: quantize a model several ways and measure each side by side.

For the baseline (the input file) and every candidate: file size, bits per weight, peak memory
of a process that loads it and runs the speed test, prompt (pp) and generation (tg) tok/s,
perplexity, and KL divergence / same-top-1 % against the baseline on the same tokens.

Candidates are types (``Q4_K_M``), optionally with a variant after a colon: ``Q4_K_M:rtn``
(plain rounding), ``Q4_K_M:imatrix`` (needs ``imatrix=``), ``Q4_K_M:gptq``, ``Q4_K_M:awq`` and
``Q4_K_M:awq+gptq`` (need ``calib_text=``, which should not be the evaluation text; see
``quantize.METHODS``). A bare type uses the imatrix when one is given. Every figure comes from the
engine; ``measure_speed=False`` (``--no-speed``) skips the speed and memory probes for quality
figures only.

Mean KLD comes with a 95 % interval from a bootstrap over the evaluation chunks, and every
calibrated variant with its KLD relative to the same type's ``rtn`` row, whose interval resamples
the same chunks for both (paired): an interval that excludes 1 is a difference the text shows,
one that straddles it is not.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Sequence

from lowbit.errors import LowbitError
from lowbit.quant import CALIBRATED      # quantize(method=...) with the calibration Hessians


VARIANTS = ("rtn", "imatrix") + CALIBRATED

_PROBE = r"""
import json, sys
from lowbit.runtime.bench import bench_model
from lowbit.runtime.generate import peak_rss_bytes
rep = bench_model(sys.argv[1], n_prompt=int(sys.argv[2]), n_gen=int(sys.argv[3]), reps=int(sys.argv[4]),
                  n_threads=int(sys.argv[5]) or None)
tok_s = {t["test"][:2]: t["mean"] for t in rep["tests"]}
print(json.dumps({"pp": tok_s.get("pp", 0.0), "tg": tok_s.get("tg", 0.0),
                  "peak_rss": peak_rss_bytes()}))   # VmHWM: ru_maxrss would include our parent's peak
"""


@dataclass
class Row:
    name: str                       # "baseline", "Q4_K_M rtn", "Q4_K_M imatrix"
    path: str
    type: str
    method: str
    file_bytes: int
    bits_per_weight: float
    quantize_seconds: float = 0.0
    peak_rss_bytes: Optional[int] = None
    pp_tok_s: Optional[float] = None
    tg_tok_s: Optional[float] = None
    ppl: float = 0.0
    ppl_err: float = 0.0
    kld_mean: float = 0.0
    kld_err: float = 0.0
    kld_p99: float = 0.0
    rms_dp_pct: float = 0.0
    same_top1_pct: float = 100.0
    kld_ci: List[float] = field(default_factory=lambda: [0.0, 0.0])   # 95 % bootstrap interval over chunks
    kld_chunks: List[float] = field(default_factory=list)               # mean KLD of each evaluation chunk


@dataclass
class CompareReport:
    model: str
    text: str
    n_ctx: int
    n_chunks: int
    rows: List[Row] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CompareReport":
        rows = [Row(**r) for r in d.get("rows", [])]
        # "backend" was a field of reports written before the numpy forward was removed
        return cls(**{k: v for k, v in d.items() if k not in ("rows", "backend")}, rows=rows)


def parse_candidates(types: Sequence[str], have_imatrix: bool, have_calib: bool = False) -> List[tuple]:
    """["Q4_K_M", "Q3_K_M:rtn"] -> [("Q4_K_M", "imatrix"|"rtn"), ("Q3_K_M", "rtn")]."""
    from lowbit.quant.recipes import resolve_recipe
    out = []
    for spec in types:
        name, _, variant = spec.strip().partition(":")
        canonical = resolve_recipe(name)[0]
        variant = variant or ("imatrix" if have_imatrix else "rtn")
        if variant not in VARIANTS:
            raise ValueError(f"candidate {spec!r}: variant must be one of {', '.join(VARIANTS)}")
        if variant == "imatrix" and not have_imatrix:
            raise ValueError(f"candidate {spec!r} needs an imatrix (--imatrix FILE)")
        if variant in CALIBRATED and not have_calib:
            raise ValueError(f"candidate {spec!r} needs calibration text (--calib-text FILE)")
        out.append((canonical, variant))
    return out


def _file_facts(path: str):
    from lowbit.runtime.gguf_file import GGUFFile
    with GGUFFile(path) as f:
        n_params = sum(t.n_elements for t in f.tensors)
        n_bytes = sum(t.nbytes for t in f.tensors)
    return os.path.getsize(path), 8.0 * n_bytes / max(n_params, 1)


def _probe_speed(path: str, n_prompt: int, n_gen: int, reps: int, n_threads: Optional[int]) -> dict:
    """pp / tg tok/s and the peak RSS of a fresh process that loads ``path`` and benchmarks it."""
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _PROBE, path, str(n_prompt), str(n_gen), str(reps),
                           str(n_threads or 0)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise LowbitError(f"speed test of {path} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _evaluate(row: Row, base_path: str, text: str, n_ctx: int, n_chunks: Optional[int],
              n_threads: Optional[int]) -> int:
    from lowbit.quant.evaluate import perplexity
    base = None if row.path == base_path else base_path
    r = perplexity(row.path, text, n_ctx=n_ctx, n_chunks=n_chunks, kl_base=base, n_threads=n_threads)
    row.ppl, row.ppl_err = r.ppl, r.ppl_err
    if r.kl is not None:
        row.kld_mean, row.kld_err, row.kld_p99 = r.kl.mean, r.kl.mean_err, r.kl.p99
        row.rms_dp_pct, row.same_top1_pct = 100 * r.kl.rms_dp, r.kl.same_top1_pct
        row.kld_ci, row.kld_chunks = list(r.kl.mean_ci), list(r.kl.chunk_means)
    return r.n_chunks


def compare(model: str, types: Sequence[str], text: str, *, imatrix=None, calib_text: Optional[str] = None,
            out_dir: Optional[str] = None,
            n_ctx: int = 512, n_chunks: Optional[int] = None, n_threads: Optional[int] = None,
            measure_speed: bool = True, bench_prompt: int = 128, bench_gen: int = 32, bench_reps: int = 2,
            progress: Optional[Callable[[str], None]] = None) -> CompareReport:
    """Quantize ``model`` to each candidate of ``types`` and measure everything (see module doc)."""
    from lowbit.quant.quantize import quantize
    candidates = parse_candidates(types, imatrix is not None, calib_text is not None)
    hessians = None
    say = progress or (lambda msg: None)
    out_dir = out_dir or tempfile.mkdtemp(prefix="lowbit-compare-")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(model))[0]
    size, bpw = _file_facts(model)
    report = CompareReport(os.path.basename(model), text="", n_ctx=n_ctx, n_chunks=0)
    report.rows.append(Row("baseline", model, "baseline", "-", size, bpw))
    for i, (qtype, variant) in enumerate(candidates):
        say(f"[{i + 1}/{len(candidates)}] quantizing {qtype} ({variant})")
        path = os.path.join(out_dir, f"{stem}-{qtype}-{variant}.gguf")
        t0 = time.monotonic()
        calibrated = variant in CALIBRATED
        if calibrated and hessians is None:
            from lowbit.quant.gptq import collect_hessians
            say("calibrating (Hessians of every matrix input)")
            hessians = collect_hessians(model, calib_text, n_ctx=n_ctx, n_chunks=n_chunks)
        quantize(model, path, qtype, imatrix=imatrix if variant == "imatrix" else None, n_threads=n_threads,
                 method=variant if calibrated else "rtn", calibration=hessians if calibrated else None)
        size, bpw = _file_facts(path)
        report.rows.append(Row(f"{qtype} {variant}", path, qtype, variant, size, bpw, time.monotonic() - t0))
    for i, row in enumerate(report.rows):
        if measure_speed:
            say(f"[{i + 1}/{len(report.rows)}] {row.name}: speed and memory")
            speed = _probe_speed(row.path, bench_prompt, bench_gen, bench_reps, n_threads)
            row.pp_tok_s, row.tg_tok_s, row.peak_rss_bytes = speed["pp"], speed["tg"], speed["peak_rss"]
        say(f"[{i + 1}/{len(report.rows)}] {row.name}: perplexity and KL divergence")
        report.n_chunks = _evaluate(row, model, text, n_ctx, n_chunks, n_threads)
    return report


def ratios_to_rtn(rep: CompareReport) -> dict:
    """{row name: (KLD / KLD of the same type's rtn row, 95 % paired-bootstrap interval)} for
    every non-rtn row whose type also has an rtn row measured on the same chunks."""
    from lowbit.quant.evaluate import paired_ratio
    rtn = {r.type: r for r in rep.rows if r.method == "rtn" and r.kld_chunks}
    out = {}
    for r in rep.rows:
        ref = rtn.get(r.type)
        if r.method in ("rtn", "-") or ref is None or len(r.kld_chunks) != len(ref.kld_chunks) \
                or ref.kld_mean <= 0:
            continue
        out[r.name] = (r.kld_mean / ref.kld_mean, paired_ratio(r.kld_chunks, ref.kld_chunks)[1])
    return out


def format_markdown(rep: CompareReport) -> str:
    base = rep.rows[0]
    ratios = ratios_to_rtn(rep)
    lines = [f"{rep.model}: {rep.n_chunks} chunks of {rep.n_ctx} tokens; intervals: 95 % bootstrap over chunks", "",
             "| variant | size MiB | bpw | peak RSS MiB | pp tok/s | tg tok/s | PPL | ΔPPL % | mean KLD | KLD 95 % CI "
             "| KLD / rtn | KLD p99 | RMS Δp % | same top-1 % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def opt(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rep.rows:
        dppl = 100 * (r.ppl / base.ppl - 1) if base.ppl else 0.0
        ratio = ratios.get(r.name)
        ratio_cell = "-" if ratio is None else f"{ratio[0]:.3f} [{ratio[1][0]:.3f}, {ratio[1][1]:.3f}]"
        lines.append(f"| {r.name} | {r.file_bytes / 2**20:.1f} | {r.bits_per_weight:.2f} "
                     f"| {opt(None if r.peak_rss_bytes is None else r.peak_rss_bytes / 2**20, '.0f')} "
                     f"| {opt(r.pp_tok_s, '.1f')} | {opt(r.tg_tok_s, '.1f')} | {r.ppl:.3f} ± {r.ppl_err:.3f} "
                     f"| {dppl:+.2f} | {r.kld_mean:.5f} | [{r.kld_ci[0]:.5f}, {r.kld_ci[1]:.5f}] | {ratio_cell} "
                     f"| {r.kld_p99:.4f} | {r.rms_dp_pct:.2f} | {r.same_top1_pct:.2f} |")
    return "\n".join(lines)


def check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LowbitError("--plot needs matplotlib, which is not installed: pip install matplotlib") from None


def plot(rep: CompareReport, path: str) -> None:
    """Mean KLD against file size and against tg tok/s (when measured), one point per variant."""
    check_plotting()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = rep.rows[1:]
    speed = all(r.tg_tok_s for r in rows)
    fig, axes = plt.subplots(1, 2 if speed else 1, figsize=(11 if speed else 6, 4.5), squeeze=False)
    panels = [("file size (MiB)", lambda r: r.file_bytes / 2**20)]
    if speed:
        panels.append(("generation tok/s", lambda r: r.tg_tok_s))
    markers = dict(zip(VARIANTS, "osD^v"))
    for ax, (label, x_of) in zip(axes[0], panels):
        for i, method in enumerate(m for m in VARIANTS if any(r.method == m for r in rows)):
            mine = [r for r in rows if r.method == method]
            x = [x_of(r) for r in mine]
            y = [r.kld_mean for r in mine]
            # error bars: the 95 % bootstrap interval (reports without one: the mean's standard error)
            lo = [r.kld_mean - (r.kld_ci[0] if r.kld_chunks else r.kld_mean - r.kld_err) for r in mine]
            hi = [(r.kld_ci[1] if r.kld_chunks else r.kld_mean + r.kld_err) - r.kld_mean for r in mine]
            ax.errorbar(x, y, yerr=[lo, hi], fmt=markers.get(method, "o"), color=f"C{i}", capsize=3,
                        label=method)
            for r, xi in zip(mine, x):
                ax.annotate(r.type, (xi, r.kld_mean), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.legend(title="method", fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("mean KL divergence vs baseline")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{rep.model}: quality loss against size and speed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
