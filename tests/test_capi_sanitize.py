"""The C API under ThreadSanitizer (4 threads on 4 sessions of one model, a cancel from another
thread) and AddressSanitizer + UBSan + LeakSanitizer (the corrupt-file corpus, the API contracts,
an aborted prefill): bench/sanitize.sh capi, which fails on any report.

Two sanitizer builds of the core take minutes each on two cores, so this runs only with
LOWBIT_SANITIZE=1 (CI's default run leaves it out); it skips when gcc has no libtsan/libasan."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import lowbit

from _models import real_model_or_skip

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(os.environ.get("LOWBIT_SANITIZE") != "1",
                                reason="set LOWBIT_SANITIZE=1 to build the C API with TSan/ASan and run it (minutes)")


def sanitizer_runtime(name):
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    path = subprocess.run([gcc, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def test_c_api_has_no_sanitizer_report():
    if not (shutil.which("cmake") and shutil.which("ninja") and sanitizer_runtime("libtsan.so")
            and sanitizer_runtime("libasan.so")):
        pytest.skip("needs cmake, ninja and gcc's libtsan / libasan")
    real_model_or_skip("smollm2-135m-instruct")
    env = dict(os.environ, LOWBIT_PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(lowbit.__file__))))
    out = subprocess.run(["bash", str(ROOT / "bench" / "sanitize.sh"), "capi"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=7200)   # hang guard
    report = out.stdout[-4000:] + out.stderr[-8000:]
    assert out.returncode == 0, report
    assert "== tsan: no report" in out.stdout and "== asan: no report" in out.stdout, report
    assert "WARNING: ThreadSanitizer" not in out.stderr and "ERROR: AddressSanitizer" not in out.stderr, report
