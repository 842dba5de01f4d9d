"""GPU check of the selective scan (a few minutes on one GPU; prints a compact report and writes it as JSON).

    python benchmarks/gpu_check.py --out gpu_check.json

1. parity: the "torch" backend on CUDA vs on CPU and vs the float64 reference, fp32, incl. the hard regime;
2. if mamba-ssm imports: its CUDA kernel vs the "torch" backend (values, all gradients, timing);
3. VMamba-S (vlmssm.backbones.vmamba, random weights) with the "torch" backend on CUDA: output vs CPU and images/s.
Without CUDA it prints one line and exits 0.
"""
import json, math, os, sys, time, traceback
import torch
from fastcore.script import call_parse
from vlmssm.ssm import selective_scan, selective_scan_ref
from vlmssm.utils import atomic_write

NAMES = "u delta A B C D z delta_bias".split()

def inputs(bs, dim, L, N, G=4, hard=False, bc="grouped", z=False, seed=0, device="cpu"):
    "Scan inputs: VMamba-like (mamba dt init, A = -[1..N]) or the hard regime (delta up to 50, A = -exp(U(0,3)))."
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    dt = torch.exp(torch.rand(dim, generator=g) * math.log(100) + math.log(1e-3))
    shape = {"grouped": (bs, G, N, L), "shared": (bs, N, L), "const": (dim, N)}[bc]
    x = dict(u=r(bs, dim, L), delta=0.5 * r(bs, dim, L), A=-torch.arange(1, N + 1).float().repeat(dim, 1),
             B=r(*shape), C=r(*shape), D=r(dim), z=r(bs, dim, L) if z else None, delta_bias=dt + torch.log(-torch.expm1(-dt)))
    if hard: x.update(delta=50 * torch.rand(bs, dim, L, generator=g), A=-torch.exp(3 * torch.rand(dim, N, generator=g)), delta_bias=None)
    return {k: (v.to(device) if v is not None else None) for k, v in x.items()}

def to(x, device=None, dtype=None):
    return {k: (v.to(device=device, dtype=dtype) if v is not None else None) for k, v in x.items()}

def rel_err(a, b):
    "max|a-b| / max(max|b|, 1e-6), in float64 on the CPU."
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()

def grads(x, backend, softplus, gout, seed=1):
    "Output and gradients of all given inputs."
    xs = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in x.items()}
    out = selective_scan(**xs, delta_softplus=softplus, backend=backend)
    ks = [k for k in NAMES if xs[k] is not None]
    return out, dict(zip(ks, torch.autograd.grad(out, [xs[k] for k in ks], gout.to(out.device, out.dtype))))

def cuda_ms(f, warmup=2, iters=10):
    for _ in range(warmup): f()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(iters): f()
    torch.cuda.synchronize(); return 1e3 * (time.perf_counter() - t0) / iters

