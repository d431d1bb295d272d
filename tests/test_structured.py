"""Structured output (runtime/constraints.py, llguidance): JSON schemas, regular expressions
and grammars enforced while sampling, on the real models.

SmolLM2 (49k vocabulary) runs the 50-generation loops at temperature 1.0; gemma3 (262k
vocabulary, about 2.5x slower per token here) runs 10 per schema, which covers its
tokenizer (SPM, byte tokens) without doubling the suite's time. Every output must parse and
validate (jsonschema) or fully match the regex, and end because the grammar completed
(finish_reason "stop") within max_new_tokens: the schemas bound every string, array and
number (multipleOf 0.25, exact in binary for jsonschema's float check; a free "number" lets a small model write digits for ever), so each
output has a fixed worst-case length below the token budget."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import lowbit
from lowbit import Constraint, ConstraintError
from lowbit.runtime import constraints
from _models import real_model_or_skip

jsonschema = pytest.importorskip("jsonschema")

SMOL, GEMMA = "smollm2-135m-instruct", "gemma3-270m"
N_SMOL, N_GEMMA = 50, 10

PERSON = {   # nested object, enum, integer and number bounds, required fields, a pattern
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "height_m": {"type": "number", "minimum": 0.5, "maximum": 2.5, "multipleOf": 0.25},
        "role": {"type": "string", "enum": ["engineer", "doctor", "artist", "teacher"]},
        "address": {"type": "object",
                    "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 24},
                                   "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False},
        "verified": {"type": "boolean"},
    },
    "required": ["name", "age", "height_m", "role", "address"],
    "additionalProperties": False,
}
ORDER = {    # arrays (bounded, of objects and of enums), nested objects, numbers with bounds
    "type": "object",
    "properties": {
        "order_id": {"type": "integer", "minimum": 1000, "maximum": 9999},
        "items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
            "type": "object",
            "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                           "qty": {"type": "integer", "minimum": 1, "maximum": 20},
                           "price": {"type": "number", "minimum": 0, "maximum": 500, "multipleOf": 0.25}},
            "required": ["sku", "qty", "price"], "additionalProperties": False}},
        "tags": {"type": "array", "maxItems": 2, "items": {"enum": ["gift", "express", "fragile"]}},
        "status": {"enum": ["new", "paid", "shipped"]},
    },
    "required": ["order_id", "items", "status"],
    "additionalProperties": False,
}
DATE = r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
PHONE = r"\+1 \([2-9][0-9]{2}\) [0-9]{3}-[0-9]{4}"


@pytest.fixture(scope="module")
def smol():
    with lowbit.load(real_model_or_skip(SMOL), n_ctx=1024) as m:
        yield m


@pytest.fixture(scope="module")
def gemma():
    with lowbit.load(real_model_or_skip(GEMMA), n_ctx=1024) as m:
        yield m


def _ask(model, text):
    if model.tokenizer.chat_template:
        return lambda **kw: model.chat([{"role": "user", "content": text}], repetition_penalty=1.0, **kw)
    return lambda **kw: model.generate(text, **kw)


def _generate_and_validate(model, schema, prompt, n, max_new_tokens):
    constraint = Constraint.for_model(model, json_schema=schema)   # compiled once for the n runs
    ask = _ask(model, prompt)
    for seed in range(n):
        g = ask(constraint=constraint, temperature=1.0, seed=seed, max_new_tokens=max_new_tokens)
        assert g.finish_reason == "stop", (seed, g.finish_reason, g.text)
        jsonschema.validate(json.loads(g.text), schema)


@pytest.mark.parametrize("schema,prompt", [(PERSON, "Describe a fictional person as JSON."),
                                           (ORDER, "Write a shop order as JSON.")], ids=["person", "order"])
def test_every_smollm2_output_validates(smol, schema, prompt):
    _generate_and_validate(smol, schema, prompt, N_SMOL, max_new_tokens=300)


@pytest.mark.parametrize("schema,prompt", [(PERSON, "A person, as JSON: "), (ORDER, "A shop order, as JSON: ")],
                         ids=["person", "order"])
def test_every_gemma3_output_validates(gemma, schema, prompt):
    _generate_and_validate(gemma, schema, prompt, N_GEMMA, max_new_tokens=300)


@pytest.mark.parametrize("name,regex,prompt", [("date", DATE, "The date of the moon landing was "),
                                               ("phone", PHONE, "Call our office at ")])
def test_regex_always_matches(smol, gemma, name, regex, prompt):
    for model, n in ((smol, N_SMOL), (gemma, N_GEMMA)):
        constraint = Constraint.for_model(model, regex=regex)
        for seed in range(n):
            g = model.generate(prompt, constraint=constraint, temperature=1.0, seed=seed, max_new_tokens=40)
            assert g.finish_reason == "stop" and re.fullmatch(regex, g.text), (model.architecture, seed, g.text)


def test_json_true_gives_a_json_object(smol):
    for seed in range(5):
        g = smol.chat([{"role": "user", "content": "Give me a JSON object about cats."}], json=True,
                      temperature=1.0, seed=seed, max_new_tokens=300)
        if g.finish_reason == "stop":
            assert isinstance(json.loads(g.text), dict), g.text
        else:                       # any JSON object may be long: a cut one is still a JSON prefix
            assert g.finish_reason == "length" and g.text.startswith("{")


def test_lark_and_gbnf_grammars(smol):
    lark = 'start: "The answer is " ANSWER "."\nANSWER: "yes" | "no" | "maybe"'
    gbnf = 'root ::= "The answer is " answer "."\nanswer ::= "yes" | "no" | "maybe"'
    for grammar in (lark, gbnf):
        for seed in range(5):
            g = smol.generate("Is the sky blue?", grammar=grammar, temperature=1.0, seed=seed, max_new_tokens=30)
            assert g.finish_reason == "stop" and re.fullmatch(r"The answer is (yes|no|maybe)\.", g.text), g.text


def test_grammar_may_name_a_special_token_and_ends_on_it(smol):
    """Control tokens are marked for llguidance (0xFF prefix): <|im_end|> in a grammar is the token."""
    g = smol.generate("Say ok:", grammar='start: " ok" <|im_end|>', temperature=1.0, max_new_tokens=10)
    assert (g.text, g.finish_reason) == (" ok", "stop")


def test_pydantic_model_class_as_schema(smol):
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):
        name: pydantic.constr(max_length=20)
        population: pydantic.conint(ge=0, le=10**8)

    # greedy: the schema allows extra properties, and a sampled run (T 1.0) may follow them past
    # max_new_tokens on another float order of the kernels (one seed did after a kernel change)
    g = smol.chat([{"role": "user", "content": "A city as JSON."}], json_schema=City, temperature=0.0,
                  max_new_tokens=80)
    assert g.finish_reason == "stop"
    City.model_validate_json(g.text)


@pytest.mark.parametrize("kwargs,match", [
    ({"json_schema": {"type": "integer", "minimum": 5, "maximum": 3}}, "Unsatisfiable"),
    ({"json_schema": {"allOf": [{"type": "string"}, {"type": "integer"}]}}, "Unsatisfiable"),
    ({"json_schema": {"type": "frobnicate"}}, "Invalid type"),
    ({"json_schema": '{"type": "object"'}, "not valid JSON"),
    ({"json_schema": {"type": "string", "pattern": "[a-"}}, "regex"),
    ({"regex": "[0-9]{3,1}"}, "regex"),
    ({"grammar": "start: undefined_rule"}, "unknown name"),
    ({"grammar": "root ::= (\"a\""}, "grammar"),
])
def test_bad_constraints_raise_before_any_token(smol, kwargs, match):
    before = smol.last
    with pytest.raises(ConstraintError, match=match) as info:
        smol.generate("Hello", stream=True, max_new_tokens=5, **kwargs)   # raised at the call, not on iteration
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert smol.last is before


def test_argument_errors(smol):
    with pytest.raises(ValueError, match="at most one"):
        smol.generate("x", regex="a", json=True)
    with pytest.raises(TypeError, match="json_schema"):
        smol.generate("x", json_schema=42)
    with pytest.raises(TypeError, match="json must be"):
        smol.generate("x", json="yes")
    with pytest.raises(ValueError, match="another model"):
        Constraint(Constraint.for_model(smol, regex="a").grammar, smol.tokenizer, smol.n_vocab + 32).check_model(
            smol.tokenizer, smol.n_vocab)


def test_eos_only_where_the_grammar_may_end(smol):
    constraint = Constraint.for_model(smol, regex="[0-9]+")
    guide = constraint.start()
    eos = set(smol.tokenizer.eot_ids)
    first = set(guide.allowed().tolist())
    assert first and not first & eos, "EOS allowed before any digit"
    digit = smol.tokenize("7", add_special=False)[0]
    assert digit in first
    assert not guide.accept(digit)
    assert eos <= set(guide.allowed().tolist()), "EOS forbidden after a complete number"
    assert guide.accept(min(eos)) and guide.complete
    guide.close()


def test_allowed_ids_read_llguidance_bit_order():
    rng = np.random.default_rng(1234)
    for n in (1, 31, 32, 33, 1000, 262144):
        words = rng.integers(-2**31, 2**31, size=(n + 31) // 32, dtype=np.int64).astype(np.int32)
        want = [t for t in range(n) if (int(words[t // 32]) >> (t % 32)) & 1]
        assert constraints.allowed_ids(words, n).tolist() == want


@pytest.mark.parametrize("repeat_last_n", [-1, 0, 1, 7, 64])
def test_sampling_on_allowed_tokens_equals_masking_to_minus_inf(repeat_last_n):
    """The sampler chain on the allowed entries (their ids map the row to tokens) gives exactly
    the full-vocabulary chain's values with the other tokens at -inf, on fresh random data,
    bias and presence / frequency penalties included."""
    from lowbit.runtime.sampling import Sampler, SamplingParams
    rng = np.random.default_rng(repeat_last_n + 100)
    n = 5000
    for trial in range(20):
        logits = (rng.standard_normal(n) * 3).astype(np.float32)
        ids = np.sort(rng.choice(n, size=int(rng.integers(1, 400)), replace=False))
        history = rng.choice(np.concatenate([ids, rng.integers(0, n, 50)]), size=100).tolist()
        bias = {int(t): float(rng.uniform(-5, 5)) for t in rng.choice(n, size=30)}
        params = SamplingParams(temperature=0.9, top_k=int(rng.integers(0, 60)), top_p=0.9, min_p=0.02,
                                repetition_penalty=1.3, repeat_last_n=repeat_last_n, seed=trial,
                                presence_penalty=0.7, frequency_penalty=0.4, logit_bias=bias)
        sampler = Sampler(params)
        for t in rng.choice(ids, size=10):        # generated tokens: counted by the sampler
            sampler.accept(int(t))
        full = np.full(n, -np.inf, dtype=np.float32)
        full[ids] = logits[ids]
        want = sampler.filtered_logits(full, history)[ids]
        got = sampler.filtered_logits(logits[ids], history, ids=ids)
        assert np.array_equal(got, want)
        twin = Sampler(params)
        for t in sampler.core.counts.items():
            for _ in range(t[1]):
                twin.accept(t[0])
        assert sampler.sample(logits[ids], history, ids=ids) == twin.sample(full, history)
    greedy = Sampler(SamplingParams(temperature=0))
    assert greedy.sample(logits[ids], [], ids=ids) == int(np.argmax(full))


def test_llguidance_tokenizer_is_built_once_per_model(smol):
    a = constraints.ll_tokenizer(smol.tokenizer, smol.n_vocab)
    assert constraints.ll_tokenizer(smol.tokenizer, smol.n_vocab) is a
    assert a.vocab_size == smol.n_vocab and sorted(a.eos_tokens) == sorted(smol.tokenizer.eot_ids)
    # token bytes as lowbit renders them: decoding through llguidance equals lowbit's decode
    ids = smol.tokenize("Hello, wörld! {\"a\": [1, 2]}", add_special=False)
    assert a.decode_str(ids) == smol.detokenize(ids)


def test_stream_text_equals_record_and_stats_count_masks(smol):
    constraint = Constraint.for_model(smol, regex=DATE)
    stream = smol.generate("Date: ", constraint=constraint, stream=True, temperature=1.0, seed=3, max_new_tokens=40)
    text = "".join(stream)
    g = stream.result
    assert text == g.text and re.fullmatch(DATE, text) and g.finish_reason == "stop"
    assert constraint.stats.masks == g.generated_tokens


# ---- CLI ------------------------------------------------------------------------------------------
def _cli(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(lowbit.__file__)),
               LOWBIT_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "lowbit", *args], env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def test_cli_structured_flags(tmp_path):
    path = real_model_or_skip(SMOL)
    schema_file = tmp_path / "person.json"
    schema_file.write_text(json.dumps(PERSON))
    grammar_file = tmp_path / "answer.gbnf"
    grammar_file.write_text('root ::= "The answer is " ("yes" | "no") "."\n')
    common = ["-q", "--json", "--temp", "1.0", "--seed", "5", "-n", "200", "--ctx", "1024"]
    r = _cli(tmp_path, "run", path, "Describe a person as JSON.", "--json-schema", str(schema_file), *common)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["finish_reason"] == "stop"
    jsonschema.validate(json.loads(record["text"]), PERSON)
    r = _cli(tmp_path, "run", path, "Today's date:", "--regex", DATE, *common)
    assert r.returncode == 0 and re.fullmatch(DATE, json.loads(r.stdout)["text"]), r.stderr
    r = _cli(tmp_path, "run", path, "Is it raining?", "--grammar", str(grammar_file), *common)
    assert r.returncode == 0 and re.fullmatch(r"The answer is (yes|no)\.", json.loads(r.stdout)["text"]), r.stderr
    r = _cli(tmp_path, "run", path, "A JSON object about dogs:", "--format", "json", "-q", "--temp", "0",
             "-n", "300", "--ctx", "1024")
    assert r.returncode == 0 and r.stdout.startswith("{"), r.stderr


@pytest.mark.parametrize("setup,args,match", [
    (None, ["--json-schema", "{tmp}/missing.json"], "--json-schema: no such file"),
    ("{", ["--json-schema", "{tmp}/bad.json"], "is not valid JSON"),
    ('{"type": "integer", "minimum": 9, "maximum": 1}', ["--json-schema", "{tmp}/bad.json"], "Unsatisfiable"),
    (None, ["--regex", "[0-9"], "regex"),
    ("root ::= (", ["--grammar", "{tmp}/bad.json"], "grammar"),
    (None, ["--regex", "a", "--format", "json"], "at most one"),
])
def test_cli_bad_constraint_is_one_line_exit_2(tmp_path, setup, args, match):
    path = real_model_or_skip(SMOL)
    if setup is not None:
        (tmp_path / "bad.json").write_text(setup)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = _cli(tmp_path, "run", path, "hi", "-q", *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowbit: error:") and match in lines[0], r.stderr


def test_repl_format_json(tmp_path):
    """`lowbit chat` through a real pseudo-terminal: /format json constrains the replies."""
    pexpect = pytest.importorskip("pexpect")
    path = real_model_or_skip(SMOL)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(lowbit.__file__)),
               LOWBIT_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1", TERM="dumb")
    child = pexpect.spawn(sys.executable, ["-m", "lowbit", "chat", path, "-t", "2", "--temperature", "0",
                                           "--ctx", "1024", "-n", "300"],
                          env=env, encoding="utf-8", timeout=120, dimensions=(40, 400))
    try:
        child.expect(">>> ")
        for line, answer in (("/format yaml", "usage: /format json"), ("/format json", r"\(format json\)")):
            child.sendline(line)
            child.expect(answer)
            child.expect(">>> ")
        child.sendline("Describe your favourite dog.")
        child.expect(">>> ")
        reply = child.before.split("Describe your favourite dog.", 1)[1].strip()
        assert isinstance(json.loads(reply), dict), reply
        child.sendline("/show")
        child.expect(r"format\s+json")
        child.expect(">>> ")
        child.sendline("/format off")
        child.expect(r"\(format off\)")
        child.expect(">>> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_closing_a_constrained_stream_cancels_it_and_the_model_goes_on(smol):
    constraint = Constraint.for_model(smol, json_schema=PERSON)
    stream = smol.chat([{"role": "user", "content": "A person as JSON."}], constraint=constraint, stream=True,
                       temperature=1.0, seed=2, max_new_tokens=200)
    pieces = [next(stream), next(stream)]
    stream.close()
    assert stream.result.finish_reason == "cancelled" and "".join(pieces) == stream.result.text
    g = smol.chat([{"role": "user", "content": "A person as JSON."}], constraint=constraint, temperature=1.0,
                  seed=2, max_new_tokens=200)
    assert g.finish_reason == "stop" and g.text.startswith("".join(pieces))   # same seed, same start
    jsonschema.validate(json.loads(g.text), PERSON)
    assert g.to_dict()["tool_calls"] == []

