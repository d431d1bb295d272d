"""imatrix files in llama.cpp's two formats: round trips, files laid out byte by byte as
llama-imatrix writes them, and `quantize --imatrix FILE` using sums / counts."""
from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest

import lowbit
from lowbit.quant import blocks
from lowbit.quant.imatrix import IMatrix, IMatrixError, load
from lowbit.quant.quantize import quantize

from model_factory import write_default_model


def random_imatrix(rng, n_entries=3):
    im = IMatrix(datasets=["calib.txt"], chunk_count=5, chunk_size=512)
    for i in range(n_entries):
        n = int(rng.choice([64, 128, 256]))
        x = rng.standard_normal((int(rng.integers(20, 60)), n)) * rng.uniform(0.1, 3, n)
        im.add(f"blk.{i}.attn_q.weight", x)
    return im


def test_add_sums_squares_and_counts_rows():
    rng = np.random.default_rng(1)
    im = IMatrix()
    a, b = rng.standard_normal((7, 32)), rng.standard_normal((5, 32))
    im.add("w", a)
    im.add("w", b)
    e = im.entries["w"]
    assert e.counts.tolist() == [12]
    np.testing.assert_allclose(e.sums[0], (a ** 2).sum(0) + (b ** 2).sum(0))
    np.testing.assert_allclose(im.importance("w"), np.concatenate([a, b]).__pow__(2).mean(0), rtol=1e-6)
    with pytest.raises(IMatrixError):
        im.add("w", rng.standard_normal((2, 16)))


def test_gguf_round_trip(tmp_path):
    im = random_imatrix(np.random.default_rng(2))
    path = tmp_path / "im.gguf"
    im.save(path)
    back = load(path)
    assert back.datasets == im.datasets and back.chunk_count == 5 and back.chunk_size == 512
    assert sorted(back.entries) == sorted(im.entries)
    for name, e in im.entries.items():
        np.testing.assert_allclose(back.entries[name].sums, e.sums, rtol=1e-6)
        assert back.entries[name].counts.tolist() == e.counts.tolist()
    # the layout llama.cpp reads: W.in_sum2 [n, n_mat] and W.counts [1, n_mat], F32
    r = gguf.GGUFReader(str(path))
    assert bytes(r.fields["general.type"].parts[-1]).decode() == "imatrix"
    shapes = {t.name: [int(s) for s in t.shape] for t in r.tensors}
    for name, e in im.entries.items():
        assert shapes[f"{name}.in_sum2"] == [e.sums.shape[1], 1]
        assert shapes[f"{name}.counts"] == [1, 1]


def test_dat_round_trip_and_mean(tmp_path):
    im = random_imatrix(np.random.default_rng(3))
    path = tmp_path / "im.dat"
    im.save(path)
    back = load(path)
    assert back.datasets == ["calib.txt"] and back.chunk_count == 5
    for name in im.entries:
        np.testing.assert_allclose(back.importance(name), im.importance(name), rtol=1e-6)
    again = tmp_path / "again.dat"
    back.save(again)
    assert again.read_bytes() == path.read_bytes()


def write_llama_dat(path, entries, last_chunk, dataset):
    """The bytes llama-imatrix's save_imatrix_legacy writes, built independently."""
    out = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(values))
        out += np.asarray(values, dtype="<f4").tobytes()
    out += struct.pack("<i", last_chunk) + struct.pack("<i", len(dataset)) + dataset.encode()
    path.write_bytes(out)


def test_reads_llama_cpp_dat_layout(tmp_path):
    rng = np.random.default_rng(4)
    v1, v2 = rng.uniform(0, 5, 64), rng.uniform(0, 5, 128)
    path = tmp_path / "llama.dat"
    write_llama_dat(path, [("blk.0.ffn_up.weight", 4, v1), ("output.weight", 2, v2)], 4, "wiki.txt")
    im = load(path)
    np.testing.assert_allclose(im.importance("blk.0.ffn_up.weight"), (v1.astype(np.float32) / 4), rtol=1e-6)
    np.testing.assert_allclose(im.importance("output.weight"), (v2.astype(np.float32) / 2), rtol=1e-6)
    assert im.datasets == ["wiki.txt"] and im.chunk_count == 4
    data = path.read_bytes()
    (tmp_path / "cut.dat").write_bytes(data[:40])
    with pytest.raises(IMatrixError, match="truncated"):
        load(tmp_path / "cut.dat")


