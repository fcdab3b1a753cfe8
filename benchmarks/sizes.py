"""Size sweep: the SFT step and decode, ours against transformers, away from the headline
shapes (batch 8 x 128 tokens, hidden 128; decode batch 8 and 64). One row per changed size,
everything else at the headline value; each row is short (3 interleaved timed calls per side),
so read its ratio to one digit.

    python -m benchmarks.sizes [--repeats 3] [--only hidden,seq,batch,decode]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks import common, decode, sft_step

SWEEPS: dict[str, tuple[int, ...]] = {
    "hidden": (64, 256, 512, 1024),   # SFT, batch 8 x 128
    "hidden_bf16": (512, 1024),       # the same, both sides in bf16 compute (torch.autocast)
    "seq": (256, 512, 1024),          # SFT, batch 8, hidden 128
    "batch": (1, 16, 32),             # SFT, 128 tokens, hidden 128
    "decode": (1, 16, 32),            # decode batch, 64 new tokens
}


def _sft_row(kind: str, value: int, repeats: int) -> dict[str, Any]:
    kw = {"hidden": dict(hidden=value), "hidden_bf16": dict(hidden=value, bf16=True),
          "seq": dict(seq_len=value), "batch": dict(batch_size=value)}[kind]
    r = sft_step.run(repeats=repeats, variants=False, **kw)
    return {"sweep": kind, "value": value, "ours": r["ours"], "transformers": r["transformers"],
            "speedup": r["speedup"], "torch_threads": r["torch_threads"]["threads"],
            "batch_size": r["batch_size"], "seq_len": r["seq_len"], "hidden": r["hidden"]}


def run(repeats: int = 3, only: tuple[str, ...] = tuple(SWEEPS)) -> dict[str, Any]:
    rows = []
    for kind in only:
        if kind == "decode":
            cfg, variables, hf_model = common.tiny_model_pair(1024)
            for b in SWEEPS[kind]:
                r = decode.measure(cfg, variables, hf_model, b, 64, repeats)
                rows.append({"sweep": kind, "value": b, **{k: r[k] for k in (
                    "ours", "transformers", "speedup", "batch_size", "new_tokens")},
                    "torch_threads": r["torch_threads"]["threads"]})
        else:
            rows += [_sft_row(kind, v, repeats) for v in SWEEPS[kind]]
    return {"benchmark": "sizes", "rows": rows,
            "min_speedup": min(r["speedup"] for r in rows)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(SWEEPS))
    args = parser.parse_args(argv)
    return common.emit(run(args.repeats, tuple(k for k in args.only.split(",") if k)))


if __name__ == "__main__":
    main()
