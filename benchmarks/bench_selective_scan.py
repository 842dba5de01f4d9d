"""Selective scan speed and accuracy: the "torch" and "cpu" (compiled) backends vs the sequential "ref" at VMamba-T/S
stage shapes (224x224), and the forward under outside load.

Usage (one thread is what the team runs by default on the shared 2-core machine):
    OMP_NUM_THREADS=1 python benchmarks/bench_selective_scan.py [--quick] [--threads 1,2] [--csv out.csv]
    python benchmarks/bench_selective_scan.py --load [--csv load.csv]
--threads runs the whole table once per intra-op thread count (torch.set_num_threads), the reference and the fast
backends always with the same setting in the same process. Times are minima over repeats; the reference and the fast
backends are measured in interleaved rounds so that load from other processes hits them alike. Compare ratios, not
absolute times, on a shared machine (the load average is printed with each table).
--load starts a process that keeps every core busy (a 2-thread matmul loop), then times the forward at VMamba-S stage 1
(768 channels x 3,136 positions, N=1) with 1 and with 2 threads, interleaved, for each backend: the ratio 2 threads / 1
thread under load is what a user's default thread setting costs on a busy machine (medians and minima).
"""
import math, os, platform, statistics, subprocess, sys, time
import pandas as pd
import torch
from fastcore.script import call_parse
from vlmssm.utils import write_csv
from tqdm.auto import tqdm
from vlmssm.ssm import selective_scan, scan_path

FAST = ("torch", "cpu")                # the fast backends compared with "ref"

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

def paired_ms(f_ref, fs_fast, rounds, fast_repeats, ref=True):
    "Minimum times (ms) of f_ref and each of fs_fast over `rounds` interleaved rounds of 1 ref run and `fast_repeats` runs of each."
    if ref: f_ref()
    for f in fs_fast: f()
    t_ref, t_fast = float("inf"), [float("inf")] * len(fs_fast)
    for _ in range(rounds):
        if ref: t_ref = min(t_ref, once_ms(f_ref))
        t_fast = [min([t] + [once_ms(f) for _ in range(fast_repeats)]) for t, f in zip(t_fast, fs_fast)]
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
    row["ref_fwd_ms"], ts = paired_ms(lambda: run(x, "ref"), [lambda b=b: run(x, b) for b in FAST], rr, repeats)
    for b, t in zip(FAST, ts): row[f"{b}_fwd_ms"], row[f"{b}_fwd_speedup"] = t, row["ref_fwd_ms"] / t
    ref_fits = ref_grad_bytes(bs, dim, L, N, 4) <= mem_cap
    row["ref_fwdbwd_ms"], ts = paired_ms(lambda: run(x, "ref", True, gout), [lambda b=b: run(x, b, True, gout) for b in FAST],
                                         rr, repeats, ref=ref_fits)
    for b, t in zip(FAST, ts): row[f"{b}_fwdbwd_ms"], row[f"{b}_fwdbwd_speedup"] = t, row["ref_fwdbwd_ms"] / t
    with_grads = ref_grad_bytes(bs, dim, L, N, 8) <= mem_cap
    out64, grads64 = run(x64, "ref", True, gout.double()) if with_grads else (run(x64, "ref")[0], None)
    for b in FAST:
        out, grads = run(x, b, True, gout)
        row[f"{b}_max_abs_err"] = (out.double() - out64).abs().max().item()
        row[f"{b}_grad_max_rel_err"] = (max(((g.double() - g64).abs().max() / g64.abs().max()).item() for g, g64 in zip(grads, grads64))
                                        if with_grads else float("nan"))
    row["out_max_abs"] = out64.abs().max().item()
    return row

def cpu_kind():
    "'native bf16' if the CPU has AVX512-BF16 or AMX, else 'no native bf16' (the two kinds of 2-core machines)."
    try: flags = open("/proc/cpuinfo").read()
    except OSError: return "unknown"
    return "native bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no native bf16"

BUSY = "import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nwhile True: a @ a\n"

