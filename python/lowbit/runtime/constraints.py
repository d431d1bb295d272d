"""Constrained decoding: JSON Schema, regular expressions and grammars enforced while sampling.

The grammar engine is llguidance (an abi3 wheel with no torch dependency; the compiler, the
Earley parser and the token-trie mask live there). This module only feeds it lowbit's own
vocabulary and puts its token mask in front of the sampler:

    constraint = Constraint.for_model(model, json_schema={...})   # compiled and checked once
    guide = constraint.start()        # one generation: its own matcher, first mask in flight
    token = guide.sample(sampler, logits, history)   # the sampler on the allowed tokens only
    done = guide.accept(token)        # advance; starts the next mask in a worker thread
    guide.close(record)

The next mask is computed in a worker thread while the engine evaluates the sampled token:
both llguidance's mask computation and Engine.eval release the GIL, so on a machine with a
spare core the mask costs only the time the sampler waits for it (``Constraint.stats``).
Sampling then runs on the allowed tokens only, the same distribution as the others at -inf.

Mask layout (llguidance's): int32 words, bit ``t % 32`` of word ``t // 32`` set when token
``t`` is allowed; end-of-generation tokens are set only where the grammar may end.
"""
from __future__ import annotations

import json as jsonlib
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from lowbit.errors import LowbitError

# JSON layout the schema compiler emits unless the schema's "x-guidance" says otherwise:
# ", " and ": " with no other whitespace. Small models left free to add whitespace at
# temperature 1.0 often spend their token budget on newlines; one fixed layout also keeps
# every output within the bounds a schema implies.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_JSON_OBJECT = {"type": "object"}


class ConstraintError(LowbitError, ValueError):
    """A JSON schema, regular expression or grammar is malformed or unsatisfiable (raised
    before any token is generated), or the grammar engine failed during generation."""


def _one_line(message: str) -> str:
    """llguidance's multi-line messages (source echo, carets) as one line."""
    return " ".join(message.split())


def _llguidance():
    try:
        import llguidance
    except ImportError as e:   # a dependency of lowbit; only a broken install lacks it
        raise ConstraintError(f"constrained decoding needs the llguidance package ({e}); "
                              f"pip install llguidance") from None
    return llguidance


# ---- the vocabulary as llguidance sees it ---------------------------------------------------
class _VocabView:
    """What llguidance.TokenizerWrapper reads: the bytes of every token (control tokens marked
    with a leading 0xFF, as llguidance's llama.cpp adapter does, so grammars can name them
    as <|im_end|> and JSON text can never produce them), the special ids, and an encoder."""

    def __init__(self, tokenizer, n_vocab: int):
        from lowbit.runtime.tokenizer.vocab import ATTR_CONTROL, ATTR_UNKNOWN
        special = []
        pieces: List[bytes] = []
        for tid in range(tokenizer.vocab_size):
            if tokenizer.attr(tid) & (ATTR_CONTROL | ATTR_UNKNOWN):
                special.append(tid)
                pieces.append(b"\xff" + tokenizer.token_to_bytes(tid, special=True))
            else:
                pieces.append(tokenizer.token_to_bytes(tid))
        pieces.extend(b"" for _ in range(n_vocab - len(pieces)))   # engine rows past the vocab
        self.tokens = pieces
        self.special_token_ids = special
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else min(tokenizer.eot_ids)
        self.bos_token_id = tokenizer.bos_id
        self._tokenizer = tokenizer

    def __call__(self, text) -> List[int]:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        return self._tokenizer.encode(text, add_special=False, parse_special=False)


_LL_TOKENIZERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LL_LOCK = threading.Lock()


def ll_tokenizer(tokenizer, n_vocab: int):
    """llguidance's tokenizer for a lowbit Tokenizer, built once per (tokenizer, n_vocab):
    about 0.3 s for SmolLM2's 49k vocabulary and 2.5 s for gemma3's 262k."""
    llg = _llguidance()
    with _LL_LOCK:
        per_tokenizer = _LL_TOKENIZERS.setdefault(tokenizer, {})
        built = per_tokenizer.get(n_vocab)
        if built is None:
            if n_vocab < tokenizer.vocab_size:
                raise ValueError(f"n_vocab {n_vocab} is smaller than the tokenizer's {tokenizer.vocab_size} tokens")
            eos = sorted(tokenizer.eot_ids) or ([tokenizer.eos_id] if tokenizer.eos_id is not None else [])
            built = llg.LLTokenizer(llg.TokenizerWrapper(_VocabView(tokenizer, n_vocab)),
                                    n_vocab=n_vocab, eos_token=eos)
            per_tokenizer[n_vocab] = built
    return built


