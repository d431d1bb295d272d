"""Run README.md's examples and report pass/fail: every line of a ```bash block that calls
`lowbit` (at its start or after a pipe) and every ```python block.

    python bench/run_readme_examples.py [--readme README.md] [--timeout 900] [--only REGEX] [--list]

Commands run as written, through bash, in a temporary working directory that holds calib.txt
and eval.txt (copies of repository text) with `lowbit` on PATH (this checkout's package), and
LOWBIT_HOME set to a temporary home whose models/ folder is the real model cache (so cached
models are reused and nothing else of the user's is touched). `lowbit chat` reads a short
scripted conversation from stdin. A line whose comment says `needs: X` is skipped when X
(llama-cpp-python, matplotlib) cannot be imported. Exit status 1 when any example failed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]


def package_parent() -> str:
    """The folder holding the lowbit this interpreter imports: the installed package (with its
    compiled core) under pip, the source tree's python/ in the developer loop."""
    spec = importlib.util.find_spec("lowbit")
    if spec is None or not spec.submodule_search_locations:
        return str(ROOT / "python")
    return str(Path(list(spec.submodule_search_locations)[0]).parent)
CHAT_INPUT = "Say hello in three words.\n/bye\n"
NEEDS = {"llama-cpp-python": "llama_cpp", "matplotlib": "matplotlib"}


def examples(readme: str) -> List[Tuple[str, str]]:
    """(kind, code) in README order: kind "bash" for one command line, "python" for a block."""
    out = []
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", readme, flags=re.S):
        if lang == "python":
            out.append(("python", body))
        elif lang == "bash":
            for line in body.splitlines():
                if re.match(r"\s*lowbit\b", line) or re.search(r"\|\s*lowbit\b", line):
                    out.append(("bash", line.strip()))
    return out


def missing_need(code: str) -> Optional[str]:
    m = re.search(r"#.*needs:\s*([\w.-]+)", code)
    if not m:
        return None
    need = m.group(1).rstrip(";,.")
    module = NEEDS.get(need, need)
    site = os.environ.get("LOWBIT_LLAMA_CPP_SITE")
    if module == "llama_cpp" and site and os.path.isdir(os.path.join(site, "llama_cpp")):
        return None
    return None if importlib.util.find_spec(module) else need


def workspace(tmp: Path) -> dict:
    """The temp home, bin/lowbit shim, text files; returns the environment to run in."""
    home = tmp / "home"
    home.mkdir()
    cache = Path(os.environ.get("LOWBIT_HOME", Path.home() / ".cache" / "lowbit")) / "models"
    cache.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(cache)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "lowbit"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lowbit "$@"\n')
    shim.chmod(0o755)
    shutil.copy(ROOT / "README.md", tmp / "calib.txt")
    texts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "python" / "lowbit").rglob("*.py"))]
    (tmp / "eval.txt").write_text("\n".join(texts)[:60000], encoding="utf-8")
    path_py = os.pathsep.join(filter(None, [package_parent(), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, LOWBIT_HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                PYTHONPATH=path_py, PYTHONUNBUFFERED="1")


def run_one(kind: str, code: str, cwd: Path, env: dict, timeout: float) -> Tuple[str, float, str]:
    need = missing_need(code)
    if need:
        return f"skipped (needs {need})", 0.0, ""
    if kind == "python":
        cmd = [sys.executable, "-c", code]
        stdin = ""
    else:
        cmd = ["bash", "-o", "pipefail", "-c", code]
        stdin = CHAT_INPUT if re.match(r"lowbit\s+chat\b", code) else ""
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"FAIL (timeout {timeout:.0f} s)", time.monotonic() - t0, ""
    secs = time.monotonic() - t0
    if r.returncode != 0:
        return f"FAIL (exit {r.returncode})", secs, (r.stderr or r.stdout).strip()[-600:]
    return "pass", secs, ""


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--timeout", type=float, default=900, help="seconds per example")
    ap.add_argument("--only", default=None, metavar="REGEX", help="run the examples that match")
    ap.add_argument("--list", action="store_true", help="list the examples, run nothing")
    args = ap.parse_args(argv)
    found = examples(Path(args.readme).read_text(encoding="utf-8"))
    if args.only:
        found = [(k, c) for k, c in found if re.search(args.only, c)]
    if args.list:
        for kind, code in found:
            print(f"[{kind}] {code.strip().splitlines()[0]}")
        return 0
    failed = skipped = 0
    with tempfile.TemporaryDirectory(prefix="lowbit-readme-") as tmp:
        env = workspace(Path(tmp))
        for kind, code in found:
            status, secs, detail = run_one(kind, code, Path(tmp), env, args.timeout)
            failed += status.startswith("FAIL")
            skipped += status.startswith("skipped")
            print(f"{status:<26} {secs:7.1f} s  [{kind}] {code.strip().splitlines()[0][:110]}", flush=True)
            if detail:
                print("    " + detail.replace("\n", "\n    "), flush=True)
    print(f"{len(found) - failed - skipped} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