def under_load(rounds=15, repeats=3):
    "Forward at VMamba-S stage 1 with 1 and 2 threads while a 2-thread matmul process keeps the cores busy."
    x = make_inputs(1, 768, 3136, 1)
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        time.sleep(2.0)
        ts = {(b, nt): [] for b in ("ref",) + FAST for nt in (1, 2)}
        load = []
        for i in tqdm(range(rounds), desc="under load", file=sys.stderr):
            for nt in (1, 2):
                torch.set_num_threads(nt)
                for b in ("ref",) + FAST:
                    n = 1 if b == "ref" else repeats
                    if b == "ref" and i % 3: continue            # the reference every third round (it is slow)
                    ts[(b, nt)] += [once_ms(lambda: run(x, b)) for _ in range(n)]
            load.append(os.getloadavg()[0])
    finally:
        busy.kill(); busy.wait()
    rows = []
    for b in ("ref",) + FAST:
        for nt in (1, 2):
            t = ts[(b, nt)]; t1 = ts[(b, 1)]
            rows.append(dict(backend=b, threads=nt, n=len(t), median_ms=statistics.median(t), min_ms=min(t), max_ms=max(t),
                             median_vs_1thread=statistics.median(t) / statistics.median(t1), min_vs_1thread=min(t) / min(t1),
                             median_speedup_vs_ref=statistics.median(ts[("ref", nt)]) / statistics.median(t),
                             load_1min_mean=sum(load) / len(load)))
    return pd.DataFrame(rows)

@call_parse
def main(quick: bool = False,       # batch 1, N=1 only (4 shapes)
         threads: str = "",         # comma-separated intra-op thread counts, one table each (e.g. "1,2"); "" = torch's current
         csv: str = "",             # also write the table(s) to this CSV path (a `threads` column tells them apart)
         repeats: int = 5,          # timed runs of the "torch" backend per round (minimum reported)
         ref_repeats: int = 4,      # interleaved rounds (one reference run each; half as many at L=3136)
         mem_gb: float = 2.0,       # skip the reference's backward where its autograd graph would exceed this
         load: bool = False,        # instead: the forward at VMamba-S stage 1 under a 2-thread busy process, 1 vs 2 threads
         rounds: int = 15,          # --load: interleaved rounds
        ):
    "Print forward and forward+backward times of the 'torch', 'cpu' and 'ref' selective-scan backends and the error vs float64."
    counts = [int(t) for t in threads.split(",") if t.strip()] or [torch.get_num_threads()]
    print(f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{cpu_kind()}, auto on CPU = {scan_path('cpu')}")
    if load:
        df = under_load(rounds, repeats=3)
        df.insert(0, "cpu_kind", cpu_kind())
        with pd.option_context("display.width", 220, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
            print(df.to_string(index=False))
        if csv: write_csv(df, csv); print("wrote", csv)
        return df
    shapes = [(s, bs, dim, L, N) for bs in ((1,) if quick else (1, 8)) for N in ((1,) if quick else (1, 16)) for s, L, dim in STAGES]
    dfs = []
    for nt in counts:
        torch.set_num_threads(nt)
        load0 = os.getloadavg()[0]
        rows = [bench_one(*sh, repeats, ref_repeats, mem_gb * 2**30) for sh in tqdm(shapes, desc=f"{nt} thread(s)", file=sys.stderr)]
        df = pd.DataFrame(rows); df.insert(0, "threads", nt); df.insert(0, "cpu_kind", cpu_kind())
        df["load_1min_before"], df["load_1min_after"] = load0, os.getloadavg()[0]; dfs.append(df)
        print(f"\n== {nt} intra-op thread(s), ref and torch alike; 1-min load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after ==")
        with pd.option_context("display.width", 220, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
            print(df.to_string(index=False))
    print("NaN ref times: reference backward skipped (its autograd graph would exceed --mem-gb); "
          "*_grad_max_rel_err: max over inputs of max|g - g64| / max|g64|; *_max_abs_err: forward vs float64.")
    df = pd.concat(dfs, ignore_index=True)
    if csv:
        write_csv(df, csv); print("wrote", csv)
    return df