# ---- grammars from the user's arguments ------------------------------------------------------
def schema_dict(json_schema: Any) -> Dict[str, Any]:
    """A JSON schema as a dict, from a dict, a JSON string or a pydantic model class."""
    if isinstance(json_schema, Mapping):
        schema = dict(json_schema)
    elif isinstance(json_schema, str):
        try:
            schema = jsonlib.loads(json_schema)
        except ValueError as e:
            raise ConstraintError(f"json_schema is not valid JSON: {e}") from None
    elif isinstance(json_schema, type) and hasattr(json_schema, "model_json_schema"):
        schema = json_schema.model_json_schema()           # pydantic v2
    elif isinstance(json_schema, type) and hasattr(json_schema, "schema"):
        schema = json_schema.schema()                      # pydantic v1
    else:
        raise TypeError(f"json_schema must be a dict, a JSON string or a pydantic model class, "
                        f"got {type(json_schema).__name__}")
    if not isinstance(schema, dict):
        raise ConstraintError(f"json_schema must be a JSON object, got {type(schema).__name__}")
    return schema


def grammar_text(*, json_schema: Any = None, regex: Optional[str] = None, grammar: Optional[str] = None,
                 json: bool = False) -> Optional[tuple]:
    """(llguidance grammar, description) for at most one of the four kinds; None for none."""
    given = [name for name, v in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar))
             if v is not None]
    if not isinstance(json, bool):
        raise TypeError(f"json must be True or False, got {json!r}")
    if json:
        given.append("json")
    if len(given) > 1:
        raise ValueError(f"pass at most one of json_schema=, regex=, grammar=, json=True; got {', '.join(given)}")
    if not given:
        return None
    llg = _llguidance()
    kind = given[0]
    if kind in ("json_schema", "json"):
        schema = ANY_JSON_OBJECT if kind == "json" else schema_dict(json_schema)
        try:
            return llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT), kind
        except ValueError as e:     # not serializable as JSON (sets, objects...)
            raise ConstraintError(f"json_schema: {_one_line(str(e))}") from None
    if kind == "regex":
        if not isinstance(regex, str):
            raise TypeError(f"regex must be a str, got {type(regex).__name__}")
        return llg.LLMatcher.grammar_from_regex(regex), "regex"
    if not isinstance(grammar, str):
        raise TypeError(f"grammar must be a str (Lark or GBNF), got {type(grammar).__name__}")
    try:
        return llg.grammar_from("grammar", grammar), "grammar"   # Lark, or GBNF converted to Lark
    except ValueError as e:
        raise ConstraintError(f"grammar: {_one_line(str(e))}") from None


# ---- compiled constraints ----------------------------------------------------------------------
class ConstraintStats:
    """Cumulative figures over the generations of one Constraint (for bench/)."""

    def __init__(self):
        self.masks = 0              # masks computed
        self.mask_seconds = 0.0     # time llguidance spent computing them (worker thread)
        self.wait_seconds = 0.0     # time the sampler waited for a mask (the part not overlapped)
        self.sample_seconds = 0.0   # time sampling on the allowed tokens (gather + Sampler.sample)

    def to_dict(self) -> dict:
        return dict(vars(self))


class Constraint:
    """A grammar compiled against one model's vocabulary; reusable by any number of
    generations of that model (each gets its own matcher from ``start()``).

    Build with ``Constraint.for_model(model, json_schema=... | regex=... | grammar=... |
    json=True)``; a malformed or unsatisfiable one raises ConstraintError (a ValueError)."""

    def __init__(self, grammar: str, tokenizer, n_vocab: int, kind: str = "grammar"):
        llg = _llguidance()
        self.grammar = grammar
        self.kind = kind
        self.n_vocab = int(n_vocab)
        self._tokenizer = tokenizer
        self._ll_tokenizer = ll_tokenizer(tokenizer, self.n_vocab)
        error = llg.LLMatcher.validate_grammar(grammar, self._ll_tokenizer)
        if error:
            raise ConstraintError(f"{kind}: {_one_line(error)}")
        self._initial = llg.LLMatcher(self._ll_tokenizer, grammar, log_level=0)
        if self._initial.is_error():
            raise ConstraintError(f"{kind}: {_one_line(self._initial.get_error())}")
        self.stats = ConstraintStats()

    @classmethod
    def for_model(cls, model, *, json_schema: Any = None, regex: Optional[str] = None,
                  grammar: Optional[str] = None, json: bool = False) -> "Constraint":
        made = grammar_text(json_schema=json_schema, regex=regex, grammar=grammar, json=json)
        if made is None:
            raise ValueError("Constraint.for_model needs one of json_schema=, regex=, grammar=, json=True")
        return cls(made[0], model.tokenizer, model.n_vocab, kind=made[1])

    def check_model(self, tokenizer, n_vocab: int) -> None:
        if tokenizer is not self._tokenizer or int(n_vocab) != self.n_vocab:
            raise ValueError("this Constraint was built for another model's vocabulary; "
                             "build it with Constraint.for_model(model, ...)")

    def start(self) -> "Guide":
        return Guide(self)

    def finish(self, record) -> None:
        """Called once a generation under this constraint has ended (tool calls override it)."""

    def __repr__(self) -> str:
        return f"<lowbit.Constraint {self.kind} n_vocab={self.n_vocab}>"