def check_parity(rep):
    "torch backend: CUDA vs CPU and vs float64 reference (forward and gradients), fp32."
    cases = [("vmamba stage0 N=1 b2", dict(bs=2, dim=768, L=3136, N=1)), ("vmamba stage2 N=16 b1", dict(bs=1, dim=3072, L=196, N=16)),
             ("hard regime N=4", dict(bs=2, dim=64, L=500, N=4, hard=True)), ("shared B/C + z (Mamba) N=16", dict(bs=2, dim=64, L=777, N=16, bc="shared", z=True)),
             ("constant B/C N=8", dict(bs=2, dim=32, L=300, N=8, bc="const"))]
    out = []
    for name, kw in cases:
        x = inputs(**kw); sp = not kw.get("hard", False)
        gout = torch.randn(x["u"].shape, generator=torch.Generator().manual_seed(2))
        oc, gc = grads(to(x, "cuda"), "torch", sp, gout)
        o, g = grads(x, "torch", sp, gout)
        with torch.no_grad(): r = selective_scan_ref(**to(x, dtype=torch.float64), delta_softplus=sp)
        row = dict(case=name, cuda_vs_cpu=rel_err(oc, o), cuda_vs_ref64=rel_err(oc, r),
                   grad_cuda_vs_cpu=max(rel_err(gc[k], g[k]) for k in g), finite=bool(torch.isfinite(oc).all()))
        row["ok"] = row["finite"] and row["cuda_vs_cpu"] < 1e-4 and row["cuda_vs_ref64"] < 1e-4 and row["grad_cuda_vs_cpu"] < 1e-4
        out.append(row)
        print(f"  parity {name:28s} cuda~cpu {row['cuda_vs_cpu']:.1e}  cuda~ref64 {row['cuda_vs_ref64']:.1e}  grads cuda~cpu {row['grad_cuda_vs_cpu']:.1e}  {'OK' if row['ok'] else 'FAIL'}")
    # the largest VMamba shape (many CUDA work blocks)
    x = inputs(8, 768, 3136, 16, device="cuda")
    with torch.no_grad():
        big = selective_scan(**x, delta_softplus=True, backend="torch")
        ref = selective_scan(**to({k: v[:1] if k in ("u", "delta", "B", "C") else v for k, v in x.items()}, "cpu"), delta_softplus=True, backend="torch")
    row = dict(case="b8 x 768 x 3136 x N16 (blocks)", cuda_vs_cpu=rel_err(big[:1], ref), finite=bool(torch.isfinite(big).all()))
    row["ok"] = row["finite"] and row["cuda_vs_cpu"] < 1e-4
    row["torch_fwd_ms"] = cuda_ms(lambda: selective_scan(**x, delta_softplus=True, backend="torch"), 1, 3)
    print(f"  parity {row['case']:28s} cuda~cpu {row['cuda_vs_cpu']:.1e}  fwd {row['torch_fwd_ms']:.1f} ms  {'OK' if row['ok'] else 'FAIL'}")
    out.append(row); rep["parity"] = out

def check_mamba(rep):
    "mamba-ssm's kernel vs the torch backend: values, gradients and time."
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception as e:
        rep["mamba"] = dict(skipped=f"mamba-ssm not importable: {type(e).__name__}: {e}")
        print(f"  mamba-ssm: skipped ({rep['mamba']['skipped']})"); return
    rows = []
    for name, kw in [("vmamba stage0 N=1 b8", dict(bs=8, dim=768, L=3136, N=1)), ("vmamba stage1 N=1 b8", dict(bs=8, dim=1536, L=784, N=1)),
                     ("vmamba stage0 N=16 b8", dict(bs=8, dim=768, L=3136, N=16)), ("shared B/C + z N=16 b4", dict(bs=4, dim=1024, L=1024, N=16, bc="shared", z=True))]:
        x = inputs(**kw, device="cuda")
        gout = torch.randn(x["u"].shape, generator=torch.Generator().manual_seed(2))
        ok_, gk = grads(x, "cuda", True, gout)
        ot, gt = grads(x, "torch", True, gout)
        row = dict(case=name, out_rel_err=rel_err(ot, ok_), grad_rel_err={k: rel_err(gt[k], gk[k]) for k in gk})
        with torch.no_grad():
            row["cuda_fwd_ms"] = cuda_ms(lambda: selective_scan(**x, delta_softplus=True, backend="cuda"))
            row["torch_fwd_ms"] = cuda_ms(lambda: selective_scan(**x, delta_softplus=True, backend="torch"))
        row["cuda_fwdbwd_ms"] = cuda_ms(lambda: grads(x, "cuda", True, gout), 1, 5)
        row["torch_fwdbwd_ms"] = cuda_ms(lambda: grads(x, "torch", True, gout), 1, 5)
        row["ok"] = row["out_rel_err"] < 1e-4 and max(row["grad_rel_err"].values()) < 1e-3
        rows.append(row)
        print(f"  mamba {name:24s} out {row['out_rel_err']:.1e} grads {max(row['grad_rel_err'].values()):.1e}  fwd kernel {row['cuda_fwd_ms']:.2f} / torch {row['torch_fwd_ms']:.2f} ms"
              f"  fwd+bwd {row['cuda_fwdbwd_ms']:.2f} / {row['torch_fwdbwd_ms']:.2f} ms  {'OK' if row['ok'] else 'FAIL'}")
    rep["mamba"] = rows

