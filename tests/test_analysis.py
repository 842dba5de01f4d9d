"Stages 50 (correlations) and 80 (findings): every coefficient recomputed independently with scipy from the shipped CSVs; the smoke study's stage outputs recomputed from its item files."
import itertools, json, re
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from vlmssm.analysis import correlation, correlation_table, paper_table

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def shipped():
    "The paper's table joined by hand from the shipped CSVs (not through `paper_table`)."
    res, enc = pd.read_csv(ROOT/"data"/"paper_results.csv"), pd.read_csv(ROOT/"data"/"encoders.csv")
    t = res.merge(enc, left_on="public_id", right_on="id", how="left", validate="one_to_one")
    t["x_top1"] = t.top1.fillna(t.init_top1)                                 # own top-1, else the classifier it starts from
    t["x_params"] = t.params.str.rstrip("M").astype(float) * 1e6
    return t

def _exact_p(x, y, stat):
    "Two-sided exact permutation p as 2·min(P(T ≤ t), P(T ≥ t)) over all n! orders of x (scipy's definition)."
    t = stat(x, y)
    null = np.array([stat(np.asarray(p), y) for p in itertools.permutations(x)])
    tol = 1e-12 * max(1.0, abs(t))
    return min(1.0, 2 * min((null <= t + tol).mean(), (null >= t - tol).mean()))

def test_paper_correlations_recomputed_with_scipy(shipped):
    ct = correlation_table(paper_table(), predictors=("top1", "params"), n_boot=200).set_index(["predictor", "outcome", "method"])
    for pr, col, logx in (("top1", "x_top1", False), ("params", "x_params", True)):
        for oc, ycol in (("vqa", "weighted_vqa"), ("loc", "weighted_loc"), ("overall", "weighted_overall")):
            d = shipped.dropna(subset=[col])
            x, y = (np.log10(d[col]) if logx else d[col]).to_numpy(float), d[ycol].to_numpy(float)
            for m, f in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
                row = ct.loc[(pr, oc, m)]
                assert row.n == len(d) and abs(row.r - f(x, y).statistic) < 1e-12, (pr, oc, m)
                assert row.low <= row.r <= row.high
    assert ct.loc[("top1", "overall", "pearson"), "n"] == 7 and ct.loc[("params", "overall", "pearson"), "n"] == 8

def test_exact_p_values_recomputed_by_enumeration(shipped):
    "p over all 8! (Pearson, Spearman on log10 params) and 7! (Kendall on top-1) orders, computed without the library."
    pear = lambda a, b: np.corrcoef(a, b)[0, 1]
    x, y = np.log10(shipped.x_params.to_numpy()), shipped.weighted_loc.to_numpy()
    assert abs(correlation(x, y, "pearson")["p"] - _exact_p(x, y, pear)) < 1e-9
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    assert abs(correlation(x, y, "spearman")["p"] - _exact_p(rx, ry, pear)) < 1e-9
    d = shipped.dropna(subset=["x_top1"])
    x7, y7 = d.x_top1.to_numpy(float), d.weighted_overall.to_numpy(float)
    assert abs(correlation(x7, y7, "kendall")["p"] - _exact_p(x7, y7, lambda a, b: stats.kendalltau(a, b).statistic)) < 1e-9

def test_bootstrap_ci_agrees_with_scipy_bootstrap(shipped):
    "The models-resampled percentile CI of Pearson's r matches scipy.stats.bootstrap (paired) on a tie-free pair of columns."
    x, y = shipped.weighted_vqa.to_numpy(), shipped.weighted_loc.to_numpy()
    ours = correlation(x, y, "pearson", n_boot=20000)
    ref = stats.bootstrap((x, y), lambda a, b, axis=-1: stats.pearsonr(a, b, axis=axis).statistic, paired=True, vectorized=True, n_resamples=20000,
                          method="percentile", rng=np.random.default_rng(5)).confidence_interval
    assert abs(ours["low"] - ref.low) < 0.03 and abs(ours["high"] - ref.high) < 0.03, (ours, ref)

