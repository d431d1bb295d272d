"""`lowbit chat` through a real pseudo-terminal, and `lowbit run` / `bench` / errors, on the
real SmolLM2 model (skipped when it is not available)."""
import json
import os
import subprocess
import sys

import pytest

from _models import real_model_or_skip, real_model_path

pexpect = pytest.importorskip("pexpect")

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def model_path():
    return real_model_or_skip(MODEL)


def lowbit_cmd(*args):
    return [sys.executable, "-m", "lowbit", *args]


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, LOWBIT_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1", TERM="dumb")
    return e


def spawn_chat(model_path, env, *extra):
    cmd = lowbit_cmd("chat", model_path, "--threads", "2", "--temperature", "0", "--ctx", "1024", *extra)
    child = pexpect.spawn(cmd[0], cmd[1:], env=env, encoding="utf-8", timeout=60, dimensions=(40, 200))
    child.expect(">>> ")
    return child


def command(child, line, pattern):
    """Send a /command, expect its answer, and wait for the next prompt."""
    child.sendline(line)
    child.expect(pattern)
    match = child.match
    child.expect(">>> ")
    return match


def test_repl_session(model_path, env, tmp_path):
    # no repetition penalty: turn 2 asks the model to repeat a word of turn 1
    child = spawn_chat(model_path, env, "-n", "24", "--repeat-penalty", "1.0")
    assert "smollm2-135m-instruct.gguf" in child.before and "kernels" in child.before
    # turn 1
    child.sendline("What is the capital of France? Answer in one word.")
    child.expect(">>> ")
    assert "Paris" in child.before
    # /set and a bad value
    command(child, "/set temperature 0.5", r"\(set temperature = 0.5\)")
    command(child, "/set top_p 7", "not set: top_p must be in")
    command(child, "/set temperature 0", r"\(set temperature = 0.0\)")
    # /stats after a reply
    command(child, "/stats", r"reply\s+\d+ tokens, [\d.]+ tok/s")
    # multi-line input, and the conversation is kept (turn 2 reuses the cached prefix)
    child.sendline('"""')
    child.sendline("Repeat the word you just said,")
    child.sendline('then stop."""')
    child.expect(">>> ")
    assert "Paris" in child.before
    m = command(child, "/stats", r"\((\d+) reused from cache\)")
    assert int(m.group(1)) > 10
    # /save, /clear, /load
    conv = tmp_path / "conv.json"
    command(child, f"/save {conv}", r"\(saved 4 messages")
    command(child, "/clear", r"\(new conversation\)")
    command(child, f"/load {conv}", r"\(loaded 4 messages")
    assert [m["role"] for m in json.loads(conv.read_text())["messages"]] == ["user", "assistant"] * 2
    command(child, "/frobnicate", "unknown command '/frobnicate'")
    # Ctrl+C at an empty prompt says how to exit
    child.sendintr()
    child.expect(r"use /bye or Ctrl\+D to exit")
    # Ctrl+D exits cleanly
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "home" / "chat_history").exists()


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(model_path, env):
    child = spawn_chat(model_path, env, "-n", "400")
    child.sendline("Write a very long story about a dragon who learns to bake bread.")
    child.expect("bake bread.\r\n")          # our own line echoed back
    child.expect(r"\w+ \w+ \w+ \w+")        # then the reply streams
    child.sendintr()
    child.expect(r"\[interrupted\]")
    child.expect(">>> ")
    command(child, "/set max_tokens 8", r"\(set max_tokens = 8\)")
    child.sendline("Say hello.")
    child.expect(">>> ")
    assert child.before.strip()
    child.sendline("/bye")
    child.expect(pexpect.EOF)


