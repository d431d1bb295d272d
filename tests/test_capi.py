"""The C API (include/lowbit.h): liblowbit.so built with CMake (-DLOWBIT_C_API=ON), a C99
program compiled against the header and run on the real models; its ids, round trip and seeded
draws equal the Python API's. Skips without cmake, a C compiler or pybind11's CMake files."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lowbit
from lowbit.runtime.sampling import Sampler, SamplingParams
from lowbit.runtime.tokenizer import Tokenizer

from _models import real_model_path

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Hello <|im_end|> wörld 🙂\n\n  12345 don't<start_of_turn>user\n漢字 ¿qué?\t"


def pybind11_cmake_dir():
    try:
        return subprocess.run([sys.executable, "-m", "pybind11", "--cmakedir"], capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    pb = pybind11_cmake_dir()
    if not (shutil.which("cmake") and cc and pb and (ROOT / "include" / "lowbit.h").is_file()):
        pytest.skip("needs cmake, a C compiler, pybind11's CMake files and the source tree")
    build = tmp_path_factory.mktemp("capi")
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DLOWBIT_CUDA=OFF", "-DLOWBIT_C_API=ON",
                    "-DCMAKE_BUILD_TYPE=Release", f"-Dpybind11_DIR={pb}"], check=True, capture_output=True, timeout=600)
    subprocess.run(["cmake", "--build", str(build), "--target", "lowbit", "-j2"], check=True, capture_output=True,
                   timeout=1200)
    lib = next(build.glob("liblowbit.so*"))
    exe = build / "tokenize_sample"
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-I", str(ROOT / "include"),
                    str(ROOT / "tests" / "capi" / "tokenize_sample.c"), "-L", str(lib.parent), "-llowbit",
                    f"-Wl,-rpath,{lib.parent}", "-o", str(exe)], check=True, capture_output=True, timeout=300)
    return exe


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_c_program_equals_python(program, name, tmp_path):
    path = real_model_path(name)
    if path is None:
        pytest.skip(f"real model {name} not available")
    text_file = tmp_path / "text.txt"
    text_file.write_bytes(TEXT.encode())
    run = subprocess.run([str(program), path, str(text_file), "1234"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    tok = Tokenizer.from_metadata(lowbit.GGUFFile(path).metadata)
    assert [int(t) for t in lines["ids"].split(",")] == tok.encode(TEXT, add_special=True, parse_special=True)
    assert lines["roundtrip"] == "1"
    logits = np.array([(i * 7919 % 1000) / 100.0 - 5.0 for i in range(5000)], dtype=np.float32)
    sampler = Sampler(SamplingParams(seed=1234, repetition_penalty=1.3, repeat_last_n=8))
    history = []
    for _ in range(64):
        history.append(sampler.sample(logits, history))
    assert [int(t) for t in lines["draws"].split(",")] == history
    assert lines["bad_params"].startswith("1 top_p must be in (0, 1], got 2")
    assert lines["bad_file"] == "2 1"
