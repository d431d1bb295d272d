"""Seeded fuzzing of what a hostile file controls: GGUF header and metadata bytes, and chat
template text. Every case must end in a result or a typed lowbit error (never a crash, a hang,
another exception type or a runaway allocation).

CI runs a bounded number of cases (well under 30 s); more with LOWBIT_FUZZ_CASES=N (per
target) and another seed with LOWBIT_FUZZ_SEED=S, e.g.
    LOWBIT_FUZZ_CASES=20000 PYTHONPATH=python python -m pytest -q tests/test_fuzz.py
"""
import os
import random
import struct
import time

import pytest

from lowbit import LowbitError, TemplateError
from lowbit.runtime.templates import render_chat, render_chat_spans
from lowbit.runtime.gguf_file import GGUFFile
from lowbit.runtime.info import describe_file
from lowbit.runtime.tokenizer import Tokenizer

from model_factory import write_tiny_model

CASES = int(os.environ.get("LOWBIT_FUZZ_CASES", "150"))
SEED = int(os.environ.get("LOWBIT_FUZZ_SEED", "1234"))
CASE_TIME_LIMIT_S = 10.0       # hang guard per case; typical cases take milliseconds

INTERESTING_U64 = [0, 1, 2, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 26, 1 << 31,
                   1 << 32, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


def _mutate(data: bytes, rng: random.Random, header_end: int) -> bytes:
    """One to four edits, mostly inside the header and metadata (where the parser looks)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(min(len(buf), header_end + 64))
        kind = rng.randrange(6)
        if kind == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf[at] = rng.choice((0, 0xFF, 0x7F, 0x80))
        elif kind == 2 and at + 8 <= len(buf):
            buf[at:at + 8] = struct.pack("<Q", rng.choice(INTERESTING_U64))
        elif kind == 3 and at + 4 <= len(buf):
            buf[at:at + 4] = struct.pack("<I", rng.choice(INTERESTING_U64) & 0xFFFFFFFF)
        elif kind == 4:
            del buf[at:]                                    # truncation
        else:
            buf[at:at] = bytes(rng.randrange(1, 16))        # insertion shifts everything after
    return bytes(buf)


def _exercise_file(path: str) -> None:
    """Everything a command does with a file before computing: parse, metadata, config, info,
    tokenizer."""
    try:
        with GGUFFile(path) as g:
            meta = g.metadata
            g.metadata_types
            for t in g.tensors[:4]:
                g.tensor_bytes(t.name)
            try:
                g.model_config()
            except LowbitError:
                pass
            try:
                Tokenizer.from_metadata(meta)
            except LowbitError:
                pass
        describe_file(path)
    except LowbitError:
        pass


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory):
    path = write_tiny_model(tmp_path_factory.mktemp("fuzz") / "seed.gguf")
    with GGUFFile(path) as g:
        header_end = g.data_offset
    with open(path, "rb") as f:
        return f.read(), header_end


def test_fuzz_gguf_header_and_metadata(seed_file, tmp_path):
    data, header_end = seed_file
    rng = random.Random(SEED)
    path = str(tmp_path / "case.gguf")
    for case in range(CASES):
        mutated = _mutate(data, rng, header_end)
        with open(path, "wb") as f:
            f.write(mutated)
        t0 = time.monotonic()
        try:
            _exercise_file(path)
        except Exception as e:      # anything untyped is a finding: report the case to reproduce it
            pytest.fail(f"case {case} (seed {SEED}): untyped {type(e).__name__}: {e}")
        assert time.monotonic() - t0 < CASE_TIME_LIMIT_S, f"case {case} (seed {SEED}) took too long"


# ---- templates ----------------------------------------------------------------------------------
PIECES = [
    "{{ m['content'] }}", "{{ m.role }}", "{{ bos_token }}", "{{ 'x' * N }}", "{{ 'ab'.center(N) }}",
    "{{ 'a{}b'.format(N) }}", "{{ '%0Nd' % 1 }}", "{{ '%0Nd'|format(1) }}", "{{ 'a\\nb'|indent(N) }}",
    "{{ ('q' ~ 'r') * N }}", "{{ [1, 2] * N }}", "{{ N ** N }}", "{{ 'xy'|wordwrap(N) }}",
    "{{ 'xy'.replace('', 'z' * N) }}", "{{ range(N)|join(',') }}", "{{ messages|tojson }}",
    "{{ m['content']|trim|upper }}", "{{ loop.index }}", "{{ 'abc'[N:] }}", "{{ 'abc'|batch(N)|list }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(N) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "{% if N > 3 %}big{% else %}small{% endif %}", "{{ raise_exception('no') if N == 7 else '' }}",
    "{{ (N).to_bytes(N, 'big')|length }}", "{{ '{:{}}'.format('a', N) }}", "{{ 'a\\tb'.expandtabs(N) }}",
    "<|im_start|>", "{{ ''.__class__ }}", "{{ cycler.__init__ }}", "{% for", "}}", "{{ messages[N] }}",
]
NUMBERS = ["0", "1", "3", "7", "64", "65536", "1048577", "1500000000", "-1", "2**40"]


def _template(rng: random.Random) -> str:
    body = "".join(rng.choice(PIECES).replace("N", rng.choice(NUMBERS)) for _ in range(rng.randint(1, 5)))
    return "{% for m in messages %}" + body + "{% endfor %}" if rng.random() < 0.7 else body


def test_fuzz_chat_templates():
    rng = random.Random(SEED)
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": " hi <|im_end|> "}]
    for case in range(CASES * 2):
        template = _template(rng)
        t0 = time.monotonic()
        try:
            text = render_chat(template, msgs)
            text2, spans = render_chat_spans(template, msgs)
            assert text2 == text and all(0 <= a <= b <= len(text) for a, b in spans)
        except TemplateError:
            pass
        except Exception as e:
            pytest.fail(f"template case {case} (seed {SEED}) {template!r}: untyped {type(e).__name__}: {e}")
        assert time.monotonic() - t0 < CASE_TIME_LIMIT_S, f"template {template!r} took too long"
