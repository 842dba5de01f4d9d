"Tests of vlmssm.ssm: the fast 'torch' and compiled 'cpu' selective scans against the sequential reference (values, gradients, hard regime, errors)."
import itertools, math, threading
import pytest
import torch
import vlmssm.ssm as ssm
from vlmssm.ssm import selective_scan, selective_scan_ref, ScanBackendError, ScanInputError, list_scan_backends

NAMES = "u delta A B C D z delta_bias".split()
LAYOUTS = ["grouped", "shared", "const", "mixed"]   # B/C: (b,G,N,L); (b,N,L); (D,N); B grouped by 2 with C grouped by 4

def make(bs=2, dim=8, L=37, N=3, layout="grouped", dtype=torch.float64, seed=0):
    "Random inputs; delta_bias at mamba's dt init so that softplus(delta + bias) is realistic."
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    bc = {"grouped": lambda: r(bs, 2, N, L), "shared": lambda: r(bs, N, L), "const": lambda: r(dim, N)}
    if layout == "mixed": B, C = r(bs, 2, N, L), r(bs, 4, N, L)
    else: B, C = bc[layout](), bc[layout]()
    dt = torch.exp(torch.rand(dim, generator=g, dtype=torch.float64) * math.log(100) + math.log(1e-3))
    x = dict(u=r(bs, dim, L), delta=0.5 * r(bs, dim, L), A=-torch.exp(r(dim, N).clamp(-1, 1) + 0.5), B=B, C=C, D=r(dim),
             z=r(bs, dim, L), delta_bias=dt + torch.log(-torch.expm1(-dt)))
    return {k: v.to(dtype) for k, v in x.items()}

def opts(x, D, z, bias, softplus):
    "Drop optional inputs; without softplus use a non-negative delta (as a real model would)."
    y = dict(x, D=x["D"] if D else None, z=x["z"] if z else None, delta_bias=x["delta_bias"] if bias else None)
    if not softplus: y["delta"] = x["delta"].abs(); y["delta_bias"] = None if not bias else 0.1 * x["delta_bias"].abs()
    return y

def close(a, b, rel):
    "max|a-b| <= rel * max(max|b|, 1): relative for large values, absolute below 1."
    a, b = a.double(), b.double()
    assert a.shape == b.shape, (a.shape, b.shape)
    err, scale = (a - b).abs().max().item(), max(b.abs().max().item(), 1.0)
    assert err <= rel * scale, f"max abs err {err:.3g} > {rel:g} * {scale:.3g}"

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_all_options(layout, dtype):
    x = make(layout=layout, dtype=dtype)
    x64 = make(layout=layout, dtype=torch.float64)
    for D, z, bias, sp, last in itertools.product([0, 1], repeat=5):
        xo, xo64 = opts(x, D, z, bias, sp), opts(x64, D, z, bias, sp)
        got = selective_scan(**xo, delta_softplus=bool(sp), return_last_state=bool(last), backend="torch")
        want = selective_scan_ref(**xo64, delta_softplus=bool(sp), return_last_state=bool(last))
        if last:
            (got, got_last), (want, want_last) = got, want
            assert got_last.shape == (2, 8, 3) and got_last.dtype == dtype
            close(got_last, want_last, 1e-5 if dtype == torch.float32 else 1e-12)
        assert got.dtype == dtype and got.shape == x["u"].shape
        close(got, want, 1e-5 if dtype == torch.float32 else 1e-12)

@pytest.mark.parametrize("bs,dim,L,N", [(1, 1, 1, 1), (3, 6, 7, 2), (2, 12, 100, 5), (1, 8, 197, 16), (2, 4, 64, 1)])
def test_forward_shapes(bs, dim, L, N):
    "Odd shapes: L=1, prime L (padded chunks), N=16, single channel."
    x = make(bs, dim, L, N, layout="shared")
    for sp in (False, True):
        xo = opts(x, 1, 1, 1, sp)
        got, gl = selective_scan(**xo, delta_softplus=sp, return_last_state=True, backend="torch")
        want, wl = selective_scan_ref(**xo, delta_softplus=sp, return_last_state=True)
        close(got, want, 1e-12); close(gl, wl, 1e-12)