@pytest.fixture(scope="module")
def stages(smoke_run):
    rd, table = smoke_run
    assert {"50_correlation", "80_findings"} <= set(table.stage)
    return rd

def test_correlation_stage_outputs(stages):
    out = stages/"50_correlation"
    models = pd.read_csv(out/"models_study.csv")
    items = pd.concat([pd.read_json(f, lines=True) for f in sorted((stages/"40_evaluate"/"predictions").glob("*.jsonl"))])
    for _, m in models.iterrows():                                           # the study's scores recomputed from the item files
        g = items[items.encoder == m.model]
        assert abs(m["overall"] - 100 * g.score.mean()) < 1e-9 and abs(m["loc"] - 100 * g[g.group == "loc"].score.mean()) < 1e-9
    corr = pd.read_csv(out/"correlations.csv")
    assert set(corr.table) == {"paper", "study"} and set(corr.method) == {"pearson", "spearman", "kendall"}
    st = corr[corr.table == "study"]
    for pr, g in st.groupby("predictor"):                                    # n = the models that have this predictor (a dense variant has no top-1)
        assert (g.n == models[pr].notna().sum()).all(), pr
    assert (st.r.isna() == st.note.notna()).all()                             # a missing coefficient says why (smoke: constant scores)
    for name in ("correlations_paper", "fig1_paper", "fig1_study"):
        assert (out/"figures"/f"{name}.png").exists() and (out/"figures"/f"{name}.pdf").exists(), name
    assert len(pd.read_csv(out/"power.csv"))

def test_findings_stage_outputs(stages):
    out = stages/"80_findings"
    f = pd.read_csv(out/"findings.csv")
    assert set(f.finding) == {"F1", "F2", "F3", "F4"}
    d = pd.read_csv(stages/"40_evaluate"/"differences.csv")
    f2 = f[(f.finding == "F2") & (f.table == "study")]
    assert set(zip(f2.a, f2.b)) == {("vit-pico@det", "vit-pico")}             # the smoke study's dense variant against its source
    for _, r in f[f.finding.isin(["F1", "F2"]) & (f.table == "study")].iterrows():  # F1/F2 effects are stage 40's paired differences
        e = d[(d.encoder == r.a) & (d.other == r.b) & (d.metric == f"weighted_{r.score}")].iloc[0]
        assert (r["diff"], r.low, r.high) == pytest.approx((e["diff"], e.low, e.high))
        assert r.verdict == ("replicates" if e.low > 0 else "reversed" if e.high < 0 else "inconclusive")
    assert (out/"figures"/"fig2_similarity.png").exists() and (out/"figures"/"fig2_similarity.pdf").exists()
    md = (out/"findings.md").read_text()
    assert all(f"## {k}" in md for k in ("F1", "F2", "F3", "F4")) and "## Missing inputs" not in md   # smoke runs every stage
    for link in re.findall(r"\]\(([^)]+)\)", md):                          # every link resolves from the stage's folder
        assert (out/link).resolve().exists(), link

def test_findings_say_what_is_missing(stages, tmp_path):
    "Without stages 30 and 60 the findings still come out, F4's recovery is not run, and findings.md lists what was missing."
    import shutil
    from vlmssm.config import load_config
    from vlmssm.findings import findings_markdown, findings_study
    for s in ("10_pretrain", "40_evaluate", "50_correlation"): shutil.copytree(stages/s, tmp_path/s)
    cfg = load_config("smoke")
    res = findings_study(cfg, tmp_path, log=lambda *a: None)
    assert any(m.startswith("60_stabilization") for m in res["missing"]) and not res["panels"]
    assert "## Missing inputs" in findings_markdown(res, cfg, tmp_path) and set(res["tests"].finding) == {"F1", "F2", "F3", "F4"}