def check_vmamba(rep, batch=8, iters=10):
    "VMamba-S with the torch backend on CUDA: logits vs CPU, images/s at 224."
    try:
        import timm
        import vlmssm.backbones.vmamba  # noqa: F401  (registers the timm models)
        model = timm.create_model("vmamba_small_s2l15", pretrained=False).eval()
        if hasattr(model, "set_ssm_backend"): model.set_ssm_backend("torch")
    except Exception as e:
        rep["vmamba"] = dict(skipped=f"{type(e).__name__}: {e}")
        print(f"  vmamba-s: skipped: {rep['vmamba']['skipped']}"); return
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            y_cpu = model(x)
            model.cuda(); y_gpu = model(x.cuda())
            res = dict(logits_rel_err=rel_err(y_gpu, y_cpu), finite=bool(torch.isfinite(y_gpu).all()))
            xb = torch.randn(batch, 3, 224, 224, device="cuda")
            res["img_per_s_fp32"] = batch * 1e3 / cuda_ms(lambda: model(xb), 2, iters)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            res["img_per_s_tf32"] = batch * 1e3 / cuda_ms(lambda: model(xb), 2, iters)
            try:
                model.set_ssm_backend("cuda"); res["img_per_s_tf32_mamba_kernel"] = batch * 1e3 / cuda_ms(lambda: model(xb), 2, iters)
            except Exception as e: res["mamba_kernel"] = f"not run: {type(e).__name__}: {e}"
    finally: torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    res["ok"] = res["finite"] and res["logits_rel_err"] < 1e-3
    rep["vmamba"] = res
    print(f"  vmamba-s torch backend: logits cuda~cpu {res['logits_rel_err']:.1e}; {res['img_per_s_fp32']:.0f} img/s fp32, "
          f"{res['img_per_s_tf32']:.0f} img/s tf32 (batch {batch}, 224px)"
          + (f"; mamba kernel {res['img_per_s_tf32_mamba_kernel']:.0f} img/s" if "img_per_s_tf32_mamba_kernel" in res else "")
          + f"  {'OK' if res['ok'] else 'FAIL'}")

@call_parse
def main(out: str = "gpu_check.json",  # where to write the JSON report
         skip_vmamba: bool = False,    # skip part 3
        ):
    "Selective-scan GPU checks: parity, mamba-ssm kernel comparison, VMamba-S on CUDA."
    rep = dict(torch=torch.__version__, cuda_available=torch.cuda.is_available())
    if not torch.cuda.is_available():
        rep["skipped"] = "CUDA is not available on this machine"
        print("gpu_check: skipped: CUDA is not available on this machine")
    else:
        rep["device"] = torch.cuda.get_device_name(0)
        print(f"gpu_check on {rep['device']}, torch {torch.__version__}")
        parts = [check_parity, check_mamba] + ([] if skip_vmamba else [check_vmamba])
        for part in parts:
            t0 = time.perf_counter()
            try: part(rep)
            except Exception as e:
                rep[part.__name__] = dict(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
                print(f"  {part.__name__}: ERROR {type(e).__name__}: {e}")
            rep.setdefault("seconds", {})[part.__name__] = round(time.perf_counter() - t0, 1)
        oks = [r["ok"] for r in rep.get("parity", []) if isinstance(r, dict)]
        oks += [r["ok"] for r in rep.get("mamba", []) if isinstance(r, dict) and "ok" in r] if isinstance(rep.get("mamba"), list) else []
        oks += [rep["vmamba"]["ok"]] if isinstance(rep.get("vmamba"), dict) and "ok" in rep["vmamba"] else []
        rep["all_ok"] = bool(oks) and all(oks) and not any("error" in v for v in rep.values() if isinstance(v, dict))
        print("gpu_check:", "ALL OK" if rep["all_ok"] else "SOME CHECKS FAILED OR ERRORED")
    atomic_write(out, json.dumps(rep, indent=1, default=str)); print("wrote", out)
