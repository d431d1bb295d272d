"""``lowbit.load()``, ``Session`` (one conversation: tokenize, logits, generate, chat, memory,
cancel, close) and ``Model`` (the loaded weights with their implicit session, plus ``session()``
for more conversations on the same weights and ``embed()``)."""
from __future__ import annotations

import inspect
import os
import threading
import warnings
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from lowbit.runtime import engine_architectures, registry
from lowbit.runtime.templates import BUILTIN_TEMPLATES, default_template, render_chat, validate_messages
from lowbit.errors import Cancelled, CudaError, InsufficientMemory, LowbitError, ModelError
from lowbit.runtime.generate import Generation, GenerationStream, eval_interruptibly, peak_rss_bytes, stream_generate
from lowbit.runtime.memory import Hparams, kv_cache_bytes
from lowbit.runtime.progress import ProgressFn
from lowbit.runtime.sampling import SamplingParams, check_bias_ids, check_int

KV_TYPES = ("f16", "q8_0")
# Activations of the quantized matmuls: "high" = hi + lo q8 rows (~16-bit, the default),
# "q8" = quantized once to 8 bits as llama.cpp does (csrc/cpu/matmul.h).
ACT_PRECISIONS = ("auto", "high", "q8")
READ_CHUNK = 8 << 20
# n_ctx default: the model's training context, capped so the KV cache uses at most this
# share of the memory available now.
KV_MEMORY_SHARE = 0.5


def _available_memory_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def default_n_ctx(meta: Mapping, kv_type: str, n_batch: int = 512) -> int:
    """The model's context, capped to what memory allows for the KV cache."""
    hp = Hparams.from_metadata(meta)
    n_ctx = hp.n_ctx_train or 4096
    avail = _available_memory_bytes()
    if avail:
        budget = avail * KV_MEMORY_SHARE
        while n_ctx > 512 and kv_cache_bytes(hp, n_ctx, kv_type, n_batch) > budget:
            n_ctx //= 2
    return n_ctx


def check_memory(meta: Mapping, weights_bytes: int, n_ctx: int, kv_type: str,
                 available: Optional[int] = None, n_batch: int = 512) -> None:
    """Raise InsufficientMemory when weights + KV cache for ``n_ctx`` exceed available memory,
    naming the estimate and the largest context that fits."""
    available = _available_memory_bytes() if available is None else available
    if not available:
        return
    hp = Hparams.from_metadata(meta)
    need = weights_bytes + kv_cache_bytes(hp, n_ctx, kv_type, n_batch)
    if need <= available:
        return
    lo, hi = 0, n_ctx          # largest n with weights + kv(n) <= available
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if weights_bytes + kv_cache_bytes(hp, mid, kv_type, n_batch) <= available:
            lo = mid
        else:
            hi = mid - 1
    fits = f"the largest context that fits is about {lo} tokens" if lo >= 16 else \
        "even the weights alone do not fit"
    raise InsufficientMemory(
        f"n_ctx={n_ctx} needs about {need / 2**30:.2f} GiB (weights {weights_bytes / 2**30:.2f} GiB + "
        f"KV cache {kv_type} {(need - weights_bytes) / 2**30:.2f} GiB) but {available / 2**30:.2f} GiB "
        f"is available; {fits}")


def _prefault(path: str, progress: Optional[ProgressFn], start: float, span: float) -> None:
    """Read the file once so weights are in the page cache, reporting progress; a progress
    callback returning False aborts the load."""
    size = os.path.getsize(path)
    done = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        while True:
            n = f.readinto(view)
            if not n:
                break
            done += n
            if progress is not None and progress(start + span * done / max(size, 1)) is False:
                raise Cancelled(f"load of {path} cancelled by the progress callback")


def _select_device(device: str, n_gpu_layers: int) -> str:
    """"cpu" or "cuda" for the asked device; CudaError when "cuda" is asked and none is usable."""
    from lowbit import cuda_status
    if device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    check_int("n_gpu_layers", n_gpu_layers, minimum=-1)
    if device == "cpu" or n_gpu_layers == 0:       # as llama.cpp: 0 layers offloaded computes on the CPU
        return "cpu"
    status = cuda_status()
    if status["device_count"] > 0:
        return "cuda"
    if device == "auto":
        return "cpu"
    raise CudaError(f"device='cuda' is not available: {status['message']}; use device='cpu' or 'auto'")


