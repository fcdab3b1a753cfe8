"""Run the benchmarks and write benchmarks/results.json and benchmarks/results.md.

    python -m benchmarks [--only sft_step,decode,...] [--out-dir benchmarks] [--torch-compile]

Each benchmark runs in its own process (fresh peak RSS; the scaling run needs fake devices set
before jax starts) and prints one JSON line, collected here with the machine's description.
`--only` reruns a subset and keeps the other benchmarks' last figures in results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common

ROOT = Path(__file__).resolve().parent.parent
# name -> command-line arguments of `python -m benchmarks.<name>`
BENCHMARKS: dict[str, list[str]] = {
    "sft_step": ["--repeats", "9"],
    "decode": ["--repeats", "5", "--batch-sizes", "8,64"],
    "sizes": ["--repeats", "3"],
    "joint_step": ["--repeats", "3"],
    "scaling": ["--repeats", "5"],
    "pipeline": ["--repeats", "3"],
    "gpu": ["--repeats", "3"],
    "rl_host_bytes": ["--steps", "3"],
}
# ratio targets (ours / transformers): SFT step, decode by batch size, every size-sweep row
TARGETS = {"sft_step": 2.5, "decode": {8: 5.0, 64: 2.0}, "sizes": 1.0}


def run_one(name: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *BENCHMARKS[name]],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"benchmark": name,
                  "error": f"exit {proc.returncode}: {proc.stderr.strip()[-3000:]}"}
    result["wall_s"] = wall
    result["date"] = common.machine_info()["date"]
    return result


def speedups(benchmarks: dict[str, Any]) -> dict[str, float | None]:
    out = {"sft_step_speedup": benchmarks.get("sft_step", {}).get("speedup")}
    for row in benchmarks.get("decode", {}).get("rows", []):
        out[f"decode_b{row['batch_size']}_speedup"] = row["speedup"]
    out["sizes_min_speedup"] = benchmarks.get("sizes", {}).get("min_speedup")
    return out


# ---- Markdown ------------------------------------------------------------------------------

def _num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _rate(r: dict[str, Any], unit: str) -> str:
    text = (f"{_num(r[f'{unit}_per_s'])} ({_num(r[f'{unit}_per_s_min'])}–"
            f"{_num(r[f'{unit}_per_s_max'])})")
    return text + (" ⚠ noisy" if r["noisy"] else "")


def _secs(t: dict[str, Any]) -> str:
    ms = lambda s: f"{s * 1e3:,.1f}"
    return (f"{ms(t['median_s'])} ({ms(t['min_s'])}–{ms(t['max_s'])})"
            + (" ⚠ noisy" if t["noisy"] else ""))


def _mib(b: float) -> str:
    return f"{b / 2**20:,.2f} MiB"


def _threads(r: dict[str, Any]) -> str:
    t = r.get("torch_threads")
    return f" [torch {t['threads']} thread{'s' if t['threads'] > 1 else ''}]" if isinstance(t, dict) else ""


def _per_thread_count(side: dict[str, Any]) -> str:
    """"; median at 1 thread 184 ms, at 2 threads 121 ms" of a torch side timed at both counts."""
    t = side.get("torch_threads")
    if not isinstance(t, dict) or "median_s" not in t:
        return ""
    return "; median " + ", ".join(f"at {n} thread{'s' if int(n) > 1 else ''} {m * 1e3:.0f} ms"
                                   for n, m in t["median_s"].items())


def _faults(t: dict[str, Any]) -> str:
    return f"{t['minor_faults_median']:,.0f} / {t['minor_faults_max']:,.0f}" if "minor_faults" in t else "–"


def _target(ratio: float, target: float | None) -> str:
    return "" if target is None else f">= {target:g}x {'met' if ratio >= target else 'not met'}"


def _side_by_side(b: dict[str, Any]) -> list[str]:
    rows = ["| benchmark | ours tokens/s | transformers tokens/s | ratio (ours / transformers) | "
            "target | ours compile s | ours faults / step (median / max) | ours MFU |",
            "|---|---|---|---|---|---|---|---|"]

    def row(label: str, ours: dict, theirs: dict, ratio: float, target: float | None,
            threads: str, compile_s: float | None, mfu: float | None) -> str:
        return (f"| {label} | {_rate(ours, 'tokens')} | {_rate(theirs, 'tokens')}{threads} | "
                f"**{ratio:.2f}x** | {_target(ratio, target)} | "
                f"{'–' if compile_s is None else f'{compile_s:.1f}'} | {_faults(ours['timing'])} | "
                f"{'–' if mfu is None else f'{mfu:.1%}'} |")

    s = b.get("sft_step")
    if s and "ours" in s:
        what = (f"SFT step: forward + backward + AdamW, tiny Qwen2.5-VL ({s['params']:,} params), "
                f"batch {s['batch_size']} x {s['seq_len']} tokens, one "
                f"{s['image_grid_thw'][1] * 8}-px image per row")
        if "first_loss_delta" in s:   # absent from results of before 2026-12-07 noon
            what += f"; first-step loss {s['first_loss_delta']:+.1e} from transformers'"
            if abs(s["first_loss_delta"]) > 1e-3:   # float rounding is ~1e-6 here
                what += " ⚠ the sides compute different losses"
        rows.append(row(what, s["ours"], s["transformers"], s["speedup"], TARGETS["sft_step"],
                        _threads(s), s["ours"]["compile_s"], s["ours"]["mfu"]))
        v = s.get("variants", {})
        if "ours_bf16" in v:
            rows.append(row("same, ours with bf16 products and f32 activations (model.matmul_dtype;"
                            f" first loss {s['bf16_loss_delta']:+.2e} vs f32)", v["ours_bf16"], s["transformers"],
                            v["ours_bf16"]["tokens_per_s"] / s["transformers"]["tokens_per_s"],
                            None, "", v["ours_bf16"]["compile_s"], v["ours_bf16"]["mfu"]))
        if "transformers_bf16" in v:
            rows.append(row("same, both in bf16 compute: transformers under torch.autocast "
                            f"(its first loss {s['torch_bf16_loss_delta']:+.2e} vs its f32)",
                            v["ours_bf16"], v["transformers_bf16"],
                            s["bf16_speedup_vs_torch_bf16"], None, _threads(v["transformers_bf16"]),
                            v["ours_bf16"]["compile_s"], v["ours_bf16"]["mfu"]))
        if "torch_compile" in v:
            rows.append(row("same, against torch.compile (inductor) transformers", s["ours"],
                            v["torch_compile"], s["speedup_vs_torch_compile"], None,
                            f"{_threads(v['torch_compile'])} [compile "
                            f"{v['torch_compile']['compile_s']:.0f} s]", None, None))
        rows += [f"| torch.compile failed: `{e[:200]}` | | | | | | | |"
                 for e in s.get("errors", {}).values()]
        if "torch_compile" not in v and not s.get("errors"):
            rows.append("| against torch.compile: not run (`python -m benchmarks --torch-compile`) "
                        "| | | | | | | |")
    d = b.get("decode")
    for r in (d or {}).get("rows", []):
        agree = ("" if "token_agreement" not in r else
                 f"; the same token as transformers at {r['token_agreement']:.1%} of positions")
        rows.append(row(f"Decode (rollouts): greedy, batch {r['batch_size']}, prompt "
                        f"{r['prompt_len']} tokens incl. image, {r['new_tokens']} new tokens{agree}",
                        r["ours"], r["transformers"], r["speedup"],
                        TARGETS["decode"].get(r["batch_size"]), _threads(r), r["compile_s"], None))
    if s and "matmul_peak_flops" in s:
        p = s["matmul_peak_flops"]
        rows += ["", f"MFU: model FLOPs of the step ({s['model_flops_per_step'] / 1e9:.2f} GFLOP) "
                 f"per second over the XLA 2048^3 matmul rate measured in the same run "
                 f"({p['float32'] / 1e9:.0f} GFLOP/s f32, {p['bfloat16'] / 1e9:.0f} bf16). "
                 f"Faults: minor page faults per timed step. Load average while timed: "
                 f"{', '.join(str(x) for x in s.get('load_avg_timed', []))}.", ""]
        for name, side in (("ours", s["ours"]), *s.get("variants", {}).items(),
                           ("transformers", s["transformers"])):
            t = side["timing"]
            rows.append(f"- SFT {name.replace('_', ' ')}: each step, ms (minor faults): " + ", ".join(
                f"{x * 1e3:.0f} ({f:,})" for x, f in zip(t["times_s"], t["minor_faults"]))
                + _per_thread_count(side))
    return rows


def _sizes(z: dict[str, Any]) -> list[str]:
    label = {"hidden": "SFT, hidden size",
             "hidden_bf16": "SFT in bf16 compute on both sides (torch.autocast), hidden size",
             "seq": "SFT, sequence length",
             "batch": "SFT, batch size", "decode": "decode, batch size"}
    rows = ["One size changed from the headline shapes per row (3 interleaved calls per side).", "",
            "| row | ours tokens/s | transformers tokens/s | ratio | >= 1x |", "|---|---|---|---|---|"]
    for r in z["rows"]:
        rows.append(f"| {label[r['sweep']]} {r['value']} | {_rate(r['ours'], 'tokens')} | "
                    f"{_rate(r['transformers'], 'tokens')} [torch {r['torch_threads']}t] | "
                    f"**{r['speedup']:.2f}x** | {'met' if r['speedup'] >= TARGETS['sizes'] else 'not met'} |")
    return rows


def _joint(j: dict[str, Any]) -> list[str]:
    rows = [f"Joint SFT + RL iteration (ours): {j['prompts']} prompts x {j['generations']} "
            f"generations x {j['new_tokens']} new tokens (RL rows {j['rl_seq_len']} tokens), "
            f"SFT batch {j['sft_batch_size']} x {j['sft_seq_len']}; one iteration "
            f"{j['iteration_s'] * 1e3:,.0f} ms, peak RSS {_mib(j['peak_rss_bytes'])}.", "",
            "| phase | ms, median (min–max) | share |", "|---|---|---|"]
    for p, t in j["phases"].items():
        rows.append(f"| {p.replace('_', ' ')} | {_secs(t)} | {j['share'][p]:.1%} |")
    rows += ["", "| jitted function | compile time, s (first call − steady call) |", "|---|---|"]
    rows += [f"| {k.replace('_', ' ')} | {v:.1f} |" for k, v in j["compile_s"].items()]
    return rows


def _scaling(sc: dict[str, Any]) -> list[str]:
    rows = [f"SFT step of the tiny model, batch {sc['batch_size']} x {sc['seq_len']}, on fake CPU "
            f"devices sharing this machine's cores (times show partitioning overhead, not "
            f"speed-up); parameters total {_mib(sc['param_bytes_total'])}.", "",
            "| mesh (data, fsdp, tensor) | devices | step ms, median (min–max) | compile s | "
            "params / device | optimizer state / device | params / device vs 1 device |",
            "|---|---|---|---|---|---|---|"]
    base = sc["meshes"][0]["param_bytes_per_device"]
    for m in sc["meshes"]:
        shape = tuple(m["mesh"].values())
        rows.append(f"| {shape} | {m['devices']} | {_secs(m['step']['timing'])} | "
                    f"{m['compile_s']:.1f} | {_mib(m['param_bytes_per_device'])} | "
                    f"{_mib(m['opt_state_bytes_per_device'])} | "
                    f"{m['param_bytes_per_device'] / base:.3f} |")
    return rows


def _pipeline(p: dict[str, Any]) -> list[str]:
    rows = [f"Input pipeline (host), {p['examples']} examples, batch {p['batch_size']}, "
            f"{p['image_size']}-px images, sequence length {p['seq_len']}:", "",
            "| batches | cold examples/s (min–max) | warm (cached) examples/s (min–max) |",
            "|---|---|---|"]
    for kind, label in (("sft", "SFT"), ("rl", "RL prompts")):
        rows.append(f"| {label} | {_rate(p[f'{kind}_cold'], 'examples')} | "
                    f"{_rate(p[f'{kind}_warm'], 'examples')} |")
    return rows


def _gpu(g: dict[str, Any]) -> list[str]:
    if "skipped" in g:
        return [f"GPU: skipped ({g['skipped']})."]
    rows = [f"GPU: **{g['gpu']}**, {g['model']}.", "",
            "| benchmark | ours tokens/s | transformers tokens/s | ratio | ours MFU | "
            "transformers MFU |", "|---|---|---|---|---|---|"]
    parts = g["parts"]
    o, t = parts["ours_sft"], parts["torch_sft"]
    if "tokens_per_s" in o:
        mfu = lambda r: f"{r['mfu']:.1%}" if "mfu" in r else "–"
        ratio = f"{g['sft_step_speedup']:.2f}x" if "sft_step_speedup" in g else "–"
        rows.append(f"| SFT step, batch {o['batch_size']} x {o['seq_len']} | "
                    f"{_rate(o, 'tokens')} | {_rate(t, 'tokens') if 'tokens_per_s' in t else '–'}"
                    f" | {ratio} | {mfu(o)} | {mfu(t)} |")
    for key, ratio in g.get("decode_speedup", {}).items():
        rows.append(f"| decode, {key.replace('_', ' ')} | "
                    f"{_rate(parts['ours_decode'][key], 'tokens')} | "
                    f"{_rate(parts['torch_decode'][key], 'tokens')} | {ratio:.2f}x | | |")
    errors = [f"{k}: {v['error'][-300:]}" for k, v in parts.items() if "error" in v]
    return rows + ([""] + [f"- error in {e}" for e in errors] if errors else [])


def markdown(results: dict[str, Any]) -> str:
    m, b = results["machine"], results["benchmarks"]
    load = lambda v: ", ".join(f"{x:.2f}" for x in v)
    out = ["# Benchmarks", "",
           f"Measured {m['date']} on {m['cpu_model']} ({m['cpu_cores']} cores), "
           f"{m['platform']}; Python {m['python']}, jax {m['jax']}, flax {m['flax']}, "
           f"torch {m['torch']}, transformers {m['transformers']}. Load average (1, 5, 15 min) "
           f"{load(m['load_avg_1_5_15'])} at the start, {load(results['load_avg_end'])} at the "
           f"end (the CPU is shared: ⚠ noisy marks figures whose max − min exceeds "
           f"{common.NOISY_SPREAD:.0%} of the median). Figures: median (min–max) after warm-up; "
           f"ratio = ours / transformers medians. Regenerate with `python -m benchmarks`.", ""]
    out += _side_by_side(b) + [""]
    for name, title, render in (("sizes", "Size sweep", _sizes),
                                ("joint_step", "Joint SFT + RL step", _joint),
                                ("scaling", "Scaling on a device mesh", _scaling),
                                ("pipeline", "Input pipeline", _pipeline),
                                ("gpu", "GPU", _gpu)):
        if name not in b:
            continue
        out += [f"## {title}", ""]
        out += ([f"failed: `{b[name]['error'][-500:]}`"] if "error" in b[name]
                else render(b[name])) + [""]
    errors = [n for n in ("sft_step", "decode") if "error" in b.get(n, {})]
    out += [f"{n} failed: `{b[n]['error'][-500:]}`" for n in errors]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated subset of "
                        + ",".join(BENCHMARKS))
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--torch-compile", action="store_true",
                        help="sft_step also times transformers under torch.compile (its compile "
                        "takes minutes on 2 cores)")
    args = parser.parse_args(argv)
    if args.torch_compile:
        BENCHMARKS["sft_step"] = [*BENCHMARKS["sft_step"], "--torch-compile"]
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    out_dir = Path(args.out_dir)
    json_path = out_dir / "results.json"
    previous = json.loads(json_path.read_text()).get("benchmarks", {}) if (
        args.only and json_path.exists()) else {}
    machine = common.machine_info()
    results = {}
    for name in names:
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        results[name] = run_one(name)
        status = "FAILED" if "error" in results[name] else "ok"
        print(f"[benchmarks] {name} {status} in {results[name]['wall_s']:.1f} s", file=sys.stderr,
              flush=True)
    benchmarks = {**previous, **results}
    out = {"machine": machine, "load_avg_end": [round(x, 2) for x in os.getloadavg()],
           "command": "python -m benchmarks" + (f" --only {args.only}" if args.only else ""),
           **speedups(benchmarks), "benchmarks": benchmarks}
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(out, indent=1) + "\n")
    (out_dir / "results.md").write_text(markdown(out))
    print((out_dir / "results.md").read_text())
    return out


if __name__ == "__main__":
    main()
