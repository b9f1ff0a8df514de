"""Test runner: `loop.train` on a config file, optionally SIGKILLing itself after a step.

    python tests/_dit_run.py --config=C.py --workdir=W --data_dir=D [--kill_at=S]
"""
from __future__ import annotations

import os
import signal
import sys


def _main(argv):
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "config file")
    flags.DEFINE_string("workdir", None, "workdir", required=True)
    flags.DEFINE_string("data_dir", None, "data dir", required=True)
    flags.DEFINE_integer("kill_at", -1, "SIGKILL self right after this step's bookkeeping")

    def main(_):
        FLAGS = flags.FLAGS
        logging.set_verbosity(logging.WARNING)
        from seaweed_jax.trainer import loop

        def kill_hook(step, state, manager):
            if step == FLAGS.kill_at:
                manager.wait_until_finished()   # any save issued this step is on disk
                print(f"test hook: SIGKILL at step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

        loop.train(FLAGS.config, FLAGS.workdir, data_dir=FLAGS.data_dir, hooks=[kill_hook])

    app.run(main, argv)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    _main(sys.argv)
