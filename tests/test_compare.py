"""lowbit compare: every candidate quantized and measured against the baseline by the engine (speed
probes on in one test, off in the others), the markdown/JSON output, and the clear errors."""
from __future__ import annotations

import json
import os

import pytest

from lowbit.cli import main
from lowbit.quant.compare import compare, format_markdown, parse_candidates, ratios_to_rtn

from model_factory import write_default_model


@pytest.fixture
def setup(tmp_path):
    model = write_default_model(str(tmp_path / "tiny.gguf"), "llama", "F32")
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{(i * 7) % 41} x{i % 13}" for i in range(600)))
    return model, str(text)


def test_parse_candidates():
    assert parse_candidates(["q4_k_m", "Q3_K_M:rtn"], True) == [("Q4_K_M", "imatrix"), ("Q3_K_M", "rtn")]
    assert parse_candidates(["Q8_0"], False) == [("Q8_0", "rtn")]
    with pytest.raises(ValueError, match="needs calibration"):
        parse_candidates(["Q4_K_M:gptq"], True)
    with pytest.raises(ValueError, match="needs an imatrix"):
        parse_candidates(["Q4_K_M:imatrix"], False)
    with pytest.raises(ValueError, match="unknown quantization type"):
        parse_candidates(["Q7_K"], False)


def test_compare_quality(setup, tmp_path):
    model, text_path = setup
    text = open(text_path).read()
    from lowbit.quant.calibrate import compute_imatrix
    im = compute_imatrix(model, text, n_ctx=64, n_chunks=2)
    steps = []
    rep = compare(model, ["Q8_0:rtn", "Q4_K_M:rtn", "Q4_K_M:imatrix", "Q2_K:rtn", "Q4_K_M:gptq", "Q4_K_M:awq"],
                  text, imatrix=im, calib_text=text,
                  out_dir=str(tmp_path / "out"), n_ctx=64, n_chunks=3, measure_speed=False, progress=steps.append)
    names = [r.name for r in rep.rows]
    assert names == ["baseline", "Q8_0 rtn", "Q4_K_M rtn", "Q4_K_M imatrix", "Q2_K rtn", "Q4_K_M gptq", "Q4_K_M awq"]
    base, q8, q4, q4i, q2, q4g, q4a = rep.rows
    assert q4a.kld_mean > 0 and q4a.file_bytes == q4.file_bytes
    # intervals: bootstrap over the 3 chunks, containing the mean; ratios to the same type's rtn row
    for r in rep.rows[1:]:
        assert len(r.kld_chunks) == 3 and r.kld_ci[0] <= r.kld_mean <= r.kld_ci[1]
        assert r.kld_mean == pytest.approx(sum(r.kld_chunks) / 3, rel=1e-9)
    ratios = ratios_to_rtn(rep)
    assert set(ratios) == {"Q4_K_M imatrix", "Q4_K_M gptq", "Q4_K_M awq"}
    ratio, (lo, hi) = ratios["Q4_K_M imatrix"]
    assert ratio == pytest.approx(q4i.kld_mean / q4.kld_mean) and lo <= ratio <= hi
    assert q4g.kld_mean > 0 and q4g.file_bytes == q4.file_bytes
    assert base.kld_mean == 0.0 and base.same_top1_pct == 100.0 and base.bits_per_weight == 32.0
    assert 0 < q8.kld_mean < q4.kld_mean < q2.kld_mean
    assert q8.bits_per_weight > q4.bits_per_weight > q2.bits_per_weight
    assert q4i.kld_mean > 0 and q4i.file_bytes == q4.file_bytes
    assert all(os.path.exists(r.path) for r in rep.rows) and rep.n_chunks == 3
    assert any("quantizing Q2_K" in s for s in steps)
    table = format_markdown(rep)
    assert table.count("\n| ") == 8 and "| baseline |" in table and f"{ratio:.3f} [{lo:.3f}, {hi:.3f}]" in table


def test_compare_cli_json_and_errors(setup, tmp_path, capsys):
    model, text = setup
    assert main(["compare", model, "--types", "Q8_0", "--text", text, "--ctx", "64", "--chunks", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out["rows"]] == ["baseline", "Q8_0 rtn"]
    assert all(r["tg_tok_s"] > 0 and r["peak_rss_bytes"] > 0 for r in out["rows"])   # the speed probes ran
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert main(["compare", model, "--types", "Q8_0", "--text", text, "--no-speed",
                     "--plot", str(tmp_path / "p.png")]) == 2
        assert "needs matplotlib" in capsys.readouterr().err


def test_report_round_trips_through_json(setup, tmp_path):
    from lowbit.quant.compare import CompareReport
    model, text_path = setup
    rep = compare(model, ["Q8_0"], open(text_path).read(), n_ctx=64, n_chunks=1, measure_speed=False)
    back = CompareReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert back == rep and format_markdown(back) == format_markdown(rep)
