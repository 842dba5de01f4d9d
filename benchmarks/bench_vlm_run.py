"""One VLM run of the default recipe, before and after issue #12's speed-ups, in the same process: wall time and quality.

Usage (one thread, as each of the study's run jobs uses):
    OMP_NUM_THREADS=1 python benchmarks/bench_vlm_run.py --run_dir runs/default [--encoder vmamba-pico] [--seed 7]
                                                         [--steps 0] [--before_precision bf16] [--csv benchmarks/results/vlm_run.csv]

`--run_dir` is a default study that has run `00_data` and `10_pretrain` (`vlmssm study --preset default --only
00_data,10_pretrain`); its benchmark and pretrained encoder are used by both paths. The two paths are the default
preset with and without the speed-ups, everything else equal (same encoder weights, data, seed, steps, batch size and
learning rate):

| path    | tokens per step                                                     | attention | precision on CPU           |
|---------|---------------------------------------------------------------------|-----------|----------------------------|
| before  | random batches of 16 padded to their longest (332 tokens on average) | sdpa      | bf16 (the old default)     |
| after   | boilerplate phrases one token each, random batches packed (~133)     | eager     | auto: bf16 only if native  |

`--before_precision fp32` runs the before path in fp32: on a CPU without native bf16 that separates the precision
fix (the old bf16 default was emulated there, ~3x slower) from the other levers.

For each path the embedded LM is built (tokenizer + text pretraining: a per-study cost, reported apart) and then one run
job is timed end to end as the study runs it (`vlmssm.vlm_runs.run_job`: set-up, training, validation, saving). The
feature cache is filled before either is timed (both paths read the same one). The exact right-padding attention change
(`VLM.forward` runs without a padding mask) is in both paths, so the ratio slightly understates the gain over the old
code. Compare ratios, not absolute times, on a shared machine (the load average is printed).
"""
import json, os, platform, tempfile, time
from pathlib import Path
import pandas as pd
import torch
from fastcore.script import call_parse
from vlmssm.cache import FeatureCache
from vlmssm.config import load_config
from vlmssm.data.benchmark import load_benchmark
from vlmssm.train import cpu_has_native_bf16
from vlmssm.vlm_runs import _encoder, build_embedded_lm, encoder_weights, llava_dicts, plan_runs, run_job, split_features

BEFORE = ["vlm.embedded.atomic_phrases=false", "train.megabatch=0", "train.pack=false", "vlm.attn_implementation=default"]
AFTER: list[str] = []


@call_parse
def main(run_dir: str = "runs/default",  # a default study with 00_data and 10_pretrain done
         encoder: str = "vmamba-pico",  # one of the default encoders
         seed: int = 7,  # run seed
         steps: int = 0,  # training steps per run (0 = the preset's 1,500)
         threads: int = 1,  # torch threads (the study runs one per job)
         csv: str = "",  # also write the table here
         before_precision: str = "bf16",  # the old default was bf16 on every CPU; fp32 isolates the other levers on a CPU without native bf16
        ):
    torch.set_num_threads(threads)
    run, rows = Path(run_dir), []
    bench_root = run / "00_data" / "scenes"
    if not (bench_root.is_dir() and (run / "10_pretrain").is_dir()):
        raise SystemExit(f"{run}: needs 00_data and 10_pretrain; run `vlmssm study --preset default --only 00_data,10_pretrain --run-dir {run}`")
    extra = [f"seeds=[{seed}]", f"encoders=[{encoder}]", f"runtime.num_threads={threads}"] + ([f"train.steps={steps}"] if steps else [])
    with tempfile.TemporaryDirectory() as d:
        for name, overrides in (("before", BEFORE + [f"train.precision={before_precision}"]), ("after", AFTER)):
            cfg = load_config("default", overrides=overrides + extra)
            weights = encoder_weights(cfg, run / "10_pretrain")
            enc, tf = _encoder(encoder, weights[encoder], cfg.vlm.resize)
            bench = load_benchmark(bench_root)
            for split in ("train", "val"): split_features(FeatureCache(f"{d}/cache"), enc, tf, encoder, bench, split)
            t = time.perf_counter()
            lm = build_embedded_lm(llava_dicts(bench.llava("train")), cfg, f"{d}/{name}", device="cpu", progress=False)
            lm_seconds = time.perf_counter() - t
            job = [j for j in plan_runs(cfg, f"{d}/{name}", bench_root, lm, f"{d}/cache", weights) if j.encoder == encoder][0]
            t = time.perf_counter()
            s = run_job(job)
            wall = time.perf_counter() - t
            tokens = pd.read_csv(Path(job.out_dir) / "loss.csv")
            rows.append({"path": name, "run_wall_s": round(wall, 1), "train_s": s["seconds"], "s_per_step": round(s["seconds"] / s["steps"], 4),
                         "steps": s["steps"], "precision": s.get("precision", "bf16" if s["bf16"] else "fp32"),
                         "lm_build_s": round(lm_seconds, 1), "val_vqa": round(s["val"]["vqa_acc"], 2), "val_acc@0.5": round(s["val"]["acc@0.5"], 2),
                         "final_loss": round(s["final_loss"], 4), "load_avg": round(os.getloadavg()[0], 1)})
            print(json.dumps(rows[-1]), flush=True)
    df = pd.DataFrame(rows)
    b, a = df.set_index("path").loc["before"], df.set_index("path").loc["after"]
    print(f"\n{platform.processor() or platform.machine()}, native bf16: {cpu_has_native_bf16()}, torch {torch.__version__}, "
          f"{threads} thread(s), encoder {encoder}, seed {seed}")
    print(df.to_string(index=False))
    print(f"\nrun wall time ratio before/after: {b.run_wall_s / a.run_wall_s:.2f}x  (training only {b.train_s / a.train_s:.2f}x, "
          f"LM build {b.lm_build_s / a.lm_build_s:.2f}x)")
    if csv: df.to_csv(csv, index=False)