@pytest.mark.parametrize("layout", LAYOUTS)
def test_grads_match_ref(layout):
    "Gradients of all eight inputs (incl. through the returned last state) vs autograd through the reference, float64."
    for D, z, bias, sp in [(1, 1, 1, 1), (0, 0, 0, 0), (1, 0, 1, 1)]:
        x = opts(make(layout=layout, L=45), D, z, bias, sp)
        xs = {k: v.requires_grad_() for k, v in x.items() if v is not None}
        o, l = selective_scan(**x, delta_softplus=bool(sp), return_last_state=True, backend="torch")
        r, rl = selective_scan_ref(**x, delta_softplus=bool(sp), return_last_state=True)
        go, gl = torch.randn_like(o), torch.randn_like(l)
        g1 = torch.autograd.grad((o * go).sum() + (l * gl).sum(), list(xs.values()))
        g2 = torch.autograd.grad((r * go).sum() + (rl * gl).sum(), list(xs.values()))
        for k, a, b in zip(xs, g1, g2):
            assert a.shape == xs[k].shape, k
            close(a, b, 1e-10)

def test_grads_float32_and_subset():
    "fp32 grads close to float64; inputs without requires_grad get None; output-only backward."
    x = make(layout="grouped", L=64, dtype=torch.float32)
    x64 = {k: v.double() for k, v in x.items()}
    want = [x64[k].requires_grad_() for k in ("u", "B", "A")]
    r = selective_scan_ref(**x64, delta_softplus=True)
    g64 = torch.autograd.grad(r.sum(), want)
    xs = {k: (v.requires_grad_() if k in ("u", "B", "A") else v) for k, v in x.items()}
    o = selective_scan(**xs, delta_softplus=True, backend="torch")
    g32 = torch.autograd.grad(o.sum(), [xs["u"], xs["B"], xs["A"]])
    for a, b in zip(g32, g64): close(a, b, 1e-5)

@pytest.mark.parametrize("layout", ["grouped", "const"])
def test_gradcheck(layout):
    x = make(bs=1, dim=4, L=21, N=2, layout=layout)
    xs = tuple(x[k].requires_grad_() for k in NAMES)
    f = lambda *a: selective_scan(*a, delta_softplus=True, return_last_state=True, backend="torch")
    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-6)

