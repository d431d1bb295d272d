"""The C API's own builds of the core, each minutes on two cores, so they run only with
LOWBIT_CAPI_BUILDS=1 (CI's default run leaves them out):

- bench/sanitize.sh capi: ThreadSanitizer (4 threads on 4 sessions of one model, a cancel from
  another thread) and AddressSanitizer + UBSan + LeakSanitizer (the corrupt-file corpus, the API
  contracts, an aborted prefill); fails on any report. Skips when gcc has no libtsan/libasan.
- the standalone CMake build without Python (-DLOWBIT_PYTHON=OFF), installed to a prefix, then
  examples/c/simple.c built by a CMake project through find_package(lowbit) and by cc through
  pkg-config, and run."""
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

import lowbit

from _models import real_model_or_skip

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(os.environ.get("LOWBIT_CAPI_BUILDS") != "1",
                                reason="set LOWBIT_CAPI_BUILDS=1 for the C API's sanitizer and standalone builds (minutes)")


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


CONSUMER = textwrap.dedent("""
    cmake_minimum_required(VERSION 3.18)
    project(consumer C)
    find_package(lowbit 0.1 REQUIRED)
    add_executable(simple {simple})
    target_link_libraries(simple PRIVATE lowbit::lowbit)
    target_compile_options(simple PRIVATE -std=c99 -Wall -Wextra -Werror)
""")


def test_standalone_install_with_cmake_package_and_pkg_config(tmp_path):
    if not (shutil.which("cmake") and shutil.which("ninja") and shutil.which("pkg-config") and shutil.which("cc")):
        pytest.skip("needs cmake, ninja, pkg-config and cc")
    model = real_model_or_skip("smollm2-135m-instruct")
    build, prefix = tmp_path / "build", tmp_path / "prefix"

    def sh(*args, env=None):
        out = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=3600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out

    sh("cmake", "-S", ROOT, "-B", build, "-G", "Ninja", "-DLOWBIT_PYTHON=OFF", "-DLOWBIT_CUDA=OFF",
       "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_INSTALL_PREFIX={prefix}")
    sh("cmake", "--build", build, "-j2")
    sh("cmake", "--install", build)
    libdir = next(p.parent for p in prefix.rglob("liblowbit.so"))
    assert (prefix / "include" / "lowbit.h").is_file()
    assert not list(build.glob("_core*"))                       # no Python module in this build

    consumer = tmp_path / "consumer"
    consumer.mkdir()
    (consumer / "CMakeLists.txt").write_text(CONSUMER.format(simple=ROOT / "examples" / "c" / "simple.c"))
    sh("cmake", "-S", consumer, "-B", consumer / "build", "-G", "Ninja", f"-DCMAKE_PREFIX_PATH={prefix}")
    sh("cmake", "--build", consumer / "build")
    env = dict(os.environ, PKG_CONFIG_PATH=str(libdir / "pkgconfig"))
    flags = sh("pkg-config", "--cflags", "--libs", "lowbit", env=env).stdout.split()
    sh("cc", "-std=c99", "-Wall", "-Werror", ROOT / "examples" / "c" / "simple.c", *flags, f"-Wl,-rpath,{libdir}",
       "-o", tmp_path / "simple_pc")
    run_env = dict(os.environ, LD_LIBRARY_PATH=str(libdir))
    a = sh(consumer / "build" / "simple", model, "Say hi.", 8, env=run_env)
    b = sh(tmp_path / "simple_pc", model, "Say hi.", 8)
    assert a.stdout == b.stdout and len(a.stdout) > 1 and "memory: weights" in a.stderr
