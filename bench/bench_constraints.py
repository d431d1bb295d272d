"""Cost of constrained decoding: decode tok/s with and without each constraint (any JSON
object, a nested JSON schema, a regular expression), in the same run on both real models,
and the mask time per token (computed by llguidance in a worker thread while the engine
evaluates; "wait" is the part the sampler still waits for; "sample" is sampling on the allowed
tokens, gather and Sampler.sample together).

    python bench/bench_constraints.py [--threads 2] [-r 3] [-n 96] [--json bench/results/constraints.json]

Runs are interleaved (each repetition runs every configuration once) so that load drift hits
them alike; the table shows medians. The target of issue 15: at most 10% of decode tok/s lost
with the nested schema. The load average is printed with the table: on a shared machine the
spread between repetitions is the figure's error bar."""
import argparse
import json
import os
import statistics
import sys

import lowbit
from lowbit.runtime import registry

MODELS = ["smollm2-135m-instruct", "gemma3-270m"]
NESTED_SCHEMA = {
    "type": "object",
    "properties": {
        "people": {"type": "array", "minItems": 4, "maxItems": 6, "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 24},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "role": {"type": "string", "enum": ["engineer", "doctor", "artist", "teacher"]},
                "address": {"type": "object", "properties": {
                    "city": {"type": "string", "maxLength": 24},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False}},
            "required": ["name", "age", "role", "address"], "additionalProperties": False}}},
    "required": ["people"], "additionalProperties": False}
CONSTRAINTS = {
    "none": {},
    "json": {"json": True},
    "nested schema": {"json_schema": NESTED_SCHEMA},
    "regex": {"regex": r"( [0-9]{4}-[0-9]{2}-[0-9]{2},){40}"},
}
PROMPT = "Here is a JSON list of people with their name, age, role and address:"


def bench_model(name: str, reps: int, n_gen: int, threads: int) -> dict:
    m = lowbit.load(str(registry.resolve(name)), n_ctx=1024, n_threads=threads)
    built = {label: (lowbit.Constraint.for_model(m, **kw) if kw else None) for label, kw in CONSTRAINTS.items()}
    rates = {label: [] for label in CONSTRAINTS}
    tokens = {label: [] for label in CONSTRAINTS}
    for rep in range(reps):
        for label, constraint in built.items():
            g = m.generate(PROMPT, max_new_tokens=n_gen, temperature=1.0, seed=rep, constraint=constraint)
            rates[label].append(g.decode_tok_s)
            tokens[label].append(g.generated_tokens)
    base = statistics.median(rates["none"])
    rows = []
    for label, constraint in built.items():
        tok_s = statistics.median(rates[label])
        row = {"model": name, "constraint": label, "decode_tok_s": round(tok_s, 2),
               "spread_tok_s": [round(min(rates[label]), 2), round(max(rates[label]), 2)],
               "tokens_mean": round(statistics.mean(tokens[label]), 1),
               "lost_pct": round(100 * (1 - tok_s / base), 1) if base else None}
        if constraint is not None:
            st = constraint.stats
            row.update(mask_ms=round(1e3 * st.mask_seconds / max(st.masks, 1), 3),
                       wait_ms=round(1e3 * st.wait_seconds / max(st.masks, 1), 3),
                       sample_ms=round(1e3 * st.sample_seconds / max(st.masks, 1), 3))
        rows.append(row)
    m.close()
    return {"model": name, "n_vocab": m.tokenizer.vocab_size, "rows": rows}


def format_table(reports) -> str:
    head = (f"{'model':<24}{'constraint':<15}{'tok/s':>8}{'spread':>16}{'lost':>8}{'tokens':>8}"
            f"{'mask ms':>9}{'wait ms':>9}{'sample ms':>10}")
    lines = [head, "-" * len(head)]
    for rep in reports:
        for r in rep["rows"]:
            spread = f"{r['spread_tok_s'][0]:.1f}-{r['spread_tok_s'][1]:.1f}"
            lost = "" if r["constraint"] == "none" else f"{r['lost_pct']:.1f}%"
            ms = "".join(f"{r[k]:>{w}.3f}" if k in r else " " * w
                         for k, w in (("mask_ms", 9), ("wait_ms", 9), ("sample_ms", 10)))
            lines.append(f"{r['model']:<24}{r['constraint']:<15}{r['decode_tok_s']:>8.1f}{spread:>16}{lost:>8}"
                         f"{r['tokens_mean']:>8.1f}{ms}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-r", type=int, default=3, help="repetitions (interleaved)")
    ap.add_argument("-n", type=int, default=96, help="most tokens per generation")
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--json", help="write the reports to this file")
    args = ap.parse_args()
    load_before = os.getloadavg()
    reports = [bench_model(name, args.r, args.n, args.threads) for name in args.models]
    load_after = os.getloadavg()
    print(format_table(reports))
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); "
          f"{os.cpu_count()} CPUs; llguidance {lowbit.runtime.constraints._llguidance().__version__}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reports": reports, "load_before": load_before, "load_after": load_after}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
