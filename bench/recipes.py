"""Recall at equal budget on the synthetic world: the quickstart recipe against the classic methods and samplers.

Each recipe trains through `cvm train` (a subprocess, so each run's time and peak memory are its own) on the same
world (synthetic seed 0: 800 training / 200 validation pairs, panorama 64x256) for the same number of epochs (the
quickstart's 8), from random weights, once per seed; the validation R@1 / R@5 / R@10 of the last epoch and of the
best one are read from the run's results. Runs already finished in --out are read back, not retrained (a killed
comparison resumes).

  python bench/recipes.py --out runs/recipes                  # every recipe, seeds 0 1 2, 8 epochs
  python bench/recipes.py --out runs/recipes --recipes quickstart,neighbours --seeds 0

Recipes:
  quickstart   experiments/sample4geo_quickstart.cfg: Sample4Geo's model, loss and optimisation at CPU size,
               polar aerial, flattened map descriptor, shuffled batches
  neighbours   the same with Sample4Geo's sampler: GPS-neighbour batches, then similarity neighbours every 4 epochs
  quickstart_avg     the quickstart with Sample4Geo's average-pooled head (--pooling avg)
  neighbours_avg     that with the neighbour sampler (where the flattened head leaves no room to improve)
  sample4geo_plain   Sample4Geo as released at CPU size: average pooling and the plain 128x128 aerial
  cvm_net_i    CVM-Net-I, the previous quickstart: 1/8-width VGG16 + NetVLAD, triplet loss, Adam 1e-4, batch 16
  safa         SAFA at the same width on the 64x256 polar aerial, triplet loss, Adam 1e-4, batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from cvm.training.jit_choice import cpu_model

RECIPES = {
    "quickstart": ["--flagfile=experiments/sample4geo_quickstart.cfg"],
    "neighbours": ["--flagfile=experiments/sample4geo_quickstart.cfg", "--sampler=neighbours",
                   "--neighbour_pool=32", "--neighbour_select=16", "--sampler_refresh_epochs=4"],
    "quickstart_avg": ["--flagfile=experiments/sample4geo_quickstart.cfg", "--pooling=avg"],
    "neighbours_avg": ["--flagfile=experiments/sample4geo_quickstart.cfg", "--pooling=avg", "--sampler=neighbours",
                       "--neighbour_pool=32", "--neighbour_select=16", "--sampler_refresh_epochs=4"],
    "sample4geo_plain": ["--flagfile=experiments/sample4geo_quickstart.cfg", "--pooling=avg", "--noaerial_polar",
                         "--aerial_size=128,128"],
    # The run defaults (TrainConfig) are the previous quickstart's: 1/8-width VGG16, He init, no dropout, nothing
    # frozen, panorama 64x256, Adam 1e-4, batch 16.
    "cvm_net_i": ["--method=cvm_net_i"],
    "safa": ["--method=safa", "--aerial_polar", "--aerial_size=64,256"],
}



def read_result(model_dir: str, epochs: int):
    """(last epoch's metrics, best metrics) of a finished run, or None."""
    last = os.path.join(model_dir, "results", "validation", f"epoch{epochs:03d}.json")
    best = os.path.join(model_dir, "best", "metrics.json")
    if not (os.path.isfile(last) and os.path.isfile(best)):
        return None
    with open(last) as f:
        final = json.load(f)["metrics"]["ground_to_aerial"]
    with open(best) as f:
        return final, json.load(f)


def epoch_r1(out: str, row: dict, epoch: int) -> float:
    """R@1 of a finished run's validation after `epoch`."""
    path = os.path.join(out, f"{row['recipe']}_seed{row['seed']}", "results", "validation", f"epoch{epoch:03d}.json")
    with open(path) as f:
        return json.load(f)["metrics"]["ground_to_aerial"]["r@1"]


def run_one(name: str, seed: int, epochs: int, out: str) -> dict:
    model_dir = os.path.join(out, f"{name}_seed{seed}")
    timing = os.path.join(model_dir, "bench_time.json")
    if read_result(model_dir, epochs) is None:
        cmd = [sys.executable, "-m", "cvm.cli.main", "train", *RECIPES[name], f"--seed={seed}", "--synthetic_seed=0",
               "--synthetic_pairs=1000", f"--epochs={epochs}", f"--model_dir={model_dir}"]
        start = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if done.returncode != 0:
            raise SystemExit(f"{name} seed {seed} failed:\n{done.stderr[-3000:]}")
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        with open(timing, "w") as f:  # the peak of the largest child so far: exact when runs grow or stay equal
            json.dump({"seconds": seconds, "peak_rss_mb": max(peak, before) / 1024.0,
                       "load_average": os.getloadavg()}, f)
    final, best = read_result(model_dir, epochs)
    extra = json.load(open(timing)) if os.path.isfile(timing) else {}
    return {"recipe": name, "seed": seed, "final": final, "best": best, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/recipes")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    names = [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; valid: {', '.join(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in names:
        for seed in seeds:
            row = run_one(name, seed, args.epochs, args.out)
            rows.append(row)
            print(f"{name} seed {seed}: last-epoch R@1 {100 * row['final']['r@1']:.1f} %, best R@1 "
                  f"{100 * row['best']['r@1']:.1f} % (epoch {row['best']['epoch']}), "
                  f"{row.get('seconds', float('nan')):.0f} s", flush=True)
    with open(os.path.join(args.out, "recipes.json"), "w") as f:
        json.dump({"cpu": cpu_model(), "epochs": args.epochs, "rows": rows}, f, indent=1)
    print(f"\nCPU: {cpu_model() or 'unknown CPU'}; {args.epochs} epochs; validation: 200 pairs (chance R@1 0.5 %, "
          "R@5 2.5 %, R@10 5 %)")
    print("| recipe | R@1 last epoch, per seed | mean R@1 | mean R@5 | mean R@10 | mean best R@1 | "
          "mean R@1 after epoch 1 / 2 / 4 | minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        mine = [r for r in rows if r["recipe"] == name]

        def mean(key, which="final"):
            return 100 * sum(r[which][key] for r in mine) / len(mine)

        per_seed = " / ".join(f"{100 * r['final']['r@1']:.1f}" for r in mine)
        minutes = sum(r.get("seconds", 0.0) for r in mine) / len(mine) / 60
        early = " / ".join(f"{100 * sum(epoch_r1(args.out, r, e) for r in mine) / len(mine):.1f}"
                            for e in (1, 2, 4))
        print(f"| {name} | {per_seed} | {mean('r@1'):.1f} | {mean('r@5'):.1f} | {mean('r@10'):.1f} | "
              f"{mean('r@1', 'best'):.1f} | {early} | {minutes:.1f} |")


if __name__ == "__main__":
    main()