def response_format_args(fmt: Any) -> Dict[str, Any]:
    """The constraint arguments (of generate / chat / resolve) that an OpenAI ``response_format``
    asks for: {} for {"type": "text"}, {"json": True} for {"type": "json_object"} (with
    llama-cpp-python's "schema" key: {"json_schema": schema}), {"json_schema": schema} for
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}. ValueError otherwise."""
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        schema = fmt.get("schema")
        return {"json": True} if schema is None else {"json_schema": schema}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema", {}), Mapping):
            raise ValueError("json_schema must be {\"name\": ..., \"schema\": {...}}")
        return {"json_schema": spec.get("schema", {"type": "object"})}
    raise ValueError(f"type must be 'text', 'json_object' or 'json_schema', got {kind!r}")


def resolve(model, *, json_schema: Any = None, regex: Optional[str] = None, grammar: Optional[str] = None,
            json: bool = False, constraint: Optional[Constraint] = None) -> Optional[Constraint]:
    """The Constraint a generate/chat call asked for (compiled now, before any token), or None."""
    made = grammar_text(json_schema=json_schema, regex=regex, grammar=grammar, json=json)
    if constraint is not None:
        if made is not None:
            raise ValueError("pass either constraint= or one of json_schema=, regex=, grammar=, json=True")
        if not isinstance(constraint, Constraint):
            raise TypeError(f"constraint must be a lowbit.Constraint, got {type(constraint).__name__}")
        constraint.check_model(model.tokenizer, model.n_vocab)
        return constraint
    if made is None:
        return None
    return Constraint(made[0], model.tokenizer, model.n_vocab, kind=made[1])


def allowed_ids(words: np.ndarray, n_vocab: int) -> np.ndarray:
    """The token ids whose bit is set in a mask of int32 words (ascending)."""
    return np.flatnonzero(np.unpackbits(words.view(np.uint8), count=n_vocab, bitorder="little"))


class Guide:
    """One generation's matcher. The mask for the next token is computed in a worker thread
    from the moment the previous token is accepted; ``allowed`` / ``sample`` wait for it."""

    def __init__(self, constraint: Constraint):
        self.constraint = constraint
        self._matcher = constraint._initial.deep_copy()
        self._n_vocab = constraint.n_vocab
        self._words = np.zeros((self._n_vocab + 31) // 32, dtype=np.int32)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lowbit-mask")
        self._pending = self._pool.submit(self._fill)
        self._ids: Optional[np.ndarray] = None      # allowed ids of the current step, once known
        self.complete = False

    def _fill(self) -> float:
        t0 = time.perf_counter()
        self._matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        return time.perf_counter() - t0

    def _error(self, what: str) -> ConstraintError:
        return ConstraintError(f"{self.constraint.kind} constraint: {what}: {_one_line(self._matcher.get_error())}")

    def allowed(self) -> np.ndarray:
        """The token ids the grammar allows at this step, ascending (waits for the mask)."""
        if self._ids is None:
            stats = self.constraint.stats
            t0 = time.perf_counter()
            stats.mask_seconds += self._pending.result()
            stats.wait_seconds += time.perf_counter() - t0
            stats.masks += 1
            if self._matcher.is_error():
                raise self._error("computing the mask failed")
            self._ids = allowed_ids(self._words, self._n_vocab)
            if self._ids.size == 0:
                raise ConstraintError(f"{self.constraint.kind} constraint: no token of the vocabulary "
                                      f"can continue the output here")
        return self._ids

    def sample(self, sampler, logits, history: Sequence[int]) -> int:
        """``sampler.sample`` on the allowed tokens only (their ids map the row to tokens for the
        bias and penalties): the same distribution as the logits of every other token at -inf,
        computed on the allowed entries (a token forced by the grammar needs no draw, and is
        counted as generated). Why not -inf on the full vocabulary: numpy's argpartition, the
        sampler's top-k, takes 23 ms instead of 1 on 262k logits that are nearly all equal."""
        ids = self.allowed()
        t0 = time.perf_counter()
        if ids.size == 1:
            token = int(ids[0])
            sampler.accept(token)
        else:
            token = int(sampler.sample(np.asarray(logits)[ids], history, ids=ids))
        self.constraint.stats.sample_seconds += time.perf_counter() - t0
        return token

    def accept(self, token: int) -> bool:
        """Advance past ``token``; True when the grammar is complete (nothing more may follow,
        or an end-of-generation token ended it). Otherwise the next mask starts computing."""
        if not self._matcher.consume_token(int(token)):
            raise self._error(f"token {int(token)} was rejected")
        self._ids = None
        if self._matcher.is_stopped():
            self.complete = True
            return True
        self._pending = self._pool.submit(self._fill)
        return False

    def close(self, record=None) -> None:
        """End of the generation: the worker is released (a mask still in flight finishes on
        its own: it holds the matcher and buffer it writes); the constraint may post-process
        ``record``."""
        self._pool.shutdown(wait=False)
        if record is not None:
            self.constraint.finish(record)
