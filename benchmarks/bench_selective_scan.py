"""Selective scan speed and accuracy: the "torch" backend vs the sequential "ref" at VMamba-T/S stage shapes (224x224).

Usage (one thread is what the team runs by default on the shared 2-core machine):
    OMP_NUM_THREADS=1 python benchmarks/bench_selective_scan.py [--quick] [--threads 1,2] [--csv out.csv]
--threads runs the whole table once per intra-op thread count (torch.set_num_threads), the reference and the "torch"
backend always with the same setting in the same process. Times are minima over repeats; the reference and the "torch"
backend are measured in interleaved rounds so that load from other processes hits both alike. Compare ratios, not
absolute times, on a shared machine (the load average is printed with each table).
"""
import math, os, platform, sys, time
import pandas as pd
import torch
from fastcore.script import call_parse
from vlmssm.utils import write_csv
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

def once_ms(f):
    "Wall time of one f() call in ms."
    t0 = time.perf_counter(); f(); return 1e3 * (time.perf_counter() - t0)

def paired_ms(f_ref, f_fast, rounds, fast_repeats, ref=True):
    "Minimum times (ms) of f_ref and f_fast over `rounds` interleaved rounds of 1 ref run and `fast_repeats` fast runs."
    if ref: f_ref()
    f_fast()
    t_ref = t_fast = float("inf")
    for _ in range(rounds):
        if ref: t_ref = min(t_ref, once_ms(f_ref))
        t_fast = min([t_fast] + [once_ms(f_fast) for _ in range(fast_repeats)])
    return (t_ref if ref else float("nan")), t_fast

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
    rr = ref_repeats if L < 3136 else max(1, ref_repeats // 2)
    row["ref_fwd_ms"], row["torch_fwd_ms"] = paired_ms(lambda: run(x, "ref"), lambda: run(x, "torch"), rr, repeats)
    row["fwd_speedup"] = row["ref_fwd_ms"] / row["torch_fwd_ms"]
    ref_fits = ref_grad_bytes(bs, dim, L, N, 4) <= mem_cap
    row["ref_fwdbwd_ms"], row["torch_fwdbwd_ms"] = paired_ms(lambda: run(x, "ref", True, gout), lambda: run(x, "torch", True, gout),
                                                             rr, repeats, ref=ref_fits)
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
         threads: str = "",         # comma-separated intra-op thread counts, one table each (e.g. "1,2"); "" = torch's current
         csv: str = "",             # also write the table(s) to this CSV path (a `threads` column tells them apart)
         repeats: int = 5,          # timed runs of the "torch" backend per round (minimum reported)
         ref_repeats: int = 4,      # interleaved rounds (one reference run each; half as many at L=3136)
         mem_gb: float = 2.0,       # skip the reference's backward where its autograd graph would exceed this
        ):
    "Print forward and forward+backward times of the 'torch' and 'ref' selective-scan backends and the error vs float64."
    counts = [int(t) for t in threads.split(",") if t.strip()] or [torch.get_num_threads()]
    print(f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    shapes = [(s, bs, dim, L, N) for bs in ((1,) if quick else (1, 8)) for N in ((1,) if quick else (1, 16)) for s, L, dim in STAGES]
    dfs = []
    for nt in counts:
        torch.set_num_threads(nt)
        load0 = os.getloadavg()[0]
        rows = [bench_one(*sh, repeats, ref_repeats, mem_gb * 2**30) for sh in tqdm(shapes, desc=f"{nt} thread(s)", file=sys.stderr)]
        df = pd.DataFrame(rows); df.insert(0, "threads", nt); dfs.append(df)
        print(f"\n== {nt} intra-op thread(s), ref and torch alike; 1-min load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after ==")
        with pd.option_context("display.width", 220, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
            print(df.to_string(index=False))
    print("NaN ref times: reference backward skipped (its autograd graph would exceed --mem-gb); "
          "grad_max_rel_err: max over inputs of max|g - g64| / max|g64|.")
    df = pd.concat(dfs, ignore_index=True)
    if csv:
        write_csv(df, csv); print("wrote", csv)
    return df
