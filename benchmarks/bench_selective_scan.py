"""Selective scan speed and accuracy: the "torch" backend vs the sequential "ref" at VMamba-T/S stage shapes (224x224).

Run single-threaded (the numbers in the docs were taken this way):
    OMP_NUM_THREADS=1 python benchmarks/bench_selective_scan.py [--quick] [--csv out.csv]
Times are the minimum over repeats, measured in one process; compare ratios, not absolute times, on a shared machine.
"""
import math, os, platform, sys, tempfile, time
import pandas as pd
import torch
from fastcore.script import call_parse
from tqdm.auto import tqdm
from vlmssm.ssm import selective_scan

# VMamba-T/S (v2, ssm_ratio 2) at 224: (stage, L, 4 directions x d_inner); N=16 is the v0 ("vanilla") state size
STAGES = [(0, 3136, 4 * 192), (1, 784, 4 * 384), (2, 196, 4 * 768), (3, 49, 4 * 1536)]
NAMES = "u delta A B C D delta_bias".split()

def make_inputs(bs, dim, L, N, G=4, seed=0):
    "VMamba-like scan inputs at mamba's initialisation: grouped B/C, A = -[1..N], dt in [1e-3, 1e-1]."
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    dt = torch.exp(torch.rand(dim, generator=g) * math.log(100) + math.log(1e-3))
    return dict(u=r(bs, dim, L), delta=0.5 * r(bs, dim, L), A=-torch.arange(1, N + 1).float().repeat(dim, 1),
                B=r(bs, G, N, L), C=r(bs, G, N, L), D=torch.ones(dim), delta_bias=dt + torch.log(-torch.expm1(-dt)))

def best_ms(f, repeats):
    "Minimum wall time of f() over `repeats` runs, after one warm-up when repeats > 1."
    if repeats > 1: f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return 1e3 * min(ts)

def run(x, backend, grad=False, gout=None):
    "One call (optionally with backward); returns (out, grads)."
    if not grad:
        with torch.no_grad(): return selective_scan(**x, delta_softplus=True, backend=backend), None
    xs = {k: v.detach().requires_grad_() for k, v in x.items()}
    out = selective_scan(**xs, delta_softplus=True, backend=backend)
    return out, torch.autograd.grad(out, [xs[k] for k in NAMES], gout)

def ref_grad_bytes(bs, dim, L, N, itemsize):
    "Rough memory the sequential reference's autograd graph keeps (about 5 (batch, dim, N) tensors per step)."
    return 5 * bs * dim * max(N, 2) * L * itemsize

def bench_one(stage, bs, dim, L, N, repeats, ref_repeats, mem_cap):
    x = make_inputs(bs, dim, L, N)
    x64 = {k: v.double() for k, v in x.items()}
    gout = torch.randn(bs, dim, L, generator=torch.Generator().manual_seed(1))
    row = dict(stage=stage, batch=bs, channels=dim, L=L, N=N)
    rr = ref_repeats if L < 3136 else 1
    row["ref_fwd_ms"] = best_ms(lambda: run(x, "ref"), rr)
    row["torch_fwd_ms"] = best_ms(lambda: run(x, "torch"), repeats)
    row["fwd_speedup"] = row["ref_fwd_ms"] / row["torch_fwd_ms"]
    ref_fits = ref_grad_bytes(bs, dim, L, N, 4) <= mem_cap
    row["ref_fwdbwd_ms"] = best_ms(lambda: run(x, "ref", True, gout), rr) if ref_fits else float("nan")
    row["torch_fwdbwd_ms"] = best_ms(lambda: run(x, "torch", True, gout), repeats)
    row["fwdbwd_speedup"] = row["ref_fwdbwd_ms"] / row["torch_fwdbwd_ms"]
    out, grads = run(x, "torch", True, gout)
    if ref_grad_bytes(bs, dim, L, N, 8) <= mem_cap:
        out64, grads64 = run(x64, "ref", True, gout.double())
        row["grad_max_rel_err"] = max(((g.double() - g64).abs().max() / g64.abs().max()).item() for g, g64 in zip(grads, grads64))
    else:
        out64, _ = run(x64, "ref"); row["grad_max_rel_err"] = float("nan")
    row["max_abs_err"] = (out.double() - out64).abs().max().item()
    row["out_max_abs"] = out64.abs().max().item()
    return row

@call_parse
def main(quick: bool = False,       # batch 1, N=1 only (4 shapes)
         csv: str = "",             # also write the table to this CSV path
         repeats: int = 5,          # timed runs of the "torch" backend (minimum reported)
         ref_repeats: int = 2,      # timed runs of the reference (1 at L=3136)
         mem_gb: float = 2.0,       # skip the reference's backward where its autograd graph would exceed this
        ):
    "Print forward and forward+backward times of the 'torch' and 'ref' selective-scan backends and the error vs float64."
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
          f"{platform.processor() or platform.machine()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    shapes = [(s, bs, dim, L, N) for bs in ((1,) if quick else (1, 8)) for N in ((1,) if quick else (1, 16)) for s, L, dim in STAGES]
    rows = [bench_one(*sh, repeats, ref_repeats, mem_gb * 2**30) for sh in tqdm(shapes, desc="shapes", file=sys.stderr)]
    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))
    print("NaN ref times: reference backward skipped (its autograd graph would exceed --mem-gb); "
          "grad_max_rel_err: max over inputs of max|g - g64| / max|g64|.")
    if csv:
        d = os.path.dirname(os.path.abspath(csv)); os.makedirs(d, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=d, suffix=".tmp", delete=False) as f: df.to_csv(f, index=False)
        os.replace(f.name, csv); print("wrote", csv)
    return df