def test_hard_regime():
    "delta up to 50 and A = -exp(A_log), A_log up to 3 (delta*A ~ -1000): finite, matches float64, forward and backward."
    g = torch.Generator().manual_seed(1)
    x = make(bs=2, dim=8, L=96, N=4, layout="grouped", dtype=torch.float32)
    x.update(delta=50 * torch.rand(2, 8, 96, generator=g), A=-torch.exp(3 * torch.rand(8, 4, generator=g)), delta_bias=None)
    x["delta"][:, :4] *= 1e-3                       # half the channels in the easy regime, half hard
    x64 = {k: (v.double().requires_grad_() if v is not None else None) for k, v in x.items()}
    xs = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in x.items()}
    o, l = selective_scan(**xs, return_last_state=True, backend="torch")
    r, rl = selective_scan_ref(**x64, return_last_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(l).all()
    close(o, r, 1e-5); close(l, rl, 1e-5)
    go = torch.randn_like(o)
    ks = [k for k, v in xs.items() if v is not None]
    g1 = torch.autograd.grad((o * go).sum(), [xs[k] for k in ks])
    g2 = torch.autograd.grad((r * go.double()).sum(), [x64[k] for k in ks])
    for k, a, b in zip(ks, g1, g2):
        assert torch.isfinite(a).all(), k
        close(a, b, 1e-4)

def test_large_softplus_inputs():
    "delta + bias above softplus's overflow range (x > 88): softplus(x) = x, as F.softplus."
    x = make(L=20)
    x["delta"][0, 0, 3:9] = torch.tensor([85., 90., 120., 1e4, -200., -1e4], dtype=torch.float64)
    x["A"] = -x["A"].abs() * 1e-3                    # keep the state alive
    got = selective_scan(**x, delta_softplus=True, backend="torch")
    close(got, selective_scan_ref(**x, delta_softplus=True), 1e-12)

def test_nan_propagates_like_ref():
    x = make(L=40)
    x["u"][0, 1, 10] = float("nan")
    got, want = selective_scan(**x, delta_softplus=True, backend="torch"), selective_scan_ref(**x, delta_softplus=True)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    m = ~torch.isnan(want); close(got[m], want[m], 1e-12)

def test_blocks(monkeypatch):
    "Tiny work blocks: splits over channels, groups and batch give the same values and gradients."
    x = make(bs=3, dim=8, L=33, N=2, layout="mixed")
    want = selective_scan(**x, delta_softplus=True, backend="torch")
    for elems in (1, 2 * 40, 9 * 40):
        monkeypatch.setitem(ssm.BLOCK_ELEMS, "cpu", elems)
        close(selective_scan(**x, delta_softplus=True, backend="torch"), want, 1e-13)
        xs = {k: v.clone().requires_grad_() for k, v in x.items()}
        g = torch.autograd.grad(selective_scan(**xs, delta_softplus=True, backend="torch").sum(), [xs["B"], xs["C"], xs["A"]])
        r = selective_scan_ref(**xs, delta_softplus=True)
        for a, b in zip(g, torch.autograd.grad(r.sum(), [xs["B"], xs["C"], xs["A"]])): close(a, b, 1e-10)

def test_low_precision_inputs():
    "bf16 u/delta/z/B/C: fp32 accumulation, output in u's dtype, last state fp32 (as mamba-ssm)."
    x = make(L=50, dtype=torch.float32)
    xb = {k: (v.bfloat16() if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
    o, l = selective_scan(**xb, delta_softplus=True, return_last_state=True, backend="torch")
    r, rl = selective_scan_ref(**xb, delta_softplus=True, return_last_state=True)
    assert o.dtype == torch.bfloat16 and l.dtype == torch.float32
    close(o.float(), r.float(), 1e-2); close(l, rl, 1e-5)

def test_threads():
    "Concurrent calls from two threads (thread-local work buffers) give the single-threaded results."
    xs = [make(seed=s, L=300, dtype=torch.float32) for s in range(2)]
    want = [selective_scan(**x, delta_softplus=True, backend="torch") for x in xs]
    got = [None, None]
    def work(i):
        for _ in range(5): got[i] = selective_scan(**xs[i], delta_softplus=True, backend="torch")
    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ts: t.start()
    for t in ts: t.join()
    for a, b in zip(got, want): assert torch.equal(a, b)
    ssm.free_scan_workspace()                            # buffers are rebuilt on the next call
    assert torch.equal(selective_scan(**xs[0], delta_softplus=True, backend="torch"), want[0])

def test_backends():
    x = make(dtype=torch.float32)
    assert list_scan_backends() == ["auto", "torch", "cpu", "cuda", "ref"]
    assert ssm.get_scan_backend("auto", x["u"]) is ssm._auto_cpu            # CPU tensors never use the CUDA kernel
    with pytest.raises(ScanBackendError, match="needs CUDA tensors"): selective_scan(**x, backend="cuda")
    with pytest.raises(ScanBackendError, match=r"valid: auto, torch, cpu, cuda, ref \(did you mean 'ref'\?\)"):
        selective_scan(**x, backend="reff")
    with pytest.raises(ScanBackendError, match="valid: auto, torch, cpu, cuda, ref"): selective_scan(**x, backend="triton")
    close(selective_scan(**x, delta_softplus=True, backend="auto"), selective_scan(**x, delta_softplus=True, backend="ref"), 1e-5)

# ---- the compiled CPU forward ("cpu" backend; "auto" on CPU) ----
needs_kernel = pytest.mark.skipif(isinstance(ssm.scan_kernel(), str), reason="no C compiler for the scan kernel")

@needs_kernel
@pytest.mark.parametrize("layout", ["grouped", "shared", "mixed"])
def test_cpu_kernel_forward(layout):
    "Every option combination, fp32 and bf16 inputs, against the float64 reference (output and last state)."
    x64 = make(layout=layout, L=53)
    for dtype in (torch.float32, torch.bfloat16):
        x = {k: v.to(dtype) for k, v in x64.items()}
        for D, z, bias, sp in itertools.product([0, 1], repeat=4):
            xo = opts(x, D, z, bias, sp)
            xo64 = {k: (None if v is None else v.double()) for k, v in xo.items()}   # the very same (rounded) inputs
            got, gl = selective_scan(**xo, delta_softplus=bool(sp), return_last_state=True, backend="cpu")
            want, wl = selective_scan_ref(**xo64, delta_softplus=bool(sp), return_last_state=True)
            assert got.dtype == dtype and gl.dtype == torch.float32 and gl.shape == (2, 8, 3)
            close(got, want, 1e-5 if dtype == torch.float32 else 1e-2); close(gl, wl, 1e-5)

@needs_kernel
@pytest.mark.parametrize("bs,dim,L,N", [(1, 1, 1, 1), (3, 6, 7, 2), (2, 12, 100, 5), (1, 8, 197, 16), (1, 24, 640, 1)])
def test_cpu_kernel_shapes(bs, dim, L, N):
    "L=1, prime L, N=16, fewer channels than a block of 8, several blocks."
    x = make(bs, dim, L, N, layout="grouped" if dim % 2 == 0 else "shared", dtype=torch.float32)
    x64 = {k: v.double() for k, v in x.items()}
    got, gl = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="cpu")
    want, wl = selective_scan_ref(**x64, delta_softplus=True, return_last_state=True)
    close(got, want, 1e-5); close(gl, wl, 1e-5)

@needs_kernel
def test_cpu_kernel_hard_and_extreme():
    "delta*A ~ -1000 (decays underflow) and softplus inputs far outside its range: finite and close to float64."
    g = torch.Generator().manual_seed(1)
    x = make(bs=2, dim=8, L=96, N=4, layout="grouped", dtype=torch.float32)
    x.update(delta=50 * torch.rand(2, 8, 96, generator=g), A=-torch.exp(3 * torch.rand(8, 4, generator=g)), delta_bias=None)
    x["delta"][:, :4] *= 1e-3
    x["delta"][0, 0, 3:9] = torch.tensor([85., 90., 120., 1e4, -200., -1e4])
    got = selective_scan(**x, delta_softplus=True, backend="cpu")
    want = selective_scan_ref(**{k: (None if v is None else v.double()) for k, v in x.items()}, delta_softplus=True)
    assert torch.isfinite(got).all()
    close(got, want, 1e-5)

@needs_kernel
@pytest.mark.parametrize("layout", ["grouped", "mixed"])
def test_cpu_kernel_grads(layout):
    "Gradients through the 'cpu' backend (compiled forward, PyTorch backward) vs the float64 reference."
    x = make(layout=layout, L=45, dtype=torch.float32)
    xs = {k: v.clone().requires_grad_() for k, v in x.items()}
    x64 = {k: v.double().requires_grad_() for k, v in x.items()}
    o, l = selective_scan(**xs, delta_softplus=True, return_last_state=True, backend="cpu")
    r, rl = selective_scan_ref(**x64, delta_softplus=True, return_last_state=True)
    go, gl = torch.randn_like(r), torch.randn_like(rl)
    g1 = torch.autograd.grad((o * go.float()).sum() + (l * gl.float()).sum(), list(xs.values()))
    g2 = torch.autograd.grad((r * go).sum() + (rl * gl).sum(), list(x64.values()))
    for k, a, b in zip(xs, g1, g2):
        assert a.shape == xs[k].shape, k
        close(a, b, 1e-4)

@needs_kernel
def test_cpu_kernel_threads(monkeypatch):
    "The thread pool (2 threads, many row ranges) gives bit-identical results to one thread; VLMSSM_SCAN_THREADS caps it."
    x = make(bs=2, dim=64, L=150, N=2, layout="grouped", dtype=torch.float32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1); one = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="cpu")
        torch.set_num_threads(2); assert ssm.scan_threads() == 2
        two = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="cpu")
        monkeypatch.setenv("VLMSSM_SCAN_THREADS", "1"); assert ssm.scan_threads() == 1
    finally: torch.set_num_threads(old)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])

