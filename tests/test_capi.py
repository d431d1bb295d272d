"""The C API (include/lowbit.h) as installed with the package (lowbit.get_include(),
lowbit.get_library()): C99 programs compiled against the installed header and library and run
on the real models; the tokenizer's ids, round trip and seeded draws equal the Python API's.
compile_c() is shared by tests/test_capi_*.py. Skips only without a C compiler."""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import lowbit
from lowbit.runtime.sampling import Sampler, SamplingParams
from lowbit.runtime.tokenizer import Tokenizer

from _models import real_model_path

SOURCES = Path(__file__).resolve().parent / "capi"     # the test programs (tests/capi/*.c)
TEXT = "Hello <|im_end|> wörld 🙂\n\n  12345 don't<start_of_turn>user\n漢字 ¿qué?\t"


def compile_c(source, exe, std="c99", extra=()):
    """Compile and link `source` against the imported lowbit's installed C API, -Wall -Werror."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler")
    include, library = lowbit.get_include(), lowbit.get_library()
    libdir = os.path.dirname(library)
    run = subprocess.run([cc, f"-std={std}", "-Wall", "-Wextra", "-Werror", "-I", include, str(source), *extra,
                          "-L", libdir, "-llowbit", f"-Wl,-rpath,{libdir}", "-pthread", "-o", str(exe)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return exe


def test_installed_header_and_library_are_found():
    include, library = lowbit.get_include(), lowbit.get_library()
    assert os.path.isfile(os.path.join(include, "lowbit.h"))
    assert os.path.basename(library) == "liblowbit.so" and os.path.isfile(library)
    # installed beside the imported package (not taken from a source tree elsewhere)
    assert os.path.dirname(os.path.dirname(library)) == os.path.dirname(os.path.abspath(lowbit.__file__))


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return compile_c(SOURCES / "tokenize_sample.c", tmp_path_factory.mktemp("capi") / "tokenize_sample")


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
    sampler = Sampler(SamplingParams(seed=1234, repetition_penalty=1.3, repeat_last_n=8, presence_penalty=0.7,
                                     frequency_penalty=0.4, logit_bias={3: 2.5, 11: -1.0}))
    history = []
    for _ in range(64):
        history.append(sampler.sample(logits, history))
    assert [int(t) for t in lines["draws_openai"].split(",")] == history
    assert lines["openai_after_draw"] == "1"
    assert lines["bad_openai"] == "1 presence_penalty must be in [-2, 2], got 2.5"
    assert lines["bad_params"].startswith("1 top_p must be in (0, 1], got 2")
    assert lines["bad_file"] == "2 1"