def _to_device(engine, asked: str, n_gpu_layers: int) -> str:
    """Moves the engine's forward pass onto the CUDA device (its last n_gpu_layers layers, -1:
    every one, and the output head; the layers below stay on the CPU), with a KV cache of the
    engine's kv_type there: "cuda", or "cpu" where device="auto" cannot use it (a model the
    device pass does not run, or one that does not fit: with a warning saying why)."""
    from lowbit import _core
    try:
        _core.engine_to_cuda(engine, int(n_gpu_layers))
        return "cuda"
    except (ModelError, InsufficientMemory) as e:
        if asked == "cuda":
            raise
        warnings.warn(f"device='auto' runs on the CPU: {e}", UserWarning, stacklevel=3)
        return "cpu"


def load(path_or_name: Union[str, os.PathLike], *, n_ctx: Optional[int] = None,
         n_threads: Optional[int] = None, n_batch: int = 512, kv_type: str = "f16",
         device: str = "cpu", n_gpu_layers: int = -1, progress: Optional[ProgressFn] = None,
         act_precision: str = "auto") -> "Model":
    """Load a GGUF model from a path or a registry name (pulled into the cache on first use).

    ``act_precision`` chooses the activation precision of the quantized matmuls: "auto"
    (default) splits activations into two 8-bit parts (~16-bit precision, outputs much closer to
    unquantized activations) for decode, where it costs little (memory-bound), and for prefill
    wherever the CPU's strip GEMM serves the weight type (AVX-512: the legacy types, Q4_K, Q5_K,
    Q6_K); prefill of other types stays at 8 bits for speed. "high" uses the two-pass form
    everywhere; "q8" quantizes activations once to 8 bits, as llama.cpp does.

    ``device``: "cpu" (default), "cuda" (every layer and the output head on the first CUDA device,
    a KV cache of kv_type there; CudaError without a usable device, InsufficientMemory when the
    model and its n_ctx do not fit, naming the largest n_ctx that does) or "auto" (CUDA when a usable
    device runs this model, else the CPU with a warning). ``n_gpu_layers``: -1 (default) or at
    least the layer count puts every layer on the device, 0 keeps the CPU, k in between puts the
    last k layers and the output head on the device and runs the layers below on the CPU first
    (llama.cpp's layer offload; the InsufficientMemory message names the most layers that fit).
    On CUDA, observers stay CPU-only (ValueError) and batched steps of several sessions run one
    session after another.

    ``progress(fraction)`` is called while loading; returning False aborts cleanly."""
    from lowbit import _core
    from lowbit.runtime.gguf_file import GGUFFile
    from lowbit.runtime.tokenizer import Tokenizer

    if kv_type not in KV_TYPES:
        raise ValueError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
    if act_precision not in ACT_PRECISIONS:
        raise ValueError(f"act_precision must be one of {', '.join(ACT_PRECISIONS)}, got {act_precision!r}")
    check_int("n_batch", n_batch, minimum=1)
    if n_threads is not None:
        check_int("n_threads", n_threads, minimum=1)
    if n_ctx is not None:
        check_int("n_ctx", n_ctx, minimum=1)
    asked_device = device
    device = _select_device(device, n_gpu_layers)
    pulled = not os.path.exists(os.fspath(path_or_name))
    path = str(registry.resolve(path_or_name, quiet=True,
                                progress=(lambda f: progress(0.5 * f)) if (progress and pulled) else None))
    if progress is not None and progress(0.5 if pulled else 0.0) is False:
        raise Cancelled("load cancelled by the progress callback")
    with GGUFFile(path) as g:
        meta = g.metadata
        weights_bytes = sum(t.nbytes for t in g.tensors)
    supported = engine_architectures()
    arch = meta.get("general.architecture")
    if arch not in supported:
        raise ModelError(f"{path}: unsupported architecture {arch!r}; supported: {', '.join(supported)}")
    # The tokenizer builds on a thread while the file is read and the engine packs its weights
    # (both release the GIL; a 151k vocabulary takes ~0.1 s). Its error, if any, is the one raised:
    # it came first when the tokenizer was built before everything below.
    built: Dict[str, Any] = {}

    def build_tokenizer() -> None:
        try:
            built["tokenizer"] = Tokenizer.from_metadata(meta)
        except BaseException as e:   # re-raised on the caller's thread
            built["error"] = e

    builder = threading.Thread(target=build_tokenizer, name="lowbit-load-tokenizer", daemon=True)
    builder.start()
    try:
        n_ctx_train = Hparams.from_metadata(meta).n_ctx_train
        asked = n_ctx
        n_ctx = n_ctx or default_n_ctx(meta, kv_type, n_batch)
        check_memory(meta, weights_bytes, n_ctx, kv_type, n_batch=n_batch)
        if asked and n_ctx_train and asked > n_ctx_train:      # as llama.cpp: allowed, with a warning
            warnings.warn(f"n_ctx={asked} is larger than the model's training context ({n_ctx_train} tokens); "
                          f"output may degrade past {n_ctx_train} tokens", UserWarning, stacklevel=2)
        start = 0.5 if pulled else 0.0
        _prefault(path, progress, start, (1.0 - start) * 0.9)
        if n_threads is None:
            from lowbit.runtime.cpu import features
            n_threads = features()["physical_cores"]
        engine = _core.Engine(path, int(n_ctx), int(n_threads), int(n_batch), kv_type,
                              act_precision=act_precision)
    except BaseException:
        builder.join()
        if "error" in built:
            raise built["error"] from None
        raise
    builder.join()
    if "error" in built:
        engine.close()
        raise built["error"]
    if device == "cuda":
        try:
            device = _to_device(engine, asked_device, n_gpu_layers)
        except BaseException:
            engine.close()
            raise
    if progress is not None and progress(1.0) is False:
        engine.close()
        raise Cancelled("load cancelled by the progress callback")
    return Model(engine, built["tokenizer"], meta, path, device=device,
                 load_options=dict(n_batch=int(n_batch), n_gpu_layers=int(n_gpu_layers)))