@needs_kernel
def test_cpu_kernel_dispatch(monkeypatch):
    "'auto' on CPU: the kernel for selective fp32 inputs, 'torch' for constant B/C and fp64; 'cpu' errors name the reason."
    x = make(dtype=torch.float32)
    assert torch.equal(selective_scan(**x, delta_softplus=True), selective_scan(**x, delta_softplus=True, backend="cpu"))
    xc = make(layout="const", dtype=torch.float32)
    assert torch.equal(selective_scan(**xc, delta_softplus=True), selective_scan(**xc, delta_softplus=True, backend="torch"))
    with pytest.raises(ScanBackendError, match=r"constant \(dim, N\) B/C"): selective_scan(**xc, backend="cpu")
    with pytest.raises(ScanBackendError, match="float64 inputs"): selective_scan(**make(), backend="cpu")
    assert ssm.scan_path("cpu").startswith("cpu (compiled C kernel")
    monkeypatch.setattr(ssm._build_kernel, "fn", "disabled by VLMSSM_SCAN_KERNEL=0")   # as if no compiler
    monkeypatch.setattr(ssm._auto_cpu, "warned", False, raising=False)
    with pytest.warns(UserWarning, match="runs the 'torch' backend on CPU: disabled"):
        got = selective_scan(**x, delta_softplus=True)
    assert torch.equal(got, selective_scan(**x, delta_softplus=True, backend="torch"))
    assert ssm.scan_path("cpu").startswith("torch (chunked PyTorch scan; compiled kernel unavailable")
    with pytest.raises(ScanBackendError, match="backend='cpu' is unavailable: disabled"): selective_scan(**x, backend="cpu")

