"""`lowbit bench`'s roofline report through the real CLI on tiny models: the weight bytes one
decode step reads (recomputed here from the file's tensor list with gguf's reader), the read
bandwidth of the run and tg as a fraction of bandwidth / bytes, in the JSON record and the table.
Timeouts are hang guards only."""
import json
import os
import subprocess
import sys

import gguf
import pytest

import lowbit
import model_factory as mf

HANG_GUARD = 300


def bench_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(lowbit.__file__)))
    return subprocess.run([sys.executable, "-m", "lowbit", "bench", *args], env=env, capture_output=True,
                          text=True, timeout=HANG_GUARD, stdin=subprocess.DEVNULL)


def bytes_read_per_token(path: str) -> int:
    """Independent of lowbit: every tensor once, except token_embd (one row of n_vocab unless no
    output.weight makes it the head) and stacked experts (n_expert_used of n_expert)."""
    r = gguf.GGUFReader(path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    field = r.fields.get(f"{arch}.expert_count")
    n_expert = int(field.parts[-1][0]) if field else 0
    n_used = int(r.fields[f"{arch}.expert_used_count"].parts[-1][0]) if n_expert else 0
    names = {t.name for t in r.tensors}
    total = 0.0
    for t in r.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            total += int(t.n_bytes) / int(t.shape[1])         # ne = [n_embd, n_vocab]
        elif "_exps." in t.name:
            total += int(t.n_bytes) * n_used / n_expert
        else:
            total += int(t.n_bytes)
    return int(round(total))


@pytest.mark.parametrize("arch, weight_type, overrides", [
    ("llama", "Q4_K", dict(tied=True)),                    # the head is token_embd: read whole
    ("qwen2", "Q8_0", dict(tied=False)),                   # one embedding row, output.weight whole
    ("qwen3moe", "Q4_0", dict()),                          # 2 of the experts per token
], ids=["tied", "untied", "moe"])
def test_bench_json_reports_the_decode_roofline(tmp_path, arch, weight_type, overrides):
    path = mf.write_default_model(tmp_path / f"{arch}.gguf", arch, weight_type, **overrides)
    r = bench_cli(path, "-p", "16", "-n", "8", "-r", "2", "-t", "1", "--json")
    assert r.returncode == 0, r.stderr
    (report,) = json.loads(r.stdout)
    roof = report["roofline"]
    expected = bytes_read_per_token(path)
    assert roof["decode_bytes_per_token"] == expected
    total = sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)
    assert (expected == total) == (arch == "llama")         # the rule did drop something where it should
    probes = roof["read_bandwidth_measured_gbs"]
    assert len(probes) == 2 + 2 and min(probes) > 0          # before, after the warm-up, after each of -r 2
    assert roof["read_bandwidth_gbs"] == max(probes)
    tg = next(t for t in report["tests"] if t["test"] == "tg8" and t["runtime"] == "lowbit")
    assert tg["mean"] > 0 and len(tg["tok_s"]) == 2
    assert roof["tg_fraction"]["lowbit"] == pytest.approx(tg["mean"] * expected / (roof["read_bandwidth_gbs"] * 1e9),
                                                          rel=1e-12)
    # Each repetition against the larger probe on either side of it; the median of the two.
    paired = [tok_s * expected / (max(probes[k + 1], probes[k + 2]) * 1e9) for k, tok_s in enumerate(tg["tok_s"])]
    assert roof["tg_fraction_paired_reps"]["lowbit"] == pytest.approx(paired, rel=1e-12)
    assert roof["tg_fraction_paired"]["lowbit"] == pytest.approx(sum(paired) / 2, rel=1e-12)
    assert roof["tg_fraction_paired"]["lowbit"] >= roof["tg_fraction"]["lowbit"] * (1 - 1e-12)
    assert roof["roofline_tok_s"] == pytest.approx(roof["read_bandwidth_gbs"] * 1e9 / expected, rel=1e-12)


def test_bench_table_prints_the_roofline(tmp_path):
    path = mf.write_default_model(tmp_path / "llama.gguf", "llama", "Q8_0")
    r = bench_cli(path, "-p", "16", "-n", "8", "-r", "1", "-t", "1")
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0]
    assert [c.strip() for c in header.split("|")[-3:-1]] == ["of roofline, paired", "of roofline"]
    tg_row = next(line for line in r.stdout.splitlines() if "| tg8 |" in line)
    pp_row = next(line for line in r.stdout.splitlines() if "| pp16 |" in line)
    assert float(tg_row.split("|")[-2]) > 0 and pp_row.split("|")[-2].strip() == ""
    # The paired limit is one of the run's probes, never above the best of them.
    assert float(tg_row.split("|")[-3]) >= float(tg_row.split("|")[-2]) and pp_row.split("|")[-3].strip() == ""
    line = next(line for line in r.stdout.splitlines() if "a decode step reads" in line)
    assert "read bandwidth" in line and "GB/s" in line and "roofline" in line and "tok/s" in line
