"""python -m launch [COMMAND] --config configs/default.py [--config.key=value ...] [--stages a,b]

Without COMMAND, runs the stages generate -> sft -> rl -> eval -> export (or the ones named by
--stages) in that order. Commands: convert (Hugging Face -> orbax), diagnose (a checkpoint on
image files), eval (a checkpoint on any dataset split), ablate (configs/ablations.py).
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "configs/default.py"
COMMANDS = ("convert", "diagnose", "eval", "ablate")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "ml_collections config file.")
flags.DEFINE_string("stages", "", "Comma-separated stages to run (default: all, in order).")
flags.DEFINE_string("hf_dir", "", "convert: local Hugging Face model folder.")
flags.DEFINE_string("adapter_dir", "", "convert: optional PEFT LoRA adapter folder.")
flags.DEFINE_string("out", "", "convert: output folder for the orbax checkpoint.")
flags.DEFINE_bool("verify", False, "convert: compare logits with transformers (needs torch).")
flags.DEFINE_string("checkpoint", "", "diagnose/eval: checkpoint folder.")
flags.DEFINE_multi_string("image", [], "diagnose: image file (repeatable).")
flags.DEFINE_string("dataset", "", "eval: dataset (builder) name.")
flags.DEFINE_string("split", "test", "eval: split name.")


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _parse(argv: list[str]) -> list[str]:
    if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
        default = Path(DEFAULT_CONFIG)
        argv = [argv[0], f"--config={default if default.exists() else REPO / default}", *argv[1:]]
    try:
        return FLAGS(argv)
    except flags.Error as e:  # unknown key, wrong type, missing or broken config file
        _fail(str(e).splitlines()[0])
    except (KeyError, AttributeError) as e:  # how ml_collections reports an unknown override key
        text = str(e.args[0] if e.args else e).replace("\\n", "\n")
        lines = [ln.strip().strip("'\"") for ln in text.splitlines() if ln.strip()]
        key = lines[0].strip("\\'\"")
        given = [a.split("=")[0][2:] for a in argv[1:] if a.startswith("--config.")]
        dotted = next((g[len("config."):] for g in given if g.endswith("." + key)), key)
        hint = f" ({lines[1]})" if len(lines) > 1 else ""
        _fail(f"unknown config key '{dotted}' in the command-line overrides{hint}")
    except Exception as e:  # the config file itself failed: name it and the reason
        _fail(f"cannot load config: {type(e).__name__}: {str(e).splitlines()[0]}")
    raise AssertionError("unreachable")


def _load_config():
    try:
        config = FLAGS.config
        config.keys()  # forces the deferred load
        return config
    except OSError as e:  # config_flags defers a missing or broken file to first access
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        _fail("cannot load config file: " + " ".join(lines[-2:]))


def _setup_workdir(config) -> Path:
    import jax

    from skinr1_jax.config import to_text
    from skinr1_jax.stages.common import write_atomic

    workdir = Path(config.workdir)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    write_atomic(workdir / "config.txt", to_text(config))    # process 0 only
    index = jax.process_index()
    handler = logging.FileHandler(workdir / "logs" / ("launch.log" if index == 0 else
                                                      f"launch_{index}.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return workdir


def _stages(requested: str) -> list[str]:
    from skinr1_jax.config import STAGES

    if not requested:
        return list(STAGES)
    names = [s.strip() for s in requested.split(",") if s.strip()]
    for name in names:
        if name not in STAGES:
            _fail(f"unknown stage '{name}'; stages are {', '.join(STAGES)}")
    return [s for s in STAGES if s in names]


def main(argv: list[str]) -> int:
    rest = _parse(argv)
    from skinr1_jax.config import ConfigError, validate

    config = _load_config()
    try:
        validate(config)
    except ConfigError as e:
        _fail(str(e))
    command = rest[1] if len(rest) > 1 else None
    if len(rest) > 2 or (command is not None and command not in COMMANDS):
        _fail(f"unknown command {' '.join(rest[1:])!r}; commands are {', '.join(COMMANDS)}")
    if command == "eval" and not FLAGS.checkpoint:
        _fail("eval needs --checkpoint DIR (to run the eval stage of a config, use --stages eval)")
    if command is not None:
        module = importlib.import_module(f"skinr1_jax.stages.{command}")
        return int(module.command(config, FLAGS) or 0)

    from skinr1_jax.train.distributed import barrier, maybe_initialize_distributed
    from skinr1_jax.train.host import runs_on_cpu_only, tune_cpu_backend

    if runs_on_cpu_only():
        tune_cpu_backend()  # before any backend starts
    maybe_initialize_distributed()  # no-op on one host; pods and SLURM jobs join here
    workdir = _setup_workdir(config)
    for stage in _stages(FLAGS.stages):
        module = importlib.import_module(f"skinr1_jax.stages.{stage}")
        logging.info("stage %s: start", stage)
        try:
            module.run(config, workdir)
        except ConfigError as e:  # e.g. resuming a checkpoint written under another config
            _fail(str(e))
        barrier(f"stage:{stage}")   # the next stage reads what process 0 wrote
        logging.info("stage %s: done", stage)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
