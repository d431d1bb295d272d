"""Constrained decoding: JSON Schema, regular expressions and grammars enforced while sampling.

The grammar engine is llguidance (an abi3 wheel with no torch dependency; the compiler, the
Earley parser and the token-trie mask live there). This module only feeds it lowbit's own
vocabulary and puts its token mask in front of the sampler:

    constraint = Constraint.for_model(model, json_schema={...})   # compiled and checked once
    guide = constraint.start()        # one generation: its own matcher, first mask in flight
    logits = guide.apply(logits)      # disallowed tokens -> -inf (waits for the mask)
    done = guide.accept(token)        # advance; starts the next mask in a worker thread
    guide.close(record)

The next mask is computed in a worker thread while the engine evaluates the sampled token:
both llguidance's mask computation and Engine.eval release the GIL, so on a machine with a
spare core the mask costs only the time the sampler waits for it (``Constraint.stats``).

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
            if tokenizer._attrs[tid] & (ATTR_CONTROL | ATTR_UNKNOWN):
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
        self.apply_seconds = 0.0    # time spent putting masks on logits

    def to_dict(self) -> dict:
        return dict(vars(self))


class Constraint:
    """A grammar compiled against one model's vocabulary; reusable by any number of
    generations of that model (each gets its own matcher from ``start()``).

    Build with ``Constraint.for_model(model, json_schema=... | regex=... | grammar=... |
    json=True)``; a malformed or unsatisfiable one raises ConstraintError (a ValueError)."""

    kind = "grammar"

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
        if not self._initial.is_accepting() and not self._allows_any_token():
            raise ConstraintError(f"{kind}: no token of this model's vocabulary can start it")
        self.stats = ConstraintStats()

    def _allows_any_token(self) -> bool:
        words = np.zeros((self.n_vocab + 31) // 32, dtype=np.int32)
        probe = self._initial.deep_copy()
        probe.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        return not probe.is_error() and bool(words.any())

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


_NEG_INF_BITS = np.float32(-np.inf).view(np.int32)


def mask_logits(logits: np.ndarray, words: np.ndarray) -> np.ndarray:
    """A copy of 1-D ``logits`` with the tokens whose bit is clear in ``words`` at -inf.

    float32 logits go through their bits: out = ((b ^ NEG_INF) & keep) ^ b, with keep = 0 for
    an allowed token (b stays) and -1 for a forbidden one (NEG_INF): four branch-free passes,
    about 0.2 ms on 262k tokens where np.where takes 2 ms on a mixed mask (mispredictions)."""
    allowed = np.unpackbits(words.view(np.uint8), count=logits.shape[-1], bitorder="little")
    if logits.dtype != np.float32:
        return np.where(allowed.view(bool), logits, -np.inf)
    keep = allowed.astype(np.int32)
    keep -= 1
    bits = logits.view(np.int32)
    out = bits ^ _NEG_INF_BITS
    out &= keep
    out ^= bits
    return out.view(np.float32)


class Guide:
    """One generation's matcher. The mask for the next token is computed in a worker thread
    from the moment the previous token is accepted; ``apply`` waits for it."""

    def __init__(self, constraint: Constraint):
        self.constraint = constraint
        self._matcher = constraint._initial.deep_copy()
        self._n_vocab = constraint.n_vocab
        self._words = np.zeros((self._n_vocab + 31) // 32, dtype=np.int32)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lowbit-mask")
        self._pending = self._pool.submit(self._fill)
        self.complete = False

    def _fill(self) -> float:
        t0 = time.perf_counter()
        self._matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        return time.perf_counter() - t0

    def _error(self, what: str) -> ConstraintError:
        return ConstraintError(f"{self.constraint.kind} constraint: {what}: {_one_line(self._matcher.get_error())}")

    def apply(self, logits) -> np.ndarray:
        """``logits`` with every token the grammar forbids here set to -inf (a new array)."""
        stats = self.constraint.stats
        t0 = time.perf_counter()
        stats.mask_seconds += self._pending.result()
        t1 = time.perf_counter()
        stats.wait_seconds += t1 - t0
        stats.masks += 1
        if self._matcher.is_error():
            raise self._error("computing the mask failed")
        out = mask_logits(np.asarray(logits), self._words)
        stats.apply_seconds += time.perf_counter() - t1
        return out

    def accept(self, token: int) -> bool:
        """Advance past ``token``; True when the grammar is complete (nothing more may follow,
        or an end-of-generation token ended it). Otherwise the next mask starts computing."""
        if not self._matcher.consume_token(int(token)):
            raise self._error(f"token {int(token)} was rejected")
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
