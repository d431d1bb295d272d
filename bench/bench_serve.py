"""Serving speed: aggregate generated tok/s and p50 / p95 time to first token (TTFT) with 1, 4
and 8 concurrent streams, `lowbit serve --parallel C` against llama.cpp's server
(llama-cpp-python's `python -m llama_cpp.server`) in the same run, on both real models.

    python bench/bench_serve.py [--threads 2] [--streams 1 4 8] [--requests 2] [--max-tokens 64]
                                [--repeats 3] [--stream-interval-ms MS] [--solo-run-ms MS]
                                [--act-precision P] [--compare OTHER/python
                                [--compare-solo-run-ms MS] [--compare-act-precision P]]
                                [--json bench/results/serve.json]

Each of C client threads sends --requests streaming completions back to back (distinct raw
prompts, temperature 0, max_tokens --max-tokens); tok/s = completion tokens of all requests /
wall time from the first send to the last [DONE]; TTFT = send -> first content chunk. The row
"Model.generate" is single-stream decode tok/s of the in-process API, the reference that one
stream through the server should not fall below. Extra columns, for reading the rows: "decode
tok/s per stream" (tokens after the first / seconds after the first chunk, over the requests:
Model.generate's decode_tok_s measured at the client), the server process's CPU time (all its
threads) and this benchmark's clients' CPU time per generated token (they share the cores); the
row "Model.generate end to end" counts its prefill too (all tokens / wall time of the same
requests a client sends, back to back), and its "server CPU ms/token" cell is Model.generate's
own process CPU per token: the server's column minus it is what serving costs a token. The
ratio rows pair each round's 1-stream server run with that round's Model.generate run (the
median and range of the per-round ratios). With --repeats R every row is measured R
times, the rounds interleaved (Model.generate, lowbit at each stream count, llama.cpp's server at
each, then again), and the table shows the median with the range; each run records the 1-minute
load average at its end (a shared machine moves these figures by tens of percent). --compare
runs a second tree's server (A/B: e.g. main's python/ folder) beside this one's in every round,
alternating which goes first, and prints per-round ratios of the two.

llama.cpp's server comes from the Python at --llama-python (default /work/oracle-venv/bin/python,
needs llama-cpp-python[server]); it is skipped, and said so, when that Python cannot run it.
llama-cpp-python's server has no parallel slots: it answers one request at a time (run with
--interrupt_requests False so that a new request waits instead of cutting the running one).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

import lowbit
from lowbit.runtime import registry

MODELS = ["smollm2-135m-instruct", "gemma3-270m"]
LLAMA_PYTHON = "/work/oracle-venv/bin/python"
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(lowbit.__file__)))
TOPICS = ["rivers", "mountains", "the moon", "bread", "trains", "bees", "libraries", "storms",
          "glass", "chess", "salt", "owls", "bridges", "clocks", "maps", "tea"]
START_S = 300
N_CTX = 2048


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, port: int, path: str) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server on port {port} not ready after {START_S} s")


def start_lowbit(model_path: str, parallel: int, threads: int, stream_interval_ms: Optional[float] = None,
                 python_dir: str = PYTHON_DIR, solo_run_ms: Optional[float] = None,
                 act_precision: Optional[str] = None):
    port = free_port()
    cmd = [sys.executable, "-m", "lowbit", "serve", model_path, "--port", str(port), "-q",
           "--parallel", str(parallel), "--threads", str(threads), "--n-ctx", str(N_CTX)]
    if stream_interval_ms is not None:             # else the server's default
        cmd += ["--stream-interval-ms", str(stream_interval_ms)]
    if solo_run_ms is not None:                    # else the server's default (older trees: no such option)
        cmd += ["--solo-run-ms", str(solo_run_ms)]
    if act_precision is not None:                  # else the server's default (q8; older trees: auto)
        cmd += ["--act-precision", act_precision]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=python_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_ready(proc, port, "/health")
    return proc, port


def start_llama_cpp(python: str, model_path: str, threads: int):
    port = free_port()
    cmd = [python, "-m", "llama_cpp.server", "--model", model_path, "--port", str(port), "--host", "127.0.0.1",
           "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(N_CTX),
           "--interrupt_requests", "False", "--verbose", "False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_ready(proc, port, "/v1/models")
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


try:        # the clients share the cores with the server: the cheaper their parsing, the less they disturb it
    from orjson import loads as loads_json
except ImportError:
    loads_json = json.loads


def one_stream(port: int, prompt: str, max_tokens: int) -> Dict[str, float]:
    """One streaming completion (raw prompt: no chat template, so both servers read the same
    tokens); time to first token, completion tokens, seconds."""
    body = {"prompt": prompt, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "stream_options": {"include_usage": True}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:500]!r}")
    ttft, chunks, usage = None, 0, None
    for raw in resp:
        if not raw.startswith(b"data: ") or raw.startswith(b"data: [DONE]"):
            continue
        chunk = loads_json(raw[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("finish_reason") is None:
                chunks += 1                  # llama-cpp-python: one chunk per token
                if ttft is None:
                    ttft = time.perf_counter() - t0
    conn.close()
    tokens = usage["completion_tokens"] if usage else chunks     # lowbit sends usage (include_usage)
    return {"ttft": ttft if ttft is not None else time.perf_counter() - t0, "tokens": tokens,
            "seconds": time.perf_counter() - t0}


def process_cpu_s(pid: Optional[int]) -> Optional[float]:
    """User + system CPU seconds of process `pid` (all its threads) so far; None without one."""
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_load(port: int, streams: int, requests: int, max_tokens: int, pid: Optional[int] = None) -> Dict[str, float]:
    results: List[Dict[str, float]] = []
    errors: List[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for r in range(requests):
            topic = TOPICS[(i * requests + r) % len(TOPICS)]
            try:
                out = one_stream(port, f"A long, detailed essay about {topic}.\n\n", max_tokens)
            except Exception as e:      # noqa: BLE001 - reported in the row
                with lock:
                    errors.append(str(e))
                return
            with lock:
                results.append(out)

    one_stream(port, "Hello", 4)                       # warm-up (first-call costs, caches)
    server0, client0 = process_cpu_s(pid), client_cpu_s()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    server_cpu = process_cpu_s(pid) - server0 if pid is not None else None
    client_cpu = client_cpu_s() - client0
    ttfts = sorted(r["ttft"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    # the rate of Model.generate's decode_tok_s, per stream: tokens after the first / time after it
    after_first = sum(r["seconds"] - r["ttft"] for r in results)
    return {"streams": streams, "requests": len(results), "errors": errors, "tokens": tokens, "wall_s": wall,
            "load_1m": os.getloadavg()[0],
            "tok_s": tokens / wall if wall > 0 else 0.0,
            "decode_tok_s_per_stream": (sum(r["tokens"] - 1 for r in results) / after_first
                                        if after_first > 0 else None),
            "server_cpu_ms_per_token": 1e3 * server_cpu / tokens if server_cpu is not None and tokens else None,
            "client_cpu_ms_per_token": 1e3 * client_cpu / tokens if tokens else None,
            "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
            "ttft_p95_s": ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))] if ttfts else None}


def generate_baseline(model_path: str, threads: int, max_tokens: int, requests: int = 1) -> Dict[str, float]:
    """Model.generate on the prompts one bench client sends (``requests`` of them back to back,
    greedy): decode tok/s (tokens after the first / seconds after it, over the requests: the
    reference), end to end (all generated tokens / wall time of the requests, tokenizing and
    prefill included: what the server's tok/s counts, less the HTTP) and the process's CPU time
    per generated token (compare with the server's)."""
    with lowbit.load(model_path, n_ctx=N_CTX, n_threads=threads) as m:
        m.generate("Hello", max_new_tokens=4, temperature=0)             # the server's warm-up
        cpu0, t0 = client_cpu_s(), time.perf_counter()
        gens = [m.generate(f"A long, detailed essay about {TOPICS[r % len(TOPICS)]}.\n\n",
                           max_new_tokens=max_tokens, temperature=0) for r in range(requests)]
        wall, cpu = time.perf_counter() - t0, client_cpu_s() - cpu0
        tokens = sum(g.generated_tokens for g in gens)
        decode_s = sum(g.decode_seconds for g in gens)
        return {"decode_tok_s": sum(g.generated_tokens - 1 for g in gens) / decode_s if decode_s > 0 else 0.0,
                "e2e_tok_s": tokens / wall if wall > 0 else 0.0,
                "cpu_ms_per_token": 1e3 * cpu / tokens if tokens else None}


def llama_cpp_usable(python: str) -> Optional[str]:
    """None when `python` can run llama_cpp.server, else why not."""
    if not os.path.exists(python):
        return f"{python} not found"
    r = subprocess.run([python, "-c", "import llama_cpp.server.app"], capture_output=True, text=True)
    return None if r.returncode == 0 else r.stderr.strip().splitlines()[-1]


def median_row(runs: List[Dict]) -> Dict:
    """One row from R runs of the same setting: medians, the tok/s range, every run kept."""
    ttft50 = [r["ttft_p50_s"] for r in runs if r["ttft_p50_s"] is not None]
    ttft95 = [r["ttft_p95_s"] for r in runs if r["ttft_p95_s"] is not None]
    rates = [r["tok_s"] for r in runs]

    def median_of(key):
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None
    return {"streams": runs[0]["streams"], "tok_s": statistics.median(rates), "tok_s_min": min(rates),
            "decode_tok_s_per_stream": median_of("decode_tok_s_per_stream"),
            "server_cpu_ms_per_token": median_of("server_cpu_ms_per_token"),
            "client_cpu_ms_per_token": median_of("client_cpu_ms_per_token"),
            "tok_s_max": max(rates), "ttft_p50_s": statistics.median(ttft50) if ttft50 else None,
            "ttft_p95_s": statistics.median(ttft95) if ttft95 else None,
            "requests": sum(r["requests"] for r in runs), "errors": [e for r in runs for e in r["errors"]],
            "load_1m": [round(r["load_1m"], 2) for r in runs], "runs": runs}


def bench_model(name: str, args, vs_llama: bool) -> Dict:
    path = str(registry.resolve(name, quiet=True))
    generate, lowbit_runs, llama_runs = [], {c: [] for c in args.streams}, {c: [] for c in args.streams}
    compare_runs = {c: [] for c in args.streams}
    for r in range(args.repeats):            # rounds interleaved: the load drifts alike for all rows
        generate.append(generate_baseline(path, args.threads, args.max_tokens, args.requests))
        for c in args.streams:
            trees = [(PYTHON_DIR, lowbit_runs, args.solo_run_ms, args.act_precision)]
            if args.compare:
                trees.append((args.compare, compare_runs, args.compare_solo_run_ms, args.compare_act_precision))
            for tree, runs, solo, act in (trees if r % 2 == 0 else trees[::-1]):   # who goes first alternates
                proc, port = start_lowbit(path, c, args.threads, args.stream_interval_ms, tree, solo, act)
                try:
                    runs[c].append(run_load(port, c, args.requests, args.max_tokens, proc.pid))
                finally:
                    stop(proc)
        if vs_llama:
            proc, port = start_llama_cpp(args.llama_python, path, args.threads)
            try:
                for c in args.streams:
                    llama_runs[c].append(run_load(port, c, args.requests, args.max_tokens, proc.pid))
            finally:
                stop(proc)
    return {"model": name, "generate_tok_s": statistics.median(g["decode_tok_s"] for g in generate),
            "generate_e2e_tok_s": statistics.median(g["e2e_tok_s"] for g in generate), "generate_runs": generate,
            "generate_cpu_ms_per_token": statistics.median(g["cpu_ms_per_token"] for g in generate),
            "lowbit": [median_row(lowbit_runs[c]) for c in args.streams],
            "lowbit_compare": [median_row(compare_runs[c]) for c in args.streams] if args.compare else [],
            "compare_tree": args.compare,
            "llama_cpp": [median_row(llama_runs[c]) for c in args.streams] if vs_llama else []}


def fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(reports: List[Dict]) -> str:
    lines = ["| model | server | streams | tok/s (median) | range | vs 1 stream | TTFT p50 s | TTFT p95 s | "
             "decode tok/s per stream | server CPU ms/token | client CPU ms/token | requests | load 1m |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for rep in reports:
        gen = [g["decode_tok_s"] for g in rep["generate_runs"]]
        lines.append(f"| {rep['model']} | Model.generate | 1 | {fmt(rep['generate_tok_s'])} | "
                     f"{fmt(min(gen))}-{fmt(max(gen))} | | | | {fmt(rep['generate_tok_s'])} | "
                     f"{fmt(rep.get('generate_cpu_ms_per_token'), '.2f')} | | | |")
        lines.append(f"| {rep['model']} | Model.generate end to end | 1 | {fmt(rep['generate_e2e_tok_s'])} | "
                     f"| | | | | | | | |")
        for server in ("lowbit", "lowbit_compare", "llama_cpp"):
            rows = rep.get(server) or []
            base = rows[0]["tok_s"] if rows else None
            for row in rows:
                ratio = row["tok_s"] / base if base else None
                err = f" ({len(row['errors'])} failed)" if row["errors"] else ""
                lines.append(f"| {rep['model']} | {server} | {row['streams']} | {fmt(row['tok_s'])} | "
                             f"{fmt(row['tok_s_min'])}-{fmt(row['tok_s_max'])} | {fmt(ratio, '.2f')}x | "
                             f"{fmt(row['ttft_p50_s'], '.3f')} | {fmt(row['ttft_p95_s'], '.3f')} | "
                             f"{fmt(row.get('decode_tok_s_per_stream'))} | {fmt(row.get('server_cpu_ms_per_token'), '.2f')} | "
                             f"{fmt(row.get('client_cpu_ms_per_token'), '.2f')} | "
                             f"{row['requests']}{err} | {', '.join(f'{x:.1f}' for x in row['load_1m'])} |")
        one = rep["lowbit"][0] if rep["lowbit"] and rep["lowbit"][0]["streams"] == 1 else None
        if one and rep["generate_tok_s"]:
            # per round (the 1-stream server run and the Model.generate run of the same round, so
            # the load drift cancels), then the median and the range of those ratios
            pairs = list(zip(one["runs"], rep["generate_runs"]))
            for what, server_key, generate_key in (("lowbit 1 stream / Model.generate", "tok_s", "decode_tok_s"),
                                                   ("decode: lowbit 1 stream / Model.generate", "decode_tok_s_per_stream",
                                                    "decode_tok_s"),
                                                   ("end to end: lowbit 1 stream / Model.generate", "tok_s", "e2e_tok_s"),
                                                   ("CPU a token: lowbit server / Model.generate", "server_cpu_ms_per_token",
                                                    "cpu_ms_per_token")):
                ratios = [r[server_key] / g[generate_key] for r, g in pairs if r.get(server_key) and g.get(generate_key)]
                if ratios:
                    lines.append(f"| {rep['model']} | {what} (per round) | 1 | {statistics.median(ratios):.2f}x | "
                                 f"{min(ratios):.2f}-{max(ratios):.2f} | | | | | | | | |")
        for row, other in zip(rep["lowbit"], rep.get("lowbit_compare") or []):
            ratios = [a["tok_s"] / b["tok_s"] for a, b in zip(row["runs"], other["runs"]) if b["tok_s"]]
            cpu = [a["server_cpu_ms_per_token"] / b["server_cpu_ms_per_token"] for a, b in zip(row["runs"], other["runs"])
                   if a.get("server_cpu_ms_per_token") and b.get("server_cpu_ms_per_token")]
            if ratios:
                lines.append(f"| {rep['model']} | lowbit / lowbit_compare tok/s (per round) | {row['streams']} | "
                             f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f} | | | | | "
                             f"{statistics.median(cpu) if cpu else 0:.2f}x CPU | | | |")
        by_c = {r["streams"]: r["tok_s"] for r in rep["llama_cpp"]}
        for row in rep["lowbit"]:
            if by_c.get(row["streams"]):
                lines.append(f"| {rep['model']} | lowbit / llama_cpp | {row['streams']} | "
                             f"{row['tok_s'] / by_c[row['streams']]:.2f}x | | | | | | | | | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", type=int, nargs="*", default=[1, 4, 8])
    ap.add_argument("--requests", type=int, default=2, help="requests per stream, sent back to back")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of every row, interleaved; medians shown")
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--llama-python", default=LLAMA_PYTHON)
    ap.add_argument("--stream-interval-ms", type=float, default=None,
                    help="lowbit serve's --stream-interval-ms (default: the server's default)")
    ap.add_argument("--solo-run-ms", type=float, default=None,
                    help="lowbit serve's --solo-run-ms (default: the server's default)")
    ap.add_argument("--compare-solo-run-ms", type=float, default=None,
                    help="--solo-run-ms of the --compare tree's server (e.g. 0 with --compare python: solo runs "
                         "off against on in one tree)")
    ap.add_argument("--act-precision", choices=["auto", "high", "q8"], default=None,
                    help="lowbit serve's --act-precision (default: the server's default, q8)")
    ap.add_argument("--compare-act-precision", choices=["auto", "high", "q8"], default=None,
                    help="--act-precision of the --compare tree's server (e.g. auto with --compare python)")
    ap.add_argument("--compare", metavar="PYTHON_DIR",
                    help="another lowbit tree's python/ folder (a checkout of main, with its built core): its "
                         "server runs beside this one's at every stream count of every round (rows "
                         "lowbit_compare, and per-round ratios)")
    ap.add_argument("--json", help="write the reports to this file")
    args = ap.parse_args()
    if args.repeats < 1 or args.requests < 1 or not args.streams:
        ap.error("--repeats and --requests must be >= 1, and --streams needs at least one value")
    why = llama_cpp_usable(args.llama_python)
    if why:
        print(f"(llama.cpp's server not available, lowbit only: {why})", file=sys.stderr)
    load_before = os.getloadavg()
    reports = [bench_model(m, args, why is None) for m in args.models]
    out = {"load_average_before": load_before, "load_average_after": os.getloadavg(),
           "threads": args.threads, "max_tokens": args.max_tokens, "requests_per_stream": args.requests,
           "repeats": args.repeats, "stream_interval_ms": args.stream_interval_ms, "compare": args.compare,
           "solo_run_ms": args.solo_run_ms, "compare_solo_run_ms": args.compare_solo_run_ms,
           "act_precision": args.act_precision, "compare_act_precision": args.compare_act_precision,
           "reports": reports}
    print(table(reports))
    print(f"load average before {load_before[0]:.2f}, after {out['load_average_after'][0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
