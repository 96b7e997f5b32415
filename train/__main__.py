"""Command line: `python -m train --config configs/<name>.py --workdir DIR [--config.<field>=<value> ...]`.

Several processes (a pod, or processes on one machine): pass `--distributed` for a cluster JAX detects by
itself, or `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` in each process.
"""

import logging

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from train import trainer

config_flags.DEFINE_config_file("config", None, "A config file with get_config(), e.g. configs/mlm_tiny.py.")
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and plots; a rerun resumes from it.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (cluster auto-detection).")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for several processes.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
FLAGS = flags.FLAGS


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
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
