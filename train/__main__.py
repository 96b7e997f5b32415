"""Command line: `python -m train --config configs/<name>.py --workdir DIR [--config.<field>=<value> ...]`.

Several processes (a pod, or processes on one machine): pass `--distributed` for a cluster JAX detects by
itself, or `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` in each process.

Problems with the config, the data, the workdir or a checkpoint end the run with one line saying what is
wrong and what to do (exit status 1; 2 for a field that does not exist), not a traceback.
"""

import logging
import re
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from train import checkpoint, trainer

config_flags.DEFINE_config_file("config", None, "A config file with get_config(), e.g. configs/mlm_tiny.py.")
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and plots; a rerun resumes from it.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (cluster auto-detection).")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for several processes.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
FLAGS = flags.FLAGS
# What a user can cause and fix; anything else keeps its traceback.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    RuntimeError,
    FloatingPointError,
    checkpoint.CheckpointWriteError,
)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line error for `--config.<field>` naming no field of the config."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as e:
        inner = e.args[0] if e.args else e  # ml_collections wraps the KeyError in an AttributeError
        hint = str(inner.args[0] if isinstance(inner, KeyError) and inner.args else inner).replace("\n", " ")
        names = [a.split("=")[0] for a in argv if a.startswith("--config.")] or ["--config.<field>"]
        key = re.match(r"'([^']*)'", hint)  # the unknown name, quoted first in ml_collections' message
        field = next((n for n in names if key and n.rsplit(".", 1)[-1] == key.group(1)), names[0])
        print(
            f"error: {field} is not a field of the config ({hint}); configs/default.py lists them.",
            file=sys.stderr,
        )
        sys.exit(2)


def main(argv):
    """Sets up logging and (optionally) multi-process JAX, then trains."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # libraries' INFO logs (Orbax) off; ours stay on
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log = logging.getLogger("train")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    if FLAGS.distributed or FLAGS.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes; ignored elsewhere
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
        trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)
