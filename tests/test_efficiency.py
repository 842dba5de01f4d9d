"Stage 70 (efficiency) on the smoke study: tidy measurements with the machine on every row, exponents refitted independently, figures."
import math
import numpy as np
import pandas as pd
import pytest

@pytest.fixture(scope="module")
def out(smoke_run):
    rd, table = smoke_run
    assert "70_efficiency" in list(table.stage)
    return rd/"70_efficiency"

def test_measurements_are_tidy(out):
    m = pd.read_csv(out/"measurements.csv")
    assert set(m.component) == {"encoder", "lm_prefill", "end_to_end"}
    assert {"machine", "cpu_kind", "torch", "timm", "transformers", "threads", "scan_path", "device_clock", "dtype", "lm"} <= set(m.columns)
    assert m.cpu_kind.isin(["native bf16", "no native bf16"]).all() and (m.threads >= 1).all()
    assert not m.duplicated(["encoder", "side", "component", "repeat"]).any()
    assert (m.wall_ms > 0).all() and (m.peak_mb >= 0).all()
    # the outer clock covers the two inner ones
    w = m.pivot_table(index=["encoder", "side", "repeat"], columns="component", values="wall_ms")
    assert (w.end_to_end >= w.encoder + w.lm_prefill - 1e-3).all()
    # image tokens grow with the side; the LM sees them all plus the prompt
    t = m.groupby(["encoder", "side"]).tokens.first().unstack()
    assert (t.diff(axis=1).iloc[:, 1:] > 0).all().all()
    ssm = m[m.family == "VMamba"]
    assert ssm.scan_path.str.startswith(("cpu (compiled", "torch (", "cuda (")).all()

def test_fits_refit_independently(out):
    "Every fitted exponent equals a least-squares slope of log median vs log pixels recomputed from measurements.csv."
    m, f = pd.read_csv(out/"measurements.csv"), pd.read_csv(out/"fits.csv")
    n = 0
    for _, r in f[f.value == "wall_ms"].iterrows():
        g = m[(m.encoder == r.encoder) & (m.component == r.component)]
        med = g.groupby("pixels").wall_ms.median()
        if len(med) < 2: assert math.isnan(r.exponent); continue
        slope = np.polyfit(np.log(med.index.to_numpy(float)), np.log(med.to_numpy()), 1)[0]
        assert abs(slope - r.exponent) < 1e-9, (r.encoder, r.component, slope, r.exponent)
        assert r.ci_low <= r.exponent + 1e-9 and r.exponent <= r.ci_high + 1e-9
        n += 1
    assert n >= 2

def test_stops_scan_share_and_figures(out):
    s = pd.read_csv(out/"stops.csv")
    assert s.stopped.notna().all() and len(s) == len(pd.read_csv(out/"measurements.csv").encoder.unique())
    sh = pd.read_csv(out/"scan_share.csv")
    assert list(sh.backend) == ["torch", "auto"] and sh.scan_share.between(0, 1).all()
    figs = {p.name for p in (out/"figures").iterdir()}
    assert {"fig4.png", "fig4.pdf", "exponents.png", "exponents.pdf"} <= figs
