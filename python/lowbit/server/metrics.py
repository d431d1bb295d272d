"""Counters of the server and their Prometheus text exposition (format 0.0.4) for /metrics."""
from __future__ import annotations

import collections
import os
import threading
import time
from typing import Dict, Tuple

# generated tok/s is measured over the steps of this trailing window
RATE_WINDOW_S = 10.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def resident_bytes() -> int:
    """The process's resident set size now (Linux /proc/self/statm), 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Thread-safe counters: requests by endpoint and status, tokens, time to first token; the
    gauges (queue, slots, memory) are read when /metrics is scraped."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Dict[Tuple[str, int], int] = collections.Counter()
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self.generated_tokens = 0
        self.steps = 0
        self.step_seconds = 0.0
        self.first_token_seconds = 0.0
        self.first_tokens = 0
        self._recent = collections.deque()       # (time, generated tokens) of recent steps
        self.started = time.time()

    def on_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, int(status))] += 1

    def on_admit(self, job) -> None:
        with self._lock:
            self.prompt_tokens += job.record.prompt_tokens
            self.cached_prompt_tokens += job.record.cached_prompt_tokens

    def on_first_token(self, seconds: float) -> None:
        with self._lock:
            self.first_tokens += 1
            self.first_token_seconds += seconds

    def on_step(self, generated: int, seconds: float, steps: int = 1) -> None:
        """``steps`` forward steps (a solo run: several) that took ``seconds`` and drew ``generated`` tokens."""
        now = time.monotonic()
        with self._lock:
            self.steps += steps
            self.step_seconds += seconds
            self.generated_tokens += generated
            self._recent.append((now, generated))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def render(self, queue_length: int, busy_slots: int, n_slots: int, model_memory: Dict[str, int],
               model_name: str) -> str:
        """The exposition text: # HELP / # TYPE and one line per sample."""
        lines = []

        def metric(name: str, kind: str, help_text: str, samples):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value, *suffix in samples:     # suffix: "_sum" / "_count" of a summary
                sample = name + (suffix[0] if suffix else "")
                label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                lines.append(f"{sample}{{{label_text}}} {value}" if label_text else f"{sample} {value}")

        rate = self.tokens_per_second()
        with self._lock:
            requests = sorted(self.requests.items())
            counters = (self.prompt_tokens, self.cached_prompt_tokens, self.generated_tokens,
                        self.first_tokens, self.first_token_seconds, self.steps, self.step_seconds)
        prompt, cached, generated, n_first, first_s, steps, step_s = counters
        model = {"model": model_name}
        metric("lowbit_requests_total", "counter", "HTTP requests answered, by endpoint and status code",
               [({"endpoint": e, "status": s}, n) for (e, s), n in requests])
        metric("lowbit_prompt_tokens_total", "counter", "prompt tokens of admitted requests", [(model, prompt)])
        metric("lowbit_prompt_tokens_cached_total", "counter",
               "prompt tokens reused from a slot's KV cache (prefix reuse)", [(model, cached)])
        metric("lowbit_generated_tokens_total", "counter", "tokens sampled", [(model, generated)])
        metric("lowbit_time_to_first_token_seconds", "summary", "seconds from arrival to the first token",
               [(model, f"{first_s:.6f}", "_sum"), (model, n_first, "_count")])
        metric("lowbit_steps_total", "counter", "forward steps run (all slots together)", [(model, steps)])
        metric("lowbit_step_seconds_total", "counter", "seconds spent in forward steps", [(model, f"{step_s:.6f}")])
        metric("lowbit_generated_tokens_per_second", "gauge",
               f"tokens sampled per second over the last {RATE_WINDOW_S:g} s", [(model, f"{rate:.3f}")])
        metric("lowbit_queue_length", "gauge", "requests waiting for a slot", [(model, queue_length)])
        metric("lowbit_slots_busy", "gauge", "slots generating or prefilling", [(model, busy_slots)])
        metric("lowbit_slots", "gauge", "parallel slots (--parallel)", [(model, n_slots)])
        metric("lowbit_resident_memory_bytes", "gauge", "resident memory of the server process",
               [({}, resident_bytes())])
        metric("lowbit_model_memory_bytes", "gauge", "the model's memory by part (weights, KV cache, scratch)",
               [({"model": model_name, "part": part}, n) for part, n in sorted(model_memory.items())])
        return "\n".join(lines) + "\n"