def test_run_json_and_stdin(model_path, env):
    out = subprocess.run(lowbit_cmd("run", model_path, "Name a color.", "--json", "-n", "6", "--temperature", "0",
                                    "--threads", "2"), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert rec["finish_reason"] in ("length", "eos", "stop") and rec["generated_tokens"] <= 6
    assert rec["prompt_tokens"] > 3 and rec["text"] and rec["chat_template"] is True
    assert rec["decode_tok_s"] >= 0 and rec["peak_memory_bytes"] > 0
    out2 = subprocess.run(lowbit_cmd("run", model_path, "-", "--raw", "-n", "4", "--temperature", "0", "-q"),
                          input="The capital of France is", env=env, capture_output=True, text=True, timeout=120)
    assert out2.returncode == 0, out2.stderr
    assert "Paris" in out2.stdout


def test_bench_json(model_path, env):
    out = subprocess.run(lowbit_cmd("bench", model_path, "-p", "16", "-n", "4", "-r", "2", "-t", "2", "--json"),
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)[0]
    tests = {t["test"]: t for t in rep["tests"]}
    assert set(tests) == {"pp16", "tg4"}
    assert all(len(t["tok_s"]) == 2 and t["mean"] > 0 for t in tests.values())
    assert rep["runtimes"]["lowbit"]["load_seconds"] > 0 and rep["n_params"] > 100e6


def run_cli(env, *args, timeout=120):
    return subprocess.run(lowbit_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def test_errors_are_one_line_exit_2(model_path, env, tmp_path):
    r = run_cli(env, "run", "smollm2-135m-instrct", "hi")
    assert r.returncode == 2 and "did you mean smollm2-135m-instruct" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli(env, "run", str(tmp_path / "missing.gguf"), "hi")
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(env, "run", model_path, "hi", "--ctx", "100000000", "-q")
    assert r.returncode == 2 and "largest context that fits" in r.stderr and r.stderr.count("\n") == 1
    sys.path.insert(0, os.path.dirname(__file__))
    from model_factory import default_spec, write_tiny_model
    tiny = tmp_path / "tiny.gguf"
    write_tiny_model(tiny, default_spec("llama", "F32"))
    raw = bytearray(tiny.read_bytes())
    i = raw.find(b"llama", raw.find(b"general.architecture"))
    raw[i:i + 5] = b"mamba"                      # same length: the file stays valid GGUF
    bad = tmp_path / "mamba.gguf"
    bad.write_bytes(bytes(raw))
    r = run_cli(env, "run", str(bad), "hi", "-q")
    assert r.returncode == 2 and "mamba" in r.stderr and "llama" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli(env, "run", str(bad), "hi", "-q", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_repl_settings_load_show_and_limits(model_path, env, tmp_path):
    child = spawn_chat(model_path, env, "-n", "3")
    child.sendline("/show")
    child.expect(r"parameters  .*\r\n")
    assert "system      (none)" in child.before and "None" not in child.before
    child.expect(">>> ")
    command(child, "/set parameter top_k 10", r"\(set top_k = 10\)")
    command(child, "/set repeat_penalty 1.2", r"\(set repetition_penalty = 1.2\)")
    command(child, "/set repeat_last_n 32", r"\(set repeat_last_n = 32\)")
    command(child, "/set temperature 0.3", r"\(set temperature = 0.3\)")
    conv = tmp_path / "conv.json"
    command(child, f"/save {conv}", r"\(saved 0 messages")
    command(child, "/set temperature 0.9", r"\(set temperature = 0.9\)")
    command(child, f"/load {conv}", r"\(loaded 0 messages")
    command(child, "/show", r"parameters  .*temperature=0.3,")
    child.sendline("Tell me a long story about a cat.")
    child.expect(r"\[reply cut: max tokens\]")
    child.expect(">>> ")
    command(child, "/set verbose", r"\(verbose on\)")
    child.sendline("And a dog?")
    child.expect(r"reply\s+\d+ tokens, [\d.]+ tok/s")
    child.expect(">>> ")
    command(child, "/set num_ctx 512", r"\(set num_ctx = 512; model reloaded")
    command(child, "/show", r"context     512 tokens")
    child.sendline("/bye")
    child.expect(pexpect.EOF)


def test_keys_typed_during_a_reply_are_not_echoed_nor_kept(model_path, env):
    child = spawn_chat(model_path, env, "-n", "80")
    child.sendline("Write a story about a lighthouse keeper.")
    child.expect("keeper.\r\n")              # our own line echoed back
    child.expect(r"\w+ \w+ \w+")             # the reply streams
    child.send("zzqq")                       # typed while the reply streams
    child.expect(">>> ")
    assert "zzqq" not in child.before
    command(child, "/show", r"parameters  ")   # would read 'zzqq/show' if the keys were kept
    assert "zzqq" not in child.before and "unknown command" not in child.before
    child.sendline("/bye")
    child.expect(pexpect.EOF)
