"""Writes the corrupt-file corpus the C API's lowbit_model_load must reject cleanly into a folder,
with manifest.json: [{"file", "status", "pattern"}] (the expected lowbit_status and a regex the
error text must match). Used by tests/test_capi_model.py and bench/sanitize.sh.

    python tests/capi/write_corpus.py DIR      (tests/ and the lowbit to use on PYTHONPATH)

The corpus: every corrupted-field case of tests/test_gguf.py, the hostile metadata of
tests/test_hostile.py applied to a tiny model, that model truncated at several points, and the
file-system cases (missing file, directory, FIFO, empty file)."""
import json
import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

FILE, FORMAT = 2, 3   # lowbit_status LOWBIT_ERR_FILE / LOWBIT_ERR_FORMAT


def write_corpus(folder: str) -> list:
    from hostile_files import mutate
    from model_factory import write_tiny_model
    from test_gguf import CORRUPT_CASES
    from test_hostile import HOSTILE_LLAMA

    os.makedirs(folder, exist_ok=True)
    cases = []

    def add(name: str, data: bytes, status: int, pattern: str) -> None:
        path = os.path.join(folder, name + ".gguf")
        with open(path, "wb") as f:
            f.write(data)
        cases.append({"file": path, "status": status, "pattern": pattern})

    for name, raw, pattern in CORRUPT_CASES:
        add("gguf_" + name, raw, FORMAT, pattern)
    tiny = write_tiny_model(os.path.join(folder, "tiny_valid.gguf.src"))
    for name, changes, key in HOSTILE_LLAMA:
        path = mutate(tiny, os.path.join(folder, f"hostile_{name}.gguf"), set=changes)
        cases.append({"file": path, "status": FORMAT, "pattern": key.replace(".", r"\.")})
    with open(tiny, "rb") as f:
        raw = f.read()
    for frac in (0.01, 0.1, 0.5, 0.9, 0.999):
        add(f"truncated_{frac}", raw[:int(len(raw) * frac)], FORMAT, r"byte \d+|bytes")
    add("empty", b"", FORMAT, "0 bytes, too short")
    cases.append({"file": os.path.join(folder, "missing.gguf"), "status": FILE, "pattern": "No such file"})
    cases.append({"file": folder, "status": FILE, "pattern": "directory"})
    fifo = os.path.join(folder, "fifo.gguf")
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
    cases.append({"file": fifo, "status": FORMAT, "pattern": "not a regular file"})
    os.remove(tiny)
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(cases, f, indent=1)
    return cases


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: write_corpus.py DIR")
    print(len(write_corpus(sys.argv[1])), "files")
