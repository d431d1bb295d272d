"""Where a `lowbit serve` step's time goes: the real server in a subprocess with timers around
its scheduler (Scheduler._step, the backend's batched forward, each job's sampling and event
hand-over, the time between steps), driven by bench_serve's streaming clients.

    python bench/profile_serve.py [--model smollm2-135m-instruct] [--streams 1 8] [--requests 3]
                                  [--threads 2] [--stream-interval-ms MS] [--solo-run-ms MS] [--json out.json]

Per stream count, one fresh server: steps, prompt+decode rows per step, forward steps per solo run
(a lone stream's steps run in the core several at a time: each counts as a step), ms per step inside the
batched forward (eval_batch, with the core's draws; and of that, inside the core's call), ms per token in Job.on_logits (sampling in
Python, for jobs that need the logits row) and Job.on_token (stop strings, UTF-8, posting the
event), ms per step between steps (the scheduler loop, the event hand-over hooks), the server's share of the scheduler thread's time outside the forward, and CPU time per generated
token of the server's threads by role (event loop, scheduler, event relay, engine pools and the
rest) and of the benchmark's own clients, and by role the time runnable threads waited for a
core (run-queue delay: what preemption costs them). The timers wrap the real methods; nothing
else changes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def thread_cpu() -> dict:
    """CPU seconds of this process's threads by role: the event loop (HTTP, SSE), the scheduler
    thread (Python between steps + its share of the forward as the pool's caller), the event
    relay, and the rest (the engine pools' workers, anyio's tokenizer threads); and by role the
    seconds they were runnable but waited for a core (run-queue delay: preempted, by this
    process's other threads or by other processes). From /proc/<tid>/schedstat (nanoseconds)
    where the kernel has it, else stat's user + system ticks (10 ms steps) and no delays."""
    import threading
    tick = os.sysconf("SC_CLK_TCK")
    roles = {t.native_id: {"MainThread": "loop", "lowbit-scheduler": "scheduler", "lowbit-events": "relay"}[t.name]
             for t in threading.enumerate() if t.name in ("MainThread", "lowbit-scheduler", "lowbit-events")}
    cpu = {f"{kind}_{r}_s": 0.0 for kind in ("cpu", "wait") for r in ("loop", "scheduler", "relay", "other")}
    for tid in os.listdir("/proc/self/task"):
        role = roles.get(int(tid), "other")
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run_ns, wait_ns = (int(x) for x in f.read().split()[:2])
            cpu[f"cpu_{role}_s"] += run_ns / 1e9
            cpu[f"wait_{role}_s"] += wait_ns / 1e9
            continue
        except (OSError, ValueError):   # the thread ended, or no schedstat
            pass
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:                 # the thread ended
            continue
        cpu[f"cpu_{role}_s"] += (int(fields[11]) + int(fields[12])) / tick
    return cpu


def serve_child(path: str, parallel: int, threads: int, port: int, out: str, interval: str, solo: str) -> None:
    """The server with timers; writes its totals to `out` on SIGUSR1 and at exit."""
    import atexit
    import lowbit
    from lowbit import _core, server as srv
    from lowbit.server import scheduler as sch
    totals = dict(steps=0, rows=0, tokens=0, step_s=0.0, forward_s=0.0, core_s=0.0, on_logits_s=0.0,
                  on_token_s=0.0, between_s=0.0, runs=0, run_steps=0)
    last_end = [None]
    step, backend_step = sch.Scheduler._step, sch.SessionBackend.step
    # a server from before on_token (PYTHONPATH on an older tree, for A/B runs): on_logits did it all
    on_logits, on_token = sch.Job.on_logits, getattr(sch.Job, "on_token", None)

    def timed_step(self):
        t0 = time.perf_counter()
        if last_end[0] is not None:
            totals["between_s"] += t0 - last_end[0]
        step(self)
        t1 = time.perf_counter()
        totals["step_s"] += t1 - t0
        last_end[0] = t1 if self.busy_slots() else None

    def timed_backend_step(self, items, *args, **kw):     # older trees: step(items)
        t0 = time.perf_counter()
        result = backend_step(self, items, *args, **kw)
        totals["forward_s"] += time.perf_counter() - t0
        totals["steps"] += 1
        totals["rows"] += sum(len(ids) for _, ids in items)
        return result

    backend_run = getattr(sch.SessionBackend, "run", None)     # solo runs (older trees: none)

    def timed_backend_run(self, slot, *args, **kw):   # a solo run: one forward step per draw
        t0 = time.perf_counter()
        got = backend_run(self, slot, *args, **kw)
        totals["forward_s"] += time.perf_counter() - t0
        n = len(got.tokens) + (got.error is not None)
        totals["steps"] += n
        totals["rows"] += n
        totals["runs"] += 1
        totals["run_steps"] += n
        return got

    core_eval_batch, core_decode_run = _core.eval_batch, getattr(_core, "decode_run", None)

    def timed_core_decode_run(*args, **kw):
        t0 = time.perf_counter()
        try:
            return core_decode_run(*args, **kw)
        finally:
            totals["core_s"] += time.perf_counter() - t0

    def timed_core_eval_batch(*args, **kw):     # the core's own step, inside backend.step
        t0 = time.perf_counter()
        try:
            return core_eval_batch(*args, **kw)
        finally:
            totals["core_s"] += time.perf_counter() - t0

    def timed_on_logits(self, logits):          # sampling in Python, then on_token
        t0 = time.perf_counter()
        on_logits(self, logits)
        totals["on_logits_s"] += time.perf_counter() - t0
        totals["tokens"] += on_token is None

    def timed_on_token(self, token, logprob=None):
        t0 = time.perf_counter()
        on_token(self, token, logprob)
        totals["on_token_s"] += time.perf_counter() - t0
        totals["tokens"] += 1

    sch.Scheduler._step, sch.SessionBackend.step, sch.Job.on_logits = timed_step, timed_backend_step, timed_on_logits
    _core.eval_batch = timed_core_eval_batch
    if backend_run is not None:
        sch.SessionBackend.run, _core.decode_run = timed_backend_run, timed_core_decode_run
    if on_token is not None:
        sch.Job.on_token = timed_on_token

    def dump(*_):
        with open(out, "w") as f:
            json.dump(dict(totals, **thread_cpu()), f)
    atexit.register(dump)
    signal.signal(signal.SIGUSR1, dump)
    act = getattr(srv, "DEFAULT_ACT_PRECISION", "auto")          # `lowbit serve`'s (older trees: auto)
    model = lowbit.load(path, n_ctx=2048, n_threads=threads, act_precision=act)
    extra = {} if interval == "default" else {"stream_interval_ms": float(interval)}   # older trees: no such option
    if solo != "default":
        extra["solo_run_ms"] = float(solo)
    srv.serve(srv.build_app(model, "profiled", parallel=parallel, **extra), srv.bind("127.0.0.1", port))


def profile(path: str, streams: int, requests: int, threads: int, max_tokens: int, interval: str = "default",
            solo: str = "default") -> dict:
    import bench_serve
    port = bench_serve.free_port()
    out = f"/tmp/lowbit_profile_serve_{os.getpid()}_{streams}.json"
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", path, str(streams), str(threads),
                             str(port), out, interval, solo], env=dict(os.environ, PYTHONPATH=bench_serve.PYTHON_DIR),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        bench_serve.wait_ready(proc, port, "/health")
        bench_serve.one_stream(port, "Hello", 4)                # warm-up, then count from zero
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        with open(out) as f:
            before = json.load(f)
        client0 = resource.getrusage(resource.RUSAGE_SELF)
        load = bench_serve.run_load(port, streams, requests, max_tokens)
        client1 = resource.getrusage(resource.RUSAGE_SELF)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        with open(out) as f:
            after = json.load(f)
    finally:
        bench_serve.stop(proc)
        if os.path.exists(out):
            os.remove(out)
    t = {k: after[k] - before[k] for k in after}
    t["cpu_client_s"] = (client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)
    steps, tokens = max(t["steps"], 1), max(t["tokens"], 1)
    outside = t["step_s"] - t["forward_s"] + t["between_s"]
    return {"streams": streams, "tok_s": load["tok_s"], "load_1m": load["load_1m"], "steps": t["steps"],
            "rows_per_step": t["rows"] / steps,
            "solo_runs": t.get("runs", 0), "steps_per_solo_run": t.get("run_steps", 0) / max(t.get("runs", 0), 1),
            "forward_ms_per_step": 1e3 * t["forward_s"] / steps,
            "core_ms_per_step": 1e3 * t["core_s"] / steps,
            "on_logits_ms_per_token": 1e3 * t["on_logits_s"] / tokens,
            "on_token_ms_per_token": 1e3 * t["on_token_s"] / tokens,
            "between_ms_per_step": 1e3 * t["between_s"] / steps,
            "outside_forward_share": outside / max(outside + t["forward_s"], 1e-9),
            "cpu_ms_per_token": {r: 1e3 * t[f"cpu_{r}_s"] / tokens
                                 for r in ("loop", "scheduler", "relay", "other", "client")},
            "wait_ms_per_token": {r: 1e3 * t.get(f"wait_{r}_s", 0.0) / tokens
                                  for r in ("loop", "scheduler", "relay", "other")},
            "totals": t}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        path, parallel, threads, port, out, interval, solo = sys.argv[2:9]
        serve_child(path, int(parallel), int(threads), int(port), out, interval, solo)
        return 0
    from lowbit.runtime import registry
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--requests", type=int, default=3, help="streaming completions per client, back to back")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stream-interval-ms", default="default",
                    help="the server's stream_interval_ms (default: the server's default)")
    ap.add_argument("--solo-run-ms", default="default",
                    help="the server's solo_run_ms (default: the server's default; older trees have none)")
    ap.add_argument("--json")
    args = ap.parse_args()
    path = str(registry.resolve(args.model, quiet=True))
    rows = [profile(path, c, args.requests, args.threads, args.max_tokens, args.stream_interval_ms, args.solo_run_ms)
            for c in args.streams]
    print("| streams | tok/s | steps | rows/step | steps/solo run | forward ms/step | of which core | on_logits ms/token | on_token ms/token | "
          "between steps ms | outside the forward | CPU ms/token: loop / scheduler / relay / pools+other / client "
          "| run-queue wait ms/token: loop / scheduler / relay / pools+other | load 1m |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for r in rows:
        cpu = " / ".join(f"{r['cpu_ms_per_token'][k]:.3f}" for k in ("loop", "scheduler", "relay", "other", "client"))
        wait = " / ".join(f"{r['wait_ms_per_token'][k]:.3f}" for k in ("loop", "scheduler", "relay", "other"))
        print(f"| {r['streams']} | {r['tok_s']:.1f} | {r['steps']} | {r['rows_per_step']:.2f} | "
              f"{r['steps_per_solo_run']:.1f} | {r['forward_ms_per_step']:.2f} | {r['core_ms_per_step']:.2f} | {r['on_logits_ms_per_token']:.3f} | {r['on_token_ms_per_token']:.3f} | "
              f"{r['between_ms_per_step']:.2f} | {100 * r['outside_forward_share']:.1f} % | {cpu} | {wait} | {r['load_1m']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