def test_reads_gguf_written_by_another_writer(tmp_path):
    rng = np.random.default_rng(5)
    sums = rng.uniform(0, 100, (2, 64)).astype(np.float32)     # two stacked experts
    counts = np.array([[10.0], [0.0]], dtype=np.float32)
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), arch="imatrix")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["a.txt", "b.txt"])
    w.add_uint32("imatrix.chunk_count", 3)
    w.add_uint32("imatrix.chunk_size", 256)
    w.add_tensor("blk.0.ffn_up_exps.weight.in_sum2", sums)
    w.add_tensor("blk.0.ffn_up_exps.weight.counts", counts)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    im = load(tmp_path / "x.gguf")
    assert im.datasets == ["a.txt", "b.txt"] and im.chunk_size == 256
    got = im.importance("blk.0.ffn_up_exps.weight")
    np.testing.assert_allclose(got[:64], sums[0] / 10, rtol=1e-6)
    assert np.all(got[64:] == 1.0)        # an expert that saw no data


def test_rejects_a_model_gguf(tmp_path):
    path = write_default_model(str(tmp_path / "m.gguf"), "llama", "F32")
    with pytest.raises(IMatrixError, match="not an imatrix"):
        load(path)


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_quantize_with_imatrix_file(tmp_path, fmt):
    model = write_default_model(str(tmp_path / "m.gguf"), "llama", "F32")
    rng = np.random.default_rng(6)
    im = IMatrix()
    with lowbit.GGUFFile(model) as f:
        mats = [t for t in f.tensors if t.name.startswith("blk.") and len(t.shape) == 2]
        for t in mats:
            im.add(t.name, rng.standard_normal((30, t.shape[0])) * rng.uniform(0.05, 4, t.shape[0]))
    path = tmp_path / f"im.{fmt}"
    im.save(path)
    out = str(tmp_path / "q.gguf")
    r = quantize(model, out, "Q4_0", imatrix=str(path))
    loaded = load(path)
    with lowbit.GGUFFile(model) as src, lowbit.GGUFFile(out) as dst:
        for t in mats:
            x = src.tensor_bytes(t.name).view(np.float32).reshape(-1, t.shape[0])
            want = blocks.quantize(x, r.tensor_types[t.name], imatrix=loaded.importance(t.name))
            assert np.array_equal(dst.tensor_bytes(t.name).reshape(x.shape[0], -1), want), t.name


# ---- computing an imatrix -----------------------------------------------------------------------
def test_compute_imatrix_sums_layer_inputs(tmp_path):
    from lowbit.quant.calibrate import compute_imatrix
    from reference_forward import ReferenceModel, rms_norm
    path = write_default_model(str(tmp_path / "m.gguf"), "llama", "F32")
    text = " ".join(f"word{i % 37} and more{i % 11}" for i in range(300))
    im = compute_imatrix(path, text, n_ctx=64, n_chunks=3)
    names = {t.name for t in lowbit.GGUFFile(path).tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    assert set(im.entries) == names and im.chunk_count == 3 and im.chunk_size == 64
    assert all(e.counts.tolist() == [3 * 64] for e in im.entries.values())
    np.testing.assert_array_equal(im.entries["blk.0.attn_q.weight"].sums, im.entries["blk.0.attn_v.weight"].sums)
    # layer 0's attention input, computed independently in float64
    tok = lowbit.Tokenizer.from_metadata(lowbit.GGUFFile(path).metadata)
    ids = tok.encode(text, add_special=False)
    ref = ReferenceModel(path)
    want = np.zeros(ref.hparams.n_embd)
    for c in range(3):
        chunk = list(ids[c * 64:(c + 1) * 64])
        if tok.add_bos:
            chunk[0] = tok.bos_id
        x = rms_norm(ref.embed(chunk), ref.weight("blk.0.attn_norm.weight"), ref.hparams.rms_eps)
        want += (x ** 2).sum(0)
    np.testing.assert_allclose(im.entries["blk.0.attn_q.weight"].sums[0], want, rtol=1e-4)


def test_imatrix_cli_writes_a_file_quantize_reads(tmp_path):
    from lowbit.cli import main
    path = write_default_model(str(tmp_path / "m.gguf"), "llama", "F32")
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"token{i % 53}" for i in range(400)))
    out = tmp_path / "im.dat"
    assert main(["imatrix", path, "--text", str(text), "-o", str(out), "--ctx", "64", "--chunks", "2", "-q"]) == 0
    im = load(out)
    assert im.datasets == [str(text)] and len(im.entries) > 0
    assert main(["quantize", path, str(tmp_path / "q.gguf"), "--type", "Q4_K_M", "--imatrix", str(out), "-q"]) == 0
