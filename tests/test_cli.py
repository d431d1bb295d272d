"""The CLI's process-level contract, through real `python -m lowbit ...` subprocesses: closed
pipes, the exit-status rule (0 / 2 / 130 / 1), run's MODEL/PROMPT rule, flag validation before
loading, one-line warnings and file-argument errors. Real-model parts use smollm2-135m-instruct
(skipped when it is not available). Timeouts are hang guards only."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lowbit import load
from _models import real_model_or_skip, real_model_path

MODEL = "smollm2-135m-instruct"
HANG_GUARD = 120


@pytest.fixture(scope="module")
def model_path():
    return real_model_or_skip(MODEL)


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, LOWBIT_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")


@pytest.fixture
def cached_env(model_path):
    """LOWBIT_HOME whose models/ holds the real model, so registry names resolve offline."""
    if os.path.basename(os.path.dirname(model_path)) != "models" or not model_path.endswith(f"{MODEL}.gguf"):
        pytest.skip(f"{MODEL} is not in a lowbit cache folder")
    return dict(os.environ, LOWBIT_HOME=os.path.dirname(os.path.dirname(model_path)), PYTHONUNBUFFERED="1")


def lowbit(*args):
    return [sys.executable, "-m", "lowbit", *args]


def run_cli(env, *args, input=None, timeout=HANG_GUARD):
    return subprocess.run(lowbit(*args), env=env, capture_output=True, text=True, timeout=timeout,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # a parent that ignores SIGINT would pass that on


@pytest.fixture
def procs():
    """Popen objects to kill at the end of the test (a hang guard that fired leaves one running)."""
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def spawn(procs, env, *args, stdin=subprocess.DEVNULL):
    p = subprocess.Popen(lowbit(*args), env=env, stdin=stdin, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=_default_sigint)
    procs.append(p)
    return p


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


# ---- closed pipes --------------------------------------------------------------------------

def test_list_into_a_closed_pipe_is_quiet(env, procs):
    p = spawn(procs, env, "list", "--json")
    p.stdout.close()                             # the reader is gone before lowbit writes
    err = p.stderr.read().decode()
    assert p.wait(timeout=HANG_GUARD) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err and err == ""


def test_run_into_a_closed_pipe_stops_the_generation(model_path, env, procs):
    p = spawn(procs, env, "run", model_path, "Write a long essay about Rome", "-n", "2000", "-q", "-t", "2",
              "--ctx", "4096")
    head = p.stdout.read(40)                     # as `| head -c 40`
    p.stdout.close()
    t0 = time.monotonic()
    rc = p.wait(timeout=HANG_GUARD)              # before the fix: hung here for good
    err = p.stderr.read().decode()
    assert len(head) == 40 and rc == 0, (rc, err)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert time.monotonic() - t0 < 60            # cancelled, not 2000 tokens written into the void


# ---- exit status ---------------------------------------------------------------------------

def test_ctrl_c_during_run_exits_130(model_path, env, procs):
    p = spawn(procs, env, "run", model_path, "Write a long essay about Rome", "-n", "2000", "-q", "-t", "2",
              "--ctx", "4096")
    assert p.stdout.read(20)                     # generating
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=HANG_GUARD)
    err = p.stderr.read().decode()
    assert rc == 130, (rc, err)
    assert "interrupted" in err and "Traceback" not in err


def test_ctrl_c_during_bench_exits_130(model_path, env, procs):
    p = spawn(procs, env, "bench", model_path, "-p", "256", "-n", "256", "-r", "50", "-t", "1")
    p.stderr.readline()                          # the first progress line: the benchmark runs
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=HANG_GUARD)
    assert rc == 130, (rc, p.stderr.read().decode())


def test_usage_errors_exit_2_and_argparse_too(env):
    for r in (run_cli(env, "run", "--ctx", "-5", "hi"), run_cli(env, "frobnicate")):
        assert r.returncode == 2 and "Traceback" not in r.stderr      # argparse: usage line + error
    assert "--ctx: must be a positive integer" in run_cli(env, "run", "--ctx", "-5", "hi").stderr


# ---- run's arguments ---------------------------------------------------------------------------

def test_lone_model_argument_reads_the_prompt_from_stdin(model_path, env):
    r = run_cli(env, "run", model_path, "--raw", "-n", "4", "--temperature", "0", "-q", "-t", "2",
                input="The capital of France is")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_act_precision_flag_reaches_the_engine(model_path, env):
    """--act-precision q8: the engine computes on 8-bit activations (its own report, in --json),
    and the greedy tokens are those of a model loaded with act_precision="q8"; a bad value is a
    usage error."""
    prompt = "The three primary colours are"
    r = run_cli(env, "run", model_path, prompt, "--raw", "-n", "12", "--temperature", "0", "-q", "-t", "2",
                "--repeat-penalty", "1.0", "--json", "--act-precision", "q8")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    with load(model_path, n_ctx=512, n_threads=2, act_precision="q8") as m:
        want = m.generate(prompt, max_new_tokens=12, temperature=0, repetition_penalty=1.0)
    assert out["act_precision"] == "q8" and out["tokens"] == want.tokens
    bad = run_cli(env, "run", model_path, prompt, "--act-precision", "fp8")
    assert bad.returncode == 2 and "--act-precision" in bad.stderr and "Traceback" not in bad.stderr


def test_lone_model_argument_on_a_terminal_says_how_to_pass_a_prompt(cached_env):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "lowbit", "run", MODEL], env=cached_env,
                          encoding="utf-8", timeout=HANG_GUARD)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
    assert "no prompt" in child.before and f"lowbit run {MODEL}" in child.before


def test_unknown_model_like_word_is_an_error_without_far_fetched_suggestions(env):
    r = run_cli(env, "run", "llama3-8b")
    one_line_error(r, "unknown model 'llama3-8b'", "as the prompt")
    assert "did you mean" not in r.stderr
    r = run_cli(env, "run", "smollm2-135m-instrct", "hi")
    one_line_error(r, "did you mean smollm2-135m-instruct")


def test_a_plain_word_is_a_prompt_for_the_default_model(cached_env):
    r = run_cli(cached_env, "run", "hello", "-n", "2", "-q", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


@pytest.mark.parametrize("flag,value", [("--top-p", "2"), ("--top-k", "-3"), ("--min-p", "5"),
                                        ("--repeat-penalty", "0")])
def test_sampling_flags_are_checked_before_loading(env, tmp_path, flag, value):
    missing = str(tmp_path / "not-there.gguf")       # loading it would fail: the flag must be seen first
    r = run_cli(env, "run", missing, "hi", flag, value)
    one_line_error(r, f"{flag} {value}:")
    assert "no such file" not in r.stderr and "SamplingParams(" not in r.stderr


# ---- warnings, files, loading --------------------------------------------------------------------

def test_context_beyond_training_warns_in_one_line(model_path, env):
    r = run_cli(env, "run", model_path, "hi", "--ctx", "9000", "-n", "1", "-t", "2")
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "warning" in ln.lower()]
    assert warn and all(ln.startswith("lowbit: warning: ") for ln in warn), r.stderr
    assert "UserWarning" not in r.stderr and ".py:" not in r.stderr


def test_load_line_names_its_unit(model_path, env):
    r = run_cli(env, "run", model_path, "hi", "-n", "1", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert "loaded in " in r.stderr and "(100 in" not in r.stderr, r.stderr


def test_file_arguments_are_named(env, tmp_path):
    one_line_error(run_cli(env, "perplexity", str(tmp_path / "m.gguf"), "--text", "/missing"),
                   "lowbit: error: --text: no such file: /missing")
    one_line_error(run_cli(env, "quantize", str(tmp_path / "in.gguf"), str(tmp_path / "o.gguf"),
                           "--type", "Q8_0"), "IN: no such file")


def test_imatrix_output_needs_a_known_suffix_before_any_work(env, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("some text " * 50)
    out = tmp_path / "x.txt"
    r = run_cli(env, "imatrix", str(tmp_path / "no-model.gguf"), "--text", str(text), "-o", str(out))
    one_line_error(r, "-o ", ".gguf or .dat")
    assert not out.exists()


def test_quantize_takes_a_registry_name(cached_env, tmp_path):
    out = tmp_path / "smollm2-f16.gguf"
    r = run_cli(cached_env, "quantize", MODEL, str(out), "--type", "F16", "-q", "-t", "2", timeout=600)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 100e6


# ---- the README's examples (the full run: python bench/run_readme_examples.py) ---------------

def test_readme_python_block_and_cheap_commands_run_as_written(model_path, tmp_path):
    import importlib.util
    from lowbit.runtime import registry
    if registry.cached_path(MODEL) is None:
        pytest.skip(f"{MODEL} is not in the lowbit cache (the README examples name it)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("run_readme_examples",
                                                  os.path.join(root, "bench", "run_readme_examples.py"))
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        found = runner.examples(f.read())
    chosen = [(k, c) for k, c in found if k == "python" or c.startswith("lowbit list")
              or c.startswith("echo ")]
    assert len(chosen) == 4, chosen   # 2 python blocks (use it; structured output and tools)
    env = runner.workspace(tmp_path)
    for kind, code in chosen:
        status, _, detail = runner.run_one(kind, code, tmp_path, env, timeout=HANG_GUARD)
        assert status == "pass", (code, status, detail)


def test_chat_reads_a_piped_conversation(model_path, env):
    r = run_cli(env, "chat", model_path, "-n", "8", "-t", "2", "--ctx", "1024",
                input="Say hello.\n/show\n/bye\n")
    assert r.returncode == 0, r.stderr
    assert "parameters" in r.stdout and "Traceback" not in r.stderr


def test_chat_into_a_closed_pipe_exits(model_path, env, procs):
    p = spawn(procs, env, "chat", model_path, "-n", "2000", "-t", "2", "--ctx", "4096", stdin=subprocess.PIPE)
    p.stdin.write(b"Write a very long story about a dragon.\n")
    p.stdin.flush()
    assert p.stdout.read(200)                    # the banner and the reply streaming
    p.stdout.close()
    rc = p.wait(timeout=HANG_GUARD)              # a reply left holding the model's lock hung here
    err = p.stderr.read().decode()
    assert rc == 0 and "Traceback" not in err, (rc, err)


def test_bench_warns_when_the_load_average_exceeds_its_threads():
    from lowbit.runtime.bench import busy_warning
    msg = busy_warning(2, load1=3.5)
    assert "load average 3.5" in msg and "2 threads" in msg and "\n" not in msg
    assert busy_warning(2, load1=1.9) is None
    assert busy_warning(4096) is None                # no machine here is that loaded
