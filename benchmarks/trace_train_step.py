"""Which project files one training run enters, in call order, up to its first checkpoint save.

    python benchmarks/trace_train_step.py --config=configs/dit/moving_shapes.py:t2v,vae=runs/demo/vae \
        --workdir=/tmp/trace_dit --data_dir=runs/demo/data --config.num_steps=1 --config.eval_every=0

Runs the train CLI's `main` under `sys.setprofile` and records every Python call whose code
lives in this repository (seaweed_jax/ or configs/). Prints ONE JSON line: `files` (each
project file in the order it is first entered), `packages` (the same per package) and
`reentries`: calls into a file that is already on the call stack below another project file
(A -> B -> A: a callback or an upward import at run time; the back-and-forth a layered package
avoids), with the file chain. Stops at the first `checkpoint.save`. docs/architecture.md lists
its output for the DiT step.
"""
from __future__ import annotations

import collections
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":
    sys.path.insert(0, REPO)   # run as a script from anywhere: the package and configs/

from absl import app  # noqa: E402

from seaweed_jax import train  # noqa: E402


class _Stop(Exception):
    pass


def _caused_by_stop(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, _Stop):
            return True
        e = e.__cause__
    return False


def main(argv) -> None:
    roots = (os.path.join(REPO, "seaweed_jax") + os.sep, os.path.join(REPO, "configs") + os.sep)
    stack, files, reentries = [], [], collections.Counter()

    def profile(frame, event, arg):
        del arg
        if event == "return":
            if stack:
                stack.pop()
            return
        if event != "call":
            return
        path = frame.f_code.co_filename
        rel = os.path.relpath(path, REPO) if path.startswith(roots) else None
        if rel is not None:
            if rel not in files:
                files.append(rel)
            chain = [f for f in stack if f is not None]
            if rel in chain and chain[-1] != rel:
                cycle = chain[len(chain) - 1 - chain[::-1].index(rel):] + [rel]
                cycle = [f for i, f in enumerate(cycle) if i == 0 or f != cycle[i - 1]]
                reentries[" -> ".join(cycle)] += 1
        stack.append(rel)
        if rel == "seaweed_jax/checkpoint.py" and frame.f_code.co_name == "save":
            raise _Stop()

    sys.setprofile(profile)
    try:
        train.main(argv)
    except Exception as e:   # the loop wraps a failed save (here: _Stop) in RunWriteError
        if not _caused_by_stop(e):
            raise
    finally:
        sys.setprofile(None)
    packages = list(dict.fromkeys(os.path.dirname(f) if f.count("/") > 1 else f for f in files))
    print(json.dumps({"num_files": len(files), "files": files, "packages": packages,
                      "reentries": dict(reentries)}))


if __name__ == "__main__":
    app.run(main)
