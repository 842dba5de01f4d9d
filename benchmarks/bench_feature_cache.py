"""Feature-cache speedup of a VLM rerun (issue #4): seconds per training step from cached encoder tokens vs from pixels.

Usage (one thread, as the study's runs use):
    OMP_NUM_THREADS=1 python benchmarks/bench_feature_cache.py [--encoders vmamba-pico,vit-s-in1k-224] [--steps 3] [--n_train 64]

Each encoder is timed with the default preset's recipe (`vlmssm.profile.measure_cache_speedup`: the same VLM, data and
batches, trained for a few steps once from the cache and once encoding pixels every step; the first step is left out).
The default pico encoders cost ~1 ms per image, so the LM step dominates and the cache gives little; the paper-size
encoders (random weights: the cost does not depend on them) show what the cache saves at the paper's resolution. The
data is a small benchmark of the default preset's kind (`--n_train` scenes) and the LM is the embedded one, untrained
(`pretrain_steps 0`: step time does not depend on its weights). Ratios are measured in one process; compare ratios,
not absolute times, on a shared machine.
"""
import os, platform, tempfile, time
import pandas as pd
import torch
from fastcore.script import call_parse
from vlmssm.config import load_config, to_dict
from vlmssm.data.benchmark import load_benchmark, write_benchmark
from vlmssm.profile import measure_cache_speedup
from vlmssm.vlm_runs import RunJob, build_embedded_lm, llava_dicts


@call_parse
def main(encoders: str = "vmamba-pico,vit-pico,vit-s-in1k-224,vmamba-t-in1k-224-s3",  # comma-separated registry ids
         steps: int = 3,  # timed steps per path (plus one warm-up step)
         n_train: int = 64,  # training scenes of the small benchmark
         threads: int = 1,  # torch intra-op threads (the study runs one per job)
         csv: str = "",  # also write the table here
        ):
    torch.set_num_threads(threads)
    cfg = load_config("default", overrides=[f"data.n_train={n_train}", "data.n_val=8", "data.n_test=8",
                                            "vlm.embedded.pretrain_steps=0", f"runtime.num_threads={threads}"])
    rows = []
    with tempfile.TemporaryDirectory() as d:
        write_benchmark(cfg.data, f"{d}/bench", progress=False)
        lm = build_embedded_lm(llava_dicts(load_benchmark(f"{d}/bench").llava("train")), cfg, f"{d}/lm", device="cpu", progress=False)
        for enc in encoders.split(","):
            job = RunJob(enc, enc, "", cfg.seed, f"{d}/run-{enc}", to_dict(cfg), f"{d}/bench", str(lm), f"{d}/cache")
            t = time.perf_counter()
            r = measure_cache_speedup(job, steps=steps)
            rows.append({**{k: r[k] for k in ("encoder", "s_per_step_cached", "s_per_step_pixels", "rerun_speedup")},
                         "encode_s_per_image": r["encode_seconds_once"] / n_train, "bench_seconds": time.perf_counter() - t})
            print(f"{enc}: {r['s_per_step_cached']:.3f} s/step cached, {r['s_per_step_pixels']:.3f} s/step from pixels "
                  f"-> {r['rerun_speedup']:.1f}x", flush=True)
    df = pd.DataFrame(rows)
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} thread(s), "
          f"global batch {cfg.train.global_batch}, load average {os.getloadavg()[0]:.1f}")
    print(df.round(3).to_string(index=False))
    if csv: df.to_csv(csv, index=False)
