"""`python -m bench [all|train|generate|data] [options]`: run benchmarks, print figures, write JSON."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import REPO, RESULTS_DIR, machine_info, say, training_job_running, write_results

BENCHMARKS = ("train", "generate", "data")  # `all`: the speed benchmarks
SLOW = ("quality",)  # story quality per CPU-minute: 30+ minutes, run by name


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="TinyTales performance benchmarks (see docs/performance.md).",
        epilog="Example: python -m bench train --configs seed --reps 3")
    parser.add_argument("which", nargs="?", default="all", choices=("all", *BENCHMARKS, *SLOW, "report"),
                        help="a benchmark, all speed benchmarks, quality (bits per byte per training minute "
                             "against transformers), or report: markdown tables of the saved results")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run in seconds: tiny model, 1 iteration, 1 thread, no levers "
                             "(results go to bench/results/tmp unless --out)")
    parser.add_argument("--threads", type=int, default=None, help="threads per measurement (default 2; quick: 1)")
    parser.add_argument("--reps", type=int, default=None, help="processes / rounds per figure, median (default 3)")
    parser.add_argument("--configs", default=None,
                        help="comma-separated model configs: seed, 4k-d256, 4k-d128, tiny (default: the issue's)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per process")
    parser.add_argument("--no-levers", action="store_true", help="skip the lever measurements (one setting changed at a time)")
    parser.add_argument("--lever-reps", type=int, default=2,
                        help="pairs (lever process, default process) per training lever, median ratio (default 2)")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens per generation (default 200)")
    parser.add_argument("--minutes", type=float, nargs="+", default=None,
                        help="quality: training budgets in minutes, for each side (default 5 10)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object at the end")
    args = parser.parse_args(argv)
    if args.minutes and min(args.minutes) <= 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    for name in ("threads", "reps", "steps", "new_tokens", "lever_reps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from . import data_speed, generate_speed, quality, train_speed

    if args.which == "report":
        print(report(args.out or RESULTS_DIR))
        return 0

    quick = args.quick
    threads = args.threads or (1 if quick else 2)
    reps = args.reps or (1 if quick else 3)
    configs = args.configs.split(",") if args.configs else (["tiny"] if quick else None)
    unknown = [c for c in configs or [] if c not in train_speed.CONFIGS]
    if unknown:
        sys.exit(f"unknown config(s) {unknown}; choose from {', '.join(train_speed.CONFIGS)}")
    out = args.out or (RESULTS_DIR / "tmp" if quick else RESULTS_DIR)
    if training_job_running() and not quick:
        say("warning: a `tinytales train --config` job is running: timings are disturbed (and disturb it)")
    which = BENCHMARKS if args.which == "all" else (args.which,)
    machine = machine_info(threads)
    everything = {}
    for name in which:
        if name == "train":
            result = train_speed.run(configs, reps=reps, threads=threads, levers=not (quick or args.no_levers),
                                     steps=args.steps or (1 if quick else None), warmup=0 if quick else None,
                                     lever_reps=args.lever_reps)
        elif name == "quality":
            result = quality.run(args.minutes or ((0.04, 0.08) if quick else quality.DEFAULT_MINUTES), threads=threads,
                                 quick=quick)
            if not quick:
                say(f"wrote {quality.plot(result, REPO / 'docs' / 'quality.png')}")
        elif name == "generate":
            result = generate_speed.run(configs, reps=reps, threads=threads,
                                        new_tokens=args.new_tokens or (5 if quick else generate_speed.NEW_TOKENS),
                                        ttft_runs=1 if quick else 3)
        else:
            result = data_speed.run(reps=reps, threads=threads, sources=["valid"] if quick else None,
                                    tokenizers=["4k"] if quick else None)
        result = {"machine": machine, "quick": quick, **result}
        path = write_results(name, result, out)
        say(f"wrote {path}")
        everything[name] = result
    if args.json:
        print(json.dumps(everything, indent=2))
    return 0


def report(folder: Path) -> str:
    """Markdown tables of the results in folder (for docs/performance.md)."""
    lines = []
    path = Path(folder) / "train.json"
    if path.exists():
        data = json.loads(path.read_text())
        lines += ["| config | TinyTales tok/s | transformers tok/s | ratio | reference GPT tok/s | ratio "
                  "| GFLOP/s (TT / HF / ref) | peak RSS MB (TT / HF / ref) | loss curves TT vs HF: largest difference |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in data["configs"]:
            tt, hf, ref = row["tinytales"], row["transformers"], row.get("reference")
            curves = row.get("loss_curves")
            agreement = "" if not curves else f"{curves['max_difference']:.4f} over {len(curves['tinytales'])} steps"
            sides = [tt, hf] + ([ref] if ref else [])
            gflops = " / ".join(f"{side['gflops_per_s']:.1f}" for side in sides)
            memory = " / ".join(f"{side['peak_rss_mb']:,.0f}" for side in sides)
            reference = f"{ref['tokens_per_s']:,.0f} | {row['ratio_vs_reference']:.2f}x" if ref else " | "
            lines.append(f"| {row['config']} | {tt['tokens_per_s']:,.0f} | {hf['tokens_per_s']:,.0f} | "
                         f"{row['ratio']:.2f}x | {reference} | {gflops} | {memory} | {agreement} |")
        if data["levers"]:
            lines += ["", "| lever | config | tok/s | default tok/s (paired runs) | vs default | peak RSS MB |",
                      "|---|---|---:|---:|---:|---:|"]
            for row in data["levers"]:
                default = row.get("default_tokens_per_s")
                lines.append(f"| {row['lever']} | {row['config']} | {row['tokens_per_s']:,.0f} | "
                             f"{'' if default is None else f'{default:,.0f}'} | {row['vs_default']:.2f}x | "
                             f"{row['peak_rss_mb']:,.0f} |")
        lines.append("")
    path = Path(folder) / "generate.json"
    if path.exists():
        data = json.loads(path.read_text())
        lines += ["| config | case | batch | TinyTales tok/s | transformers tok/s | ratio "
                  "| TinyTales, PyTorch step tok/s | C step vs PyTorch step |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for row in data["results"]:
            torch_step, speedup = row.get("pytorch_step_tokens_per_s"), row.get("c_step_vs_pytorch_step")
            lines.append(f"| {row['config']} | {row['case']} | {row['batch']} | {row['tinytales_tokens_per_s']:,.0f} | "
                         f"{row['transformers_tokens_per_s']:,.0f} | {row['ratio']:.2f}x | "
                         f"{'' if torch_step is None else f'{torch_step:,.0f}'} | "
                         f"{'' if speedup is None else f'{speedup:.2f}x'} |")
        ttft = data.get("time_to_first_token")
        if ttft:
            lines += ["", f"`tinytales {ttft['command']}`: first token after {ttft['median_first_token_s']} s "
                          f"(median; runs {ttft['first_token_s']}), `import torch` alone {ttft['import_torch_s']} s; "
                          f"{ttft['model']}."]
        lines.append("")
    path = Path(folder) / "quality.json"
    if path.exists():
        from .quality import report as quality_report

        lines += quality_report(json.loads(path.read_text())) + [""]
    path = Path(folder) / "data.json"
    if path.exists():
        data = json.loads(path.read_text())
        lines += ["| source | tokenizer | text MB | prepare MB/s | read+clean MB/s | encode MB/s | tokens/s |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for row in data["results"]:
            lines.append(f"| {row['source']} | {row['tokenizer']} | {row['text_mb']} | {row['prepare_mb_per_s']:.2f} | "
                         f"{row['read_clean_mb_per_s']:.1f} | {row['encode_mb_per_s']:.2f} | "
                         f"{row['tokens_per_s']:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