@pytest.mark.parametrize("change,msg", [
    (dict(delta=torch.zeros(2, 8, 36)), "delta must have u's shape"),
    (dict(A=torch.zeros(7, 3)), "A must be (dim=8, N)"),
    (dict(B=torch.zeros(2, 3, 3, 37)), "G dividing dim=8"),
    (dict(C=torch.zeros(2, 4, 37)), "C must be (batch, N, L)"),
    (dict(D=torch.zeros(3)), "D must be (dim=8,)"),
    (dict(z=torch.zeros(2, 8)), "z must have u's shape"),
    (dict(delta_bias=torch.zeros(8, 1)), "delta_bias must be (dim=8,)"),
    (dict(A=torch.zeros(8, 3, dtype=torch.complex64)), "complex A is not supported"),
    (dict(u=torch.zeros(2, 8)), "u must be (batch, dim, L)"),
])
def test_input_errors(change, msg):
    x = {**make(dtype=torch.float32), **change}
    for backend in ("torch", "ref"):
        with pytest.raises(ScanInputError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            selective_scan(**x, backend=backend)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_backend_on_cuda():
    x = make(L=200, N=4, dtype=torch.float32)
    xc = {k: v.cuda().requires_grad_() for k, v in x.items()}
    o = selective_scan(**xc, delta_softplus=True, backend="torch")
    close(o.cpu(), selective_scan(**x, delta_softplus=True, backend="torch"), 1e-5)
    g = torch.autograd.grad(o.sum(), [xc["u"], xc["B"]])
    xs = {k: v.clone().requires_grad_() for k, v in x.items()}
    g0 = torch.autograd.grad(selective_scan_ref(**xs, delta_softplus=True).sum(), [xs["u"], xs["B"]])
    for a, b in zip(g, g0): close(a.cpu(), b, 1e-4)

@pytest.mark.parametrize("step,path", [(0.05, "fp64 closed form"), (0.2, "fp64 chunks"), (3.0, "exact carry"), (80.0, "exact scan")])
def test_long_sequence_paths(monkeypatch, step, path):
    "L=4096 with per-step decays exp(-step): each way of solving the chunk carries (and the exact fallback) matches float64."
    calls = []
    real = ssm._linrec_exact_
    monkeypatch.setattr(ssm, "_linrec_exact_", lambda a, b, h0=None: calls.append(b.shape) or real(a, b, h0))
    g = torch.Generator().manual_seed(3)
    bs, dim, L = 1, 4, 4096
    x = dict(u=torch.randn(bs, dim, L, generator=g), delta=step * (0.5 + torch.rand(bs, dim, L, generator=g)),
             A=-torch.ones(dim, 1), B=torch.randn(bs, 1, L, generator=g), C=torch.randn(bs, 1, L, generator=g))
    got = selective_scan(**x, backend="torch")
    close(got, selective_scan_ref(**{k: v.double() for k, v in x.items()}), 1e-5)
    n = sorted({s[1] for s in calls})                   # lengths that went through the exact loop
    want = {"fp64 closed form": [], "fp64 chunks": [16], "exact carry": [L // 16], "exact scan": [L]}[path]
    assert n == want, (path, n)

def test_doubling_prefix_path(monkeypatch):
    "The GPU formulation of the in-chunk prefix products/sums (doubling), run on the CPU: same values and gradients."
    monkeypatch.setattr(ssm, "_doubling", lambda x: True)
    for L in (64, 196, 49, 37):                          # T = 16, 14, 7, and 16 with padding
        x = make(L=L, layout="grouped")
        xs = {k: v.clone().requires_grad_() for k, v in x.items()}
        o, l = selective_scan(**xs, delta_softplus=True, return_last_state=True, backend="torch")
        r, rl = selective_scan_ref(**xs, delta_softplus=True, return_last_state=True)
        close(o, r, 1e-12); close(l, rl, 1e-12)
        for a, b in zip(torch.autograd.grad(o.sum() + l.sum(), [xs["u"], xs["A"], xs["B"]]),
                        torch.autograd.grad(r.sum() + rl.sum(), [xs["u"], xs["A"], xs["B"]])): close(a, b, 1e-10)

@pytest.mark.parametrize("layout", LAYOUTS)
def test_n1_forward_path(monkeypatch, layout):
    "The lean N=1 forward (`_Scan.fwd1`) runs for N=1 and matches the general path and float64, all options, padded L."
    calls, real = [], ssm._Scan.fwd1
    monkeypatch.setattr(ssm._Scan, "fwd1", lambda self, *a: calls.append(1) or real(self, *a))
    for L in (37, 64):
        x = make(L=L, N=1, layout=layout)
        for D, z, bias, sp in itertools.product([0, 1], repeat=4):
            xo = opts(x, D, z, bias, sp)
            n = len(calls)
            got, gl = selective_scan(**xo, delta_softplus=bool(sp), return_last_state=True, backend="torch")
            assert len(calls) > n
            want, wl = selective_scan_ref(**xo, delta_softplus=bool(sp), return_last_state=True)
            close(got, want, 1e-12); close(gl, wl, 1e-12)
    x32 = make(L=300, N=1, layout=layout, dtype=torch.float32)
    fast = selective_scan(**x32, delta_softplus=True, return_last_state=True, backend="torch")
    monkeypatch.setattr(ssm._Scan, "fwd1", lambda self, *a: None)          # force the general (backward's) path
    general = selective_scan(**x32, delta_softplus=True, return_last_state=True, backend="torch")
    want = selective_scan_ref(**{k: v.double() for k, v in x32.items()}, delta_softplus=True, return_last_state=True)
    for a, b, w in zip(fast, general, want): close(a, b, 2e-6); close(a, w, 1e-5)

def test_n1_forward_edge_cases(monkeypatch):
    "N=1: softplus beyond sigmoid's underflow (x > 80), and delta*A too large for the chunked form (exact fallback)."
    x = make(L=20, N=1)
    x["delta"][0, 0, 3:9] = torch.tensor([85., 90., 120., 1e4, -200., -1e4], dtype=torch.float64)
    x["A"] = -x["A"].abs() * 1e-3
    close(selective_scan(**x, delta_softplus=True, backend="torch"), selective_scan_ref(**x, delta_softplus=True), 1e-12)
    exact, real = [], ssm._linrec_exact_
    monkeypatch.setattr(ssm, "_linrec_exact_", lambda a, b, h0=None: exact.append(b.shape) or real(a, b, h0))
    g = torch.Generator().manual_seed(2)
    x = make(bs=2, dim=8, L=96, N=1, dtype=torch.float32)
    x.update(delta=50 * torch.rand(2, 8, 96, generator=g), A=-torch.exp(3 * torch.rand(8, 1, generator=g)), delta_bias=None)
    o, l = selective_scan(**x, return_last_state=True, backend="torch")
    r, rl = selective_scan_ref(**{k: (v.double() if v is not None else None) for k, v in x.items()}, return_last_state=True)
    assert exact and torch.isfinite(o).all()
    close(o, r, 1e-5); close(l, rl, 1e-5)


# ---------------------------------------------------------------- workspace vs inference mode
@pytest.mark.parametrize("name", ["vmamba_test", "mambavision_pico", "vim_pico"])
def test_workspace_survives_inference_mode(name):
    "An inference_mode forward first (it creates the CPU workspace), then training forward+backward, then no_grad: all run."
    import timm
    import vlmssm.backbones.mambavision, vlmssm.backbones.vim, vlmssm.backbones.vmamba  # noqa: F401
    ssm.free_scan_workspace()
    torch.manual_seed(0)
    m, x = timm.create_model(name, num_classes=3), torch.randn(1, 3, 64, 64)
    with torch.inference_mode(): y0 = m.eval()(x)
    m.train()(x).sum().backward()
    assert m.get_classifier().weight.grad is not None
    with torch.no_grad(): y1 = m.eval()(x)
    assert y1.shape == y0.shape and torch.isfinite(y1).all()
    ssm.free_scan_workspace()