CHAT_ROLES = ("system", "user", "assistant", "tool")


def check_chat_roles(messages: Sequence[Mapping[str, Any]]) -> None:
    """ValueError naming the message index and role of an unknown role or non-str content."""
    validate_messages(messages, roles=CHAT_ROLES)


class _Claim:
    """The generation that owns a Model's KV cache: from its first step to its end."""

    def __init__(self):
        self.thread = threading.get_ident()
        self.gen = None                  # weakref to the stream's step generator (streams only)
        self.cancelled = False           # set by this stream's close()

    def abandon(self) -> None:
        """Close a suspended stream: it ends with finish_reason "cancelled"."""
        gen = self.gen() if self.gen is not None else None
        if gen is not None and inspect.getgeneratorstate(gen) != inspect.GEN_RUNNING:
            try:
                gen.close()
            except ValueError:          # started running in another thread meanwhile
                pass


class Session:
    """One conversation on a loaded model: its own KV cache, position and cancel flag, on
    weights shared with the Model it came from (``Model.session()``; a Model is itself a Session,
    its implicit one). Sessions of one model run in parallel threads; each runs one generation
    at a time.

    Stream lifecycle: a stream (``stream=True``) owns the model from its first piece until it
    is exhausted, closed (``stream.close()``, ``with stream:``) or garbage collected; no lock is
    held while it is suspended between pieces. A new generate/chat/logits call on the thread
    that last advanced a suspended stream closes that stream first (it ends with
    finish_reason "cancelled"), like a new call on a llama-cpp-python ``Llama``. Calls from
    other threads wait until the running generation or stream ends. ``close()`` and
    ``cancel()`` never wait for a stream: they stop it (from any thread). The GIL is released
    while the core computes, so different Models and Sessions run in parallel threads."""

    def __init__(self, engine, tokenizer, metadata: Mapping, path: str, device: str = "cpu"):
        self._engine = engine
        self.tokenizer = tokenizer
        self.metadata = dict(metadata)
        self.path = path
        self.device = device
        self.architecture = self.metadata.get("general.architecture", "")
        self._cond = threading.Condition(threading.RLock())   # guards _active, one step at a time
        self._active: Optional[_Claim] = None
        self._cancel = threading.Event()
        self._cached_ids: List[int] = []      # what the engine's KV cache holds
        self._closed = False
        self._template: Optional[str] = None
        self._warned_template = False
        self.last: Optional[Generation] = None

    # ---- basics ---------------------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            raise LowbitError(f"this {type(self).__name__} is closed")

    @property
    def n_ctx(self) -> int:
        self._check_open()
        return self._engine.n_ctx

    @property
    def n_vocab(self) -> int:
        self._check_open()
        return self._engine.n_vocab

    @property
    def n_past(self) -> int:
        """Tokens the KV cache holds (``cached_tokens`` lists them)."""
        self._check_open()
        return self._engine.n_past

    @property
    def cached_tokens(self) -> List[int]:
        """A copy of the token ids the KV cache holds, in order: what a later prompt starting with
        them reuses, and what ``copy_prefix_from`` can hand to another session."""
        with self._cond:
            return list(self._cached_ids)

    def truncate(self, n_tokens: int) -> int:
        """Drop cached tokens from position ``n_tokens`` on (a scheduler reusing this session for
        a prompt that shares ``n_tokens`` with ``cached_tokens``); returns what the cache now
        holds: ``min(n_tokens, n_past)``, or 0 when a sliding-window layer no longer holds the
        window that position needs (everything is dropped then)."""
        check_int("n_tokens", n_tokens, minimum=0)
        with self._cond:
            claim = self._claim(_Claim())
            try:
                kept = int(self._engine.truncate(int(min(n_tokens, len(self._cached_ids)))))
                del self._cached_ids[kept:]
                return kept
            finally:
                self._release(claim)

    def copy_prefix_from(self, other: "Session", n_tokens: int) -> int:
        """Make this session's cache hold the first ``n_tokens`` cached positions of ``other``
        (a session of the same model and kv_type): their keys and values are copied, not
        recomputed, so a prompt starting with those tokens reuses them here
        (``Generation.cached_prompt_tokens``). Returns ``n_tokens``. ValueError when ``other``
        holds fewer, or when a sliding-window layer of ``other`` no longer holds the window that
        position needs (this session is then left empty); LowbitError for a closed session."""
        if not isinstance(other, Session):
            raise TypeError(f"copy_prefix_from needs a Session, got {type(other).__name__}")
        check_int("n_tokens", n_tokens, minimum=0)
        other._check_open()
        with other._cond:                  # its token list as of now; the core copies under both locks
            source_ids = list(other._cached_ids[:n_tokens])
        if len(source_ids) < n_tokens:
            raise ValueError(f"copy_prefix_from: {n_tokens} tokens asked, the other session holds "
                             f"{len(source_ids)}")
        with self._cond:
            claim = self._claim(_Claim())
            try:
                del self._cached_ids[:]
                self._engine.truncate(0)
                self._engine.copy_prefix_from(other._engine, int(n_tokens))
                self._cached_ids.extend(source_ids)
                return int(n_tokens)
            finally:
                self._release(claim)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> List[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits at every position of ``ids`` (a fresh context): shape (len(ids), n_vocab)."""
        self._check_open()
        arr = np.asarray(list(ids), dtype=np.int32)
        if arr.size == 0:
            raise ValueError("logits() needs at least one token")
        with self._cond:
            claim = self._claim(_Claim())
            try:
                self._engine.truncate(0)
                del self._cached_ids[:]       # in place: a stream made earlier shares the list
                out = eval_interruptibly(self._engine, arr, all_logits=True)
                self._cached_ids.extend(arr.tolist())
                return out
            finally:
                self._release(claim)

    # ---- ownership of the KV cache ----------------------------------------------------------
    def _claim(self, claim: _Claim) -> _Claim:
        """Make ``claim`` the active generation (called with the lock held): wait for another
        thread's generation; close a stream suspended on this thread (it cannot advance while
        this thread waits)."""
        while True:
            self._check_open()
            active = self._active
            if active is None:
                self._active = claim
                self._cancel.clear()
                self._engine.reset_cancel()
                return claim
            if active.thread == threading.get_ident():
                active.abandon()
                if self._active is active:      # its generator was gone or running: drop it
                    self._active = None
                continue
            self._cond.wait()

    def _release(self, claim: _Claim) -> None:
        with self._cond:
            if self._active is claim:
                self._active = None
                self._cond.notify_all()

    def _steps(self, inner, record: Generation, claim: _Claim):
        """The pieces of ``inner``, each computed with the lock held; none held between them."""
        started = False
        try:
            while True:
                with self._cond:
                    if not started:
                        self._claim(claim)
                        started = True
                    elif self._closed or self._active is not claim:
                        break
                    claim.thread = threading.get_ident()
                    try:
                        piece = next(inner)
                    except StopIteration:
                        break
                yield piece
        finally:
            inner.close()                  # suspended inside stream_generate(): finish_reason "cancelled"
            if not record.finish_reason:
                record.finish_reason = "cancelled"
            self._release(claim)
            self.last = record

    def _stop_stream(self, claim: _Claim) -> None:
        """A stream's close(): a step running in another thread stops within one layer."""
        claim.cancelled = True
        if self._active is claim and not self._closed:
            self._engine.cancel()

    # ---- generation -----------------------------------------------------------------------
    def _params(self, temperature, top_k, top_p, min_p, repetition_penalty, repeat_last_n, seed,
                presence_penalty=0.0, frequency_penalty=0.0, logit_bias=None):
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=repetition_penalty, repeat_last_n=repeat_last_n, seed=seed,
                                presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                                logit_bias=logit_bias).validate()
        check_bias_ids(params, self.n_vocab)
        return params

    def _generate_ids(self, prompt_ids: List[int], *, stream: bool, max_new_tokens: int,
                      stop: Sequence[str], params: SamplingParams, context_shift: bool,
                      n_keep: Optional[int], constraint=None, sample_in_engine: bool = True):
        self._check_open()
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        if n_keep is not None:
            check_int("n_keep", n_keep, minimum=0)
        record = Generation()
        stop_ids = sorted(self.tokenizer.eot_ids)
        keep = len(prompt_ids) if n_keep is None else n_keep
        keep = max(0, min(keep, self.n_ctx // 2))
        claim = _Claim()
        inner = stream_generate(self._engine, self.tokenizer, prompt_ids, params,
                    max_new_tokens=max_new_tokens, stop=stop, stop_ids=stop_ids,
                    cached_ids=self._cached_ids, record=record, context_shift=context_shift,
                    n_keep=keep, cancelled=lambda: claim.cancelled or self._cancel.is_set(),
                    constraint=constraint, sample_in_engine=sample_in_engine)
        steps = self._steps(inner, record, claim)
        claim.gen = weakref.ref(steps)
        if stream:
            return GenerationStream(steps, record, on_close=lambda: self._stop_stream(claim))
        try:
            for _ in steps:
                pass
        finally:
            steps.close()
        return record

    def generate(self, prompt: str, *, max_new_tokens: int = 256, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 repetition_penalty: float = 1.0, repeat_last_n: int = 64, stop: Sequence[str] = (),
                 seed: Optional[int] = None, stream: bool = False, parse_special: bool = False,
                 context_shift: bool = False, n_keep: Optional[int] = None, json_schema: Any = None,
                 regex: Optional[str] = None, grammar: Optional[str] = None, json: bool = False,
                 constraint=None, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 logit_bias: Optional[Mapping[int, float]] = None):
        """Continue ``prompt``. Returns a Generation, or with ``stream=True`` a GenerationStream
        of text pieces whose ``.result`` is the Generation once exhausted (see the class
        docstring for its lifecycle).

        ``finish_reason``: "stop" (a stop string), "eos" (an end-of-generation token),
        "length" (max_new_tokens), "context" (the context is full and context_shift is off),
        "cancelled". ``seed``: None or -1 = random, an int >= 0 = reproducible.
        ``presence_penalty`` / ``frequency_penalty`` (-2..2, OpenAI's: over the tokens generated
        so far) and ``logit_bias`` ({token id: -100..100}): see runtime/sampling.py for the order.

        Structured output (runtime/constraints.py): at most one of ``json_schema`` (dict, JSON
        string or pydantic model class), ``regex``, ``grammar`` (Lark or GBNF), ``json=True``
        (any JSON object) or a prebuilt ``constraint``; it is compiled before any token is
        generated (ConstraintError, a ValueError, when malformed or unsatisfiable)."""
        from lowbit.runtime import constraints
        self._check_open()
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be str, got {type(prompt).__name__}")
        params = self._params(temperature, top_k, top_p, min_p, repetition_penalty, repeat_last_n, seed,
                              presence_penalty, frequency_penalty, logit_bias)
        guide = constraints.resolve(self, json_schema=json_schema, regex=regex, grammar=grammar, json=json,
                                    constraint=constraint)
        ids = self.tokenize(prompt, add_special=True, parse_special=parse_special)
        return self._generate_ids(ids, stream=stream, max_new_tokens=max_new_tokens, stop=stop,
                                  params=params, context_shift=context_shift, n_keep=n_keep, constraint=guide)

    def _piece(self, token_id: Optional[int]) -> str:
        tokens = self.metadata.get("tokenizer.ggml.tokens") or []
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else ""

    def chat_template(self) -> str:
        """The GGUF's ``tokenizer.chat_template``, else a built-in one for the architecture."""
        if self._template is None:
            tokens = self.metadata.get("tokenizer.ggml.tokens") or []
            self._template = self.tokenizer.chat_template or default_template(
                self.architecture, lambda piece: piece in tokens)
        return self._template

    def _warn_builtin_template(self) -> None:
        """Once per Model: the GGUF has no chat template, name the built-in one used."""
        if self.tokenizer.chat_template or self._warned_template:
            return
        self._warned_template = True
        template = self.chat_template()
        name = next((k for k, v in BUILTIN_TEMPLATES.items() if v == template), "built-in")
        warnings.warn(f"{os.path.basename(self.path)} has no chat template (tokenizer.chat_template); "
                      f"using the built-in {name!r} template", UserWarning, stacklevel=4)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        return render_chat(self.chat_template(), messages, add_generation_prompt=add_generation_prompt,
                           bos_token=self._piece(self.tokenizer.bos_id),
                           eos_token=self._piece(self.tokenizer.eos_id))

    def chat_ids(self, messages: Sequence[Mapping[str, Any]], **template_vars: Any) -> List[int]:
        """Token ids of the rendered conversation, with exactly one BOS when the model uses one.
        Special tokens are parsed in the template's text only: in message contents they are
        ordinary text (a user's '<|im_end|>' does not end the turn). Roles: system, user,
        assistant, tool; content: str. A model without a chat template warns once.
        ``template_vars`` (e.g. ``tools``) are passed to the template."""
        from lowbit.runtime.templates import render_chat_spans
        check_chat_roles(messages)
        self._warn_builtin_template()
        text, spans = render_chat_spans(self.chat_template(), messages, add_generation_prompt=True,
                                        bos_token=self._piece(self.tokenizer.bos_id),
                                        eos_token=self._piece(self.tokenizer.eos_id), **template_vars)
        ids = self.tokenizer.encode(text, add_special=True, parse_special=True, literal_spans=spans)
        bos = self.tokenizer.bos_id
        while len(ids) >= 2 and bos is not None and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]
        return ids

    def chat(self, messages: Sequence[Mapping[str, Any]], *, max_new_tokens: int = 256,
             temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
             repetition_penalty: float = 1.1, repeat_last_n: int = 64, stop: Sequence[str] = (),
             seed: Optional[int] = None, stream: bool = False, context_shift: bool = False,
             tools: Optional[Sequence[Mapping[str, Any]]] = None, tool_choice: Any = "auto",
             json_schema: Any = None, regex: Optional[str] = None, grammar: Optional[str] = None,
             json: bool = False, constraint=None, presence_penalty: float = 0.0,
             frequency_penalty: float = 0.0, logit_bias: Optional[Mapping[int, float]] = None):
        """Reply to a conversation rendered with the model's chat template; stops at the
        model's end-of-turn tokens. Roles: system, user, assistant, tool; content: str.
        Returns like generate(). The default repetition_penalty 1.1 (ollama's, over the last
        64 tokens) is the chat default `lowbit chat` uses: on SmolLM2 3-turn chats at
        temperature 0.8, 13 of 36 replies looped with 1.0 and none with 1.1.

        ``tools`` / ``tool_choice`` ("auto", "none", "required" or {"type": "function",
        "function": {"name": ...}}): see runtime/tools.py; calls come back in
        ``Generation.tool_calls`` with finish_reason "tool_calls". ``json_schema``, ``regex``,
        ``grammar``, ``json``, ``constraint``, ``presence_penalty``, ``frequency_penalty``,
        ``logit_bias``: as in generate() (not together with tools)."""
        from lowbit.runtime import constraints, tools as tool_calls
        self._check_open()
        params = self._params(temperature, top_k, top_p, min_p, repetition_penalty, repeat_last_n, seed,
                              presence_penalty, frequency_penalty, logit_bias)
        messages, template_vars, guide = tool_calls.prepare_chat(self, messages, tools, tool_choice)
        asked = constraints.resolve(self, json_schema=json_schema, regex=regex, grammar=grammar, json=json,
                                    constraint=constraint)
        if asked is not None and guide is not None:
            raise ValueError("tools= (with a tool_choice other than 'none') cannot be combined with "
                             "json_schema=, regex=, grammar=, json=True or constraint=")
        ids = self.chat_ids(messages, **template_vars)
        return self._generate_ids(ids, stream=stream, max_new_tokens=max_new_tokens, stop=stop,
                                  params=params, context_shift=context_shift, n_keep=None,
                                  constraint=guide or asked)

    # ---- control --------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the running generation or open stream (from any thread) within one decode
        step, or one layer of a prefill; it ends with finish_reason "cancelled". A no-op on a
        closed Model."""
        self._cancel.set()
        if not self._closed:
            self._engine.cancel()

    def memory(self) -> Dict[str, Any]:
        """Weights by type, KV cache, scratch and totals for this model, plus the process's
        peak RSS."""
        self._check_open()
        e = self._engine
        report = dict(e.memory())          # weights (by type), kv_cache {...}, scratch_bytes, total_bytes
        kv = report.get("kv_cache", {})
        report.update(device=self.device, kernels=e.kernels, n_threads=e.n_threads, n_ctx=e.n_ctx,
                      kv_cache_bytes=kv.get("bytes", 0), kv_type=kv.get("type", e.kv_type),
                      process_peak_rss_bytes=peak_rss_bytes())
        return report

    def close(self) -> None:
        """Free the engine. A running generation (any thread) is cancelled, not waited for to
        the end; an open stream ends with finish_reason "cancelled". Afterwards every member
        that needs the engine raises LowbitError("this Model is closed"). Idempotent. The
        weights stay loaded while another session on them is open (Model.close() closes all)."""
        if self._closed:
            return
        self.cancel()
        with self._cond:                   # a running step stops within one layer
            if self._closed:
                return
            self._closed = True
            active = self._active
            if active is not None:
                active.cancelled = True
                active.abandon()           # a suspended stream, whichever thread it is on
            self._engine.close()
            self._cond.notify_all()        # waiting callers see the Model closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"n_ctx={self.n_ctx}"
        return f"<lowbit.{type(self).__name__} {self.architecture} {os.path.basename(self.path)} {state}>"


class Model(Session):
    """A loaded model: the weights (mapped once, shared read-only) with an implicit session, so
    ``model.generate(...)`` / ``chat`` / ``logits`` work on one conversation as before.
    ``model.session()`` opens another conversation on the same weights (own KV cache); sessions
    run in parallel threads and batch together through ``lowbit.runtime.batch.eval_batch``.
    ``model.embed(texts)`` computes pooled embeddings in its own state. ``close()`` closes the
    model and every session made from it."""

    def __init__(self, engine, tokenizer, metadata: Mapping, path: str, device: str = "cpu",
                 load_options: Optional[Mapping[str, Any]] = None):
        super().__init__(engine, tokenizer, metadata, path, device=device)
        self._sessions: "weakref.WeakSet[Session]" = weakref.WeakSet()
        self._sessions_lock = threading.Lock()
        self._load_options = dict(load_options or {})
        self._embedder = None
        self._closing = False              # set by close(): no new sessions from then on
        self._hparams: Optional[Hparams] = None   # the core's config, for session memory checks

    def session(self, n_ctx: Optional[int] = None, *, n_threads: Optional[int] = None,
                n_batch: Optional[int] = None, kv_type: Optional[str] = None) -> Session:
        """A new conversation on these weights: its own KV cache of ``n_ctx`` tokens (default:
        the model's), state and thread pool (``n_threads``, default the model's). The same
        generation API as the Model; closed by ``Model.close()``."""
        self._check_open()
        e = self._engine
        n_ctx = e.n_ctx if n_ctx is None else n_ctx
        n_threads = e.n_threads if n_threads is None else n_threads
        n_batch = self._load_options.get("n_batch", e.n_batch) if n_batch is None else n_batch
        kv_type = e.kv_type if kv_type is None else kv_type
        check_int("n_ctx", n_ctx, minimum=1)
        check_int("n_threads", n_threads, minimum=1)
        check_int("n_batch", n_batch, minimum=1)
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
        self._check_session_memory(int(n_ctx), kv_type, int(n_batch))
        engine = e.new_session(int(n_ctx), int(n_threads), int(n_batch), kv_type, e.act_precision)
        if self.device == "cuda":
            try:
                _to_device(engine, "cuda", self._load_options.get("n_gpu_layers", -1))   # weights shared
            except BaseException:
                engine.close()
                raise
        s = Session(engine, self.tokenizer, self.metadata, self.path, device=self.device)
        s._template, s._warned_template = self._template, self._warned_template
        s._parent = self                   # the Python Model stays alive with its sessions
        with self._sessions_lock:
            if self._closing:
                engine.close()
                raise LowbitError("this Model is closed")
            self._sessions.add(s)
        return s

    def _check_session_memory(self, n_ctx: int, kv_type: str, n_batch: int) -> None:
        """InsufficientMemory when a new session's KV cache exceeds the memory available now."""
        from lowbit import _core
        if self._hparams is None:
            self._hparams = Hparams.from_config(_core.model_config(self.path))
        need = kv_cache_bytes(self._hparams, n_ctx, kv_type, n_batch)
        available = _available_memory_bytes()
        if available and need > available:
            raise InsufficientMemory(f"a session of n_ctx={n_ctx} needs a {need / 2**30:.2f} GiB KV cache ({kv_type}) "
                                     f"but {available / 2**30:.2f} GiB is available; use a smaller n_ctx")

    def embed(self, texts: Union[str, Sequence[str]], *, pooling: Optional[str] = None,
              normalize: bool = True) -> np.ndarray:
        """Embeddings of ``texts``: (len(texts), n_embd) float32 (a str gives one row), the
        output-normed hidden states pooled as the GGUF's ``<arch>.pooling_type`` says (mean, cls
        = first token, last = last token; a model that declares none is mean-pooled, with a
        warning saying so) or as ``pooling`` overrides, L2-normalised unless ``normalize=False``.
        Texts are batched; this uses its own sessions, so the chat cache is left as it was."""
        from lowbit.runtime.embed import Embedder
        self._check_open()
        with self._sessions_lock:
            if self._embedder is None:
                self._embedder = Embedder(self)
            embedder = self._embedder
        return embedder.embed(texts, pooling=pooling, normalize=normalize)

    def close(self) -> None:
        """Close every session made from this model, its embedding state, then the model
        itself (see Session.close). Idempotent."""
        with self._sessions_lock:
            self._closing = True
            sessions = list(self._sessions)
            embedder, self._embedder = self._embedder, None
        for s in sessions:                 # not under our lock: a session's close takes its own
            s.close()
        if embedder is not None:
            embedder.close()
        super().close()
