"""`lowbit info`: hyper-parameters, tensor histogram, bpw and the memory estimate."""
import json

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from lowbit.cli import main as cli_main
from lowbit.runtime.info import describe_file
from lowbit.runtime.memory import Hparams, kv_cache_bytes

from _models import real_model_path


def write_model(path, arch="llama", window=None, n_layers=4, ctx=1024):
    w = GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.context_length", ctx)
    w.add_uint32(f"{arch}.embedding_length", 64)
    w.add_uint32(f"{arch}.block_count", n_layers)
    w.add_uint32(f"{arch}.feed_forward_length", 128)
    w.add_uint32(f"{arch}.attention.head_count", 4)
    w.add_uint32(f"{arch}.attention.head_count_kv", 2)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    if window:
        w.add_uint32(f"{arch}.attention.sliding_window", window)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(100)])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.normal(size=(100, 64)).astype(np.float32))
    w.add_tensor("blk.0.attn_q.weight", rng.normal(size=(64, 64)).astype(np.float16))
    for i in range(1, n_layers):     # block_count must match the layers the tensors have
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(1, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_describe_synthetic(tmp_path):
    d = describe_file(write_model(tmp_path / "m.gguf"), n_ctx=256)
    assert d["architecture"] == "llama" and d["n_params"] == 100 * 64 + 64 * 64 + 3
    assert d["tensor_types"]["F32"]["params"] == 6403 and d["tensor_types"]["F16"]["bytes"] == 64 * 64 * 2
    assert d["bits_per_weight"] == pytest.approx(8 * (6403 * 4 + 4096 * 2) / 10499, abs=1e-3)
    # KV f16: layers x ctx x kv_heads x (k + v head dims) x 2 bytes, head_dim = 64 / 4
    assert d["memory"]["kv_cache_bytes"] == 4 * 256 * 2 * (16 + 16) * 2
    assert d["tokenizer"]["vocab_size"] == 100 and d["hparams"]["head_count_kv"] == 2


def test_sliding_window_layers_keep_their_window(tmp_path):
    path = write_model(tmp_path / "g.gguf", arch="gemma3", window=64, n_layers=12)
    d = describe_file(path, n_ctx=1000)
    per_cell = 2 * (16 + 16) * 2
    # gemma3: every 6th layer is global (2 of 12), the other 10 keep a ring of the window plus
    # one batch (the engine's rule: min(n_ctx, 64 + 512) cells)
    assert d["memory"]["swa_layers"] == 10
    assert d["memory"]["kv_cache_bytes"] == (2 * 1000 + 10 * 576) * per_cell
    # q8_0 rows are blocks of 32: a head_dim of 16 cannot use it, as the engine says
    assert "head_dim" in describe_file(path, n_ctx=1000, kv_type="q8_0")["memory"]["error"]


def test_cli_info_json_and_errors(tmp_path, capsys):
    path = write_model(tmp_path / "m.gguf")
    assert cli_main(["info", str(path), "--json", "--ctx", "128"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["memory"]["n_ctx"] == 128
    assert cli_main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| F32 | 4 |" in out and "memory estimate at n_ctx=1024" in out
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 8)
    assert cli_main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error: ") and "GGUF" not in err.split(":")[0]
    with pytest.raises(ValueError, match="kv_type"):
        kv_cache_bytes(Hparams.from_config({"arch": "llama", "n_layers": 1, "n_ctx_train": 16, "n_embd": 8,
                                            "n_head": 1, "n_head_kv": 1, "head_dim": 8, "sliding_window": 0,
                                            "layer_is_swa": [False]}), 16, "q4")


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_real_models(name):
    path = real_model_path(name)
    if path is None:
        pytest.skip(f"{name} not available")
    d = describe_file(path)
    r = GGUFReader(path)
    assert d["n_params"] == sum(int(t.n_elements) for t in r.tensors)
    assert d["tensor_bytes"] == sum(int(t.n_bytes) for t in r.tensors)
    assert d["n_tensors"] == len(r.tensors)
    if name == "gemma3-270m":
        assert d["architecture"] == "gemma3" and d["tokenizer"]["vocab_size"] == 262144
        assert set(d["tensor_types"]) == {"F32", "Q5_0", "Q4_K", "Q8_0", "Q6_K"}
        assert d["memory"]["swa_layers"] == 15
    else:
        assert d["architecture"] == "llama" and d["hparams"]["block_count"] == 30
        # 30 layers x 8192 cells x 3 kv heads x (64 + 64) x 2 bytes
        assert d["memory"]["kv_cache_bytes"] == 30 * 8192 * 3 * 128 * 2


def test_memory_check_names_estimate_and_largest_context(tmp_path):
    from lowbit.errors import InsufficientMemory
    from lowbit.runtime.model import check_memory
    from lowbit.runtime.gguf_file import GGUFFile
    with GGUFFile(write_model(tmp_path / "m.gguf")) as g:
        meta = g.metadata
    per_token = 4 * 2 * (16 + 16) * 2            # layers x kv heads x (k+v dims) x f16
    check_memory(meta, 1000, 100, "f16", available=1000 + 100 * per_token)      # fits exactly
    with pytest.raises(InsufficientMemory, match=r"n_ctx=100000 needs .* largest context that fits is about 50 tokens"):
        check_memory(meta, 1000, 100_000, "f16", available=1000 + 50 * per_token)
    with pytest.raises(MemoryError, match="weights alone"):
        check_memory(meta, 10**9, 10, "f16", available=10**6)


@pytest.mark.parametrize("arch,overrides", [("llama", {}), ("qwen2", {}), ("qwen3", {}), ("phi3", {}),
                                            ("gemma3", {"sliding_window": 8, "n_layer": 7})])
def test_estimate_equals_what_the_engine_allocates(tmp_path, arch, overrides):
    """The estimate before load and the engine's own KV cache agree to the byte (one rule in the
    core), sliding windows included, for several contexts, batch sizes and KV types."""
    import model_factory as mf
    from lowbit import _core
    from lowbit.runtime.memory import kv_cache_bytes as estimate_kv
    spec = mf.default_spec(arch, "F32", head_dim=32, n_embd=128, **overrides)
    path = mf.write_tiny_model(tmp_path / f"{arch}.gguf", spec)
    hp = Hparams.from_config(_core.model_config(path))
    for n_ctx, n_batch in [(16, 512), (64, 7), (200, 32), (256, 256)]:
        for kv_type in ("f16", "q8_0"):
            e = _core.Engine(path, n_ctx, 1, n_batch, kv_type)
            assert estimate_kv(hp, n_ctx, kv_type, n_batch) == e.memory()["kv_cache"]["bytes"], \
                (n_ctx, n_batch, kv_type)
            e.close()
