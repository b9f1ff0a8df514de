#!/usr/bin/env python3
"""Run seaweed_jax on every host of a Cloud TPU VM slice, from your laptop.

Needs Python 3.8+ and the gcloud CLI on the machine you launch from (not on the TPU VMs);
seaweed_jax itself need not be installed there. Standard library only.

    python3 launch/tpu_vm.py create dit7b --zone=us-east5-a --accelerator=v5p-64
    python3 launch/tpu_vm.py copy   dit7b --zone=us-east5-a   # this repository -> every worker
    python3 launch/tpu_vm.py run    dit7b --zone=us-east5-a --log=stage1 -- \\
        python -m seaweed_jax.train \\
        --config=configs/dit/seaweed_7b.py:stage1,root=gs://BUCKET/sw7b,vae=gs://BUCKET/vae_48x \\
        --workdir=gs://BUCKET/sw7b/stage1
    python3 launch/tpu_vm.py logs   dit7b --zone=us-east5-a --log=stage1   # reattach
    python3 launch/tpu_vm.py delete dit7b --zone=us-east5-a

`create --queued` / `delete --queued` go through a queued resource (waits for capacity).
`--dry_run` (before or after the subcommand) prints every command and runs nothing.
`$GCLOUD` overrides the gcloud executable (default `gcloud`).

`run` starts the command on every worker under nohup/setsid, output to
~/seaweed_jax_logs/RUN.log on each worker, so it survives ssh disconnects; then it follows
worker 0's log until the run ends there (Ctrl-C stops following, not the run).
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# jax on the workers when the local one is missing or outside setup.py's "jax>=0.10,<0.11".
DEFAULT_JAX = "0.10.2"
JAX_SERIES = "0.10."
DEFAULT_RUNTIME = "v2-alpha-tpuv5"
REMOTE_DIR = "~/seaweed_jax"
REMOTE_TARBALL = "~/seaweed_jax.tgz"
LOG_DIR = "~/seaweed_jax_logs"
# Excluded when the repository is not a git checkout (with git: what .gitignore ignores).
EXCLUDES = (".git", ".venv*", "__pycache__", "*.egg-info", ".pytest_cache", "*.pyc")
TOP_EXCLUDES = ("runs", "build")
INSTALL_HINT = "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"


class Failed(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class Runner:
    """Runs (or, in a dry run, prints) gcloud commands: argv lists, never through a local shell."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.gcloud = os.environ.get("GCLOUD") or "gcloud"

    def check_gcloud(self) -> None:
        if self.dry_run or shutil.which(self.gcloud):
            return
        if os.environ.get("GCLOUD"):
            print(f"error: GCLOUD={self.gcloud} not found; {INSTALL_HINT}", file=sys.stderr)
        else:
            print(f"error: gcloud not found on PATH; {INSTALL_HINT}", file=sys.stderr)
        raise Failed(2)

    def __call__(self, *args: str, what: str = "command") -> None:
        argv = [self.gcloud, *args]
        print("+ " + shlex.join(argv), flush=True)
        if self.dry_run:
            return
        code = subprocess.call(argv)
        if code:
            print(f"error: {what} failed (exit {code}): {shlex.join(argv)}", file=sys.stderr)
            raise Failed(code)


def _where(args) -> list[str]:
    flags = [f"--zone={args.zone}"]
    if args.project:
        flags.append(f"--project={args.project}")
    return flags


def _ssh(args, worker: str, command: str) -> list[str]:
    return ["compute", "tpus", "tpu-vm", "ssh", args.name, *_where(args), f"--worker={worker}",
            f"--command={command}"]


def _log(run: str) -> str:
    return f"{LOG_DIR}/{run}.log"


def _follow(run: str, lines: str) -> str:
    """tail -F a run's log; stops once the run's process (pid in RUN.pid, if any) has exited."""
    return (f"pid=$(cat {LOG_DIR}/{run}.pid 2>/dev/null); "
            f"tail -n {lines} -F ${{pid:+--pid=$pid}} {_log(run)}")


def _run_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise argparse.ArgumentTypeError(f"{value!r}: use letters, digits, '.', '_', '-'")
    return value


def _reattach(args, run: str) -> str:
    project = f" --project={shlex.quote(args.project)}" if args.project else ""
    return (f"{shlex.quote(sys.argv[0])} logs {shlex.quote(args.name)} "
            f"--zone={shlex.quote(args.zone)}{project} --log={run}")


# --- create / delete ---------------------------------------------------------------------------

def cmd_create(args, gcloud: Runner) -> None:
    if args.queued:
        argv = ["compute", "tpus", "queued-resources", "create", args.name,
                f"--node-id={args.name}", f"--zone={args.zone}",
                f"--accelerator-type={args.accelerator}", f"--runtime-version={args.version}"]
    else:
        argv = ["compute", "tpus", "tpu-vm", "create", args.name, f"--zone={args.zone}",
                f"--accelerator-type={args.accelerator}", f"--version={args.version}"]
    if args.project:
        argv.append(f"--project={args.project}")
    if args.spot:
        argv.append("--spot")
    gcloud(*argv, what="create")
    if args.queued:
        print(f"queued: the TPU VM exists once `gcloud compute tpus queued-resources describe "
              f"{args.name} --zone={args.zone}` says ACTIVE")


def cmd_delete(args, gcloud: Runner) -> None:
    if args.queued:
        argv = ["compute", "tpus", "queued-resources", "delete", args.name, f"--zone={args.zone}",
                "--force", "--quiet"]
    else:
        argv = ["compute", "tpus", "tpu-vm", "delete", args.name, f"--zone={args.zone}", "--quiet"]
    if args.project:
        argv.append(f"--project={args.project}")
    gcloud(*argv, what="delete")


# --- copy --------------------------------------------------------------------------------------

def local_jax_version() -> str:
    """The local jax's version if it is in setup.py's series, else DEFAULT_JAX."""
    try:
        from importlib.metadata import version
        found = version("jax")
    except Exception:  # jax not installed here
        return DEFAULT_JAX
    return found if found.startswith(JAX_SERIES) else DEFAULT_JAX


def _excluded(rel: Path) -> bool:
    if rel.parts and rel.parts[0] in TOP_EXCLUDES:
        return True
    return any(fnmatch(part, pat) for part in rel.parts for pat in EXCLUDES)


def repo_files(root: Path) -> list[str]:
    """Files to ship, relative to root: git's tracked + untracked-not-ignored, else a walk."""
    if (root / ".git").exists():
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], check=True, stdout=subprocess.PIPE).stdout
        names = dict.fromkeys(n for n in out.decode().split("\0") if n)
        # Tracked files deleted from the working tree are listed too: skip them.
        return [n for n in names if os.path.lexists(root / n)]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if not _excluded(rel_dir / d))
        files += [str(rel_dir / f) for f in sorted(filenames) if not _excluded(rel_dir / f)]
    return files


def pack(root: Path, dest: Path) -> int:
    """Writes root's files (working-tree contents) to the tarball dest; returns their count."""
    def clean(info: tarfile.TarInfo):
        if "/.git/" in f"/{info.name}/":  # inside a git submodule
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    files = repo_files(root)
    with tarfile.open(dest, "w:gz") as tar:
        for name in files:
            path = root / name
            recursive = path.is_dir() and not path.is_symlink()  # a git submodule
            tar.add(path, arcname=name, recursive=recursive, filter=clean)
    return len(files)


def cmd_copy(args, gcloud: Runner) -> None:
    jax_version = args.jax_version or local_jax_version()
    install = (f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && "
               f"tar xzf {REMOTE_TARBALL} -C {REMOTE_DIR} && cd {REMOTE_DIR} && "
               f"pip install -q -e {shlex.quote('.[gcs]')} "
               f"{shlex.quote(f'jax[tpu]=={jax_version}')}")
    how = ("git ls-files --cached --others --exclude-standard" if (REPO / ".git").exists()
           else "all files but " + " ".join(EXCLUDES + TOP_EXCLUDES))
    with tempfile.TemporaryDirectory(prefix="seaweed_jax_copy_") as tmp:
        tarball = Path(tmp) / "seaweed_jax.tgz"
        if gcloud.dry_run:
            print(f"# would pack {REPO} ({how}) into {tarball}")
        else:
            n = pack(REPO, tarball)
            size = tarball.stat().st_size / 1e6
            print(f"packed {n} files of {REPO} ({how}): {size:.1f} MB", flush=True)
        gcloud("compute", "tpus", "tpu-vm", "scp", str(tarball), f"{args.name}:{REMOTE_TARBALL}",
               *_where(args), "--worker=all", what="scp to all workers")
    gcloud(*_ssh(args, "all", install), what="unpack + pip install on all workers")


# --- run / logs --------------------------------------------------------------------------------

def remote_start(run: str, cmd: list[str]) -> str:
    """The shell line that starts argv `cmd` detached on a worker, output to LOG_DIR/RUN.log.

    The words of `cmd` reach `exec "$@"` unchanged (one shlex.join, no re-parsing by a shell).
    The job's pid goes to LOG_DIR/RUN.pid, so that following the log stops when it exits.
    """
    start = shlex.quote('source launch/multihost_env.sh && exec "$@"')
    return (f"mkdir -p {LOG_DIR} && cd {REMOTE_DIR} && "
            f"{{ nohup setsid bash -c {start} seaweed_jax {shlex.join(cmd)} "
            f"> {_log(run)} 2>&1 < /dev/null & echo $! > {LOG_DIR}/{run}.pid; }}")


def cmd_run(args, gcloud: Runner) -> None:
    run = args.log or datetime.datetime.now(datetime.timezone.utc).strftime("run-%Y%m%d-%H%M%S")
    gcloud(*_ssh(args, "all", remote_start(run, args.cmd)), what="start on all workers")
    print(f"started {run} on all workers (each logs to {_log(run)}); it survives ssh disconnects. "
          f"Reattach with: {_reattach(args, run)}", flush=True)
    if args.detach:
        return
    print("following worker 0 until the run ends there (Ctrl-C stops following, not the run)",
          flush=True)
    try:
        gcloud(*_ssh(args, "0", _follow(run, "+1")), what="following worker 0's log")
    except Failed:
        print(f"the run itself goes on; reattach with: {_reattach(args, run)}", file=sys.stderr)
        raise


def cmd_logs(args, gcloud: Runner) -> None:
    if args.list:
        remote = f"ls -lt {LOG_DIR}"
    elif args.no_follow:
        remote = f"tail -n {args.lines} {_log(args.log)}"
    else:
        remote = _follow(args.log, str(args.lines))
    gcloud(*_ssh(args, str(args.worker), remote), what="logs")


# --- command line ------------------------------------------------------------------------------

def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    fmt = argparse.RawDescriptionHelpFormatter
    dry_help = "print every command (prefixed '+ '), run nothing"
    parser = argparse.ArgumentParser(prog="tpu_vm.py", description=__doc__, formatter_class=fmt)
    parser.add_argument("--dry_run", action="store_true", help=dry_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("name", help="TPU VM (node) name")
    common.add_argument("--zone", required=True, help="e.g. us-east5-a")
    common.add_argument("--project", help="GCP project (default: gcloud's configured one)")
    # Also accepted after the subcommand; SUPPRESS keeps a --dry_run given before it.
    common.add_argument("--dry_run", action="store_true", default=argparse.SUPPRESS, help=dry_help)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{create,copy,run,logs,delete}")
    subs = {}

    def add(name, func, **kw):
        p = sub.add_parser(name, parents=[common], formatter_class=fmt, **kw)
        p.set_defaults(func=func)
        subs[name] = p
        return p

    p = add("create", cmd_create, help="create a TPU VM slice (or a queued resource)",
            description="Create a TPU VM slice (gcloud compute tpus tpu-vm create), or with "
            "--queued a queued resource, which waits for capacity.")
    p.add_argument("--accelerator", required=True, help="accelerator type, e.g. v5p-64, v4-32")
    p.add_argument("--version", default=DEFAULT_RUNTIME,
                   help="TPU runtime version (default %(default)s, for v5p; v5e: "
                   "v2-alpha-tpuv5-lite, v4: tpu-ubuntu2204-base)")
    p.add_argument("--queued", action="store_true", help="create through a queued resource")
    p.add_argument("--spot", action="store_true", help="spot capacity (cheaper, preemptible)")

    p = add("copy", cmd_copy, help="ship this repository to all workers and pip install it",
            description="Pack this repository (found from this script's location, not the current "
            "directory; in a git checkout: tracked plus untracked-but-not-ignored files, "
            "working-tree contents), copy it to every worker, unpack it into ~/seaweed_jax "
            "(replacing the previous copy) and pip install -e '.[gcs]' 'jax[tpu]==VERSION' there.")
    p.add_argument("--jax_version", help="jax[tpu] version for the workers (default: the local "
                   f"jax's if it is {JAX_SERIES}x, else {DEFAULT_JAX})")

    p = add("run", cmd_run, help="start a command on all workers (survives disconnects)",
            usage="tpu_vm.py run NAME --zone ZONE [--log RUN] [--detach] -- CMD [ARGS ...]",
            description="Start CMD (everything after '--', quoting kept) on every worker, in "
            "~/seaweed_jax after sourcing launch/multihost_env.sh, under nohup/setsid with output "
            "to ~/seaweed_jax_logs/RUN.log; then follow worker 0's log until the run ends there. "
            "Ctrl-C or a dropped connection stops following, not the run.\n\n"
            "example:\n  tpu_vm.py run dit7b --zone=us-east5-a --log=stage1 -- \\\n"
            "    python -m seaweed_jax.train --config=configs/dit/seaweed_7b.py:stage1,"
            "root=gs://BUCKET/sw7b,vae=gs://BUCKET/vae_48x --workdir=gs://BUCKET/sw7b/stage1")
    p.add_argument("--log", type=_run_name, help="run name, the log is ~/seaweed_jax_logs/RUN.log "
                   "(default: run-<UTC timestamp>)")
    p.add_argument("--detach", action="store_true", help="start and return, do not follow the log")

    p = add("logs", cmd_logs, help="show / follow a run's log on one worker, or list the logs",
            description="tail ~/seaweed_jax_logs/RUN.log on one worker, following it until the run "
            "ends there unless --no_follow; or --list the logs.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--log", type=_run_name, help="run name (as given to or printed by run)")
    what.add_argument("--list", action="store_true", help="list ~/seaweed_jax_logs")
    p.add_argument("--worker", type=int, default=0, help="worker index (default %(default)s)")
    p.add_argument("--lines", type=int, default=100,
                   help="last lines to show (default %(default)s)")
    p.add_argument("--no_follow", action="store_true", help="print and return")

    p = add("delete", cmd_delete, help="delete the TPU VM slice (or the queued resource)",
            description="Delete the TPU VM slice, or with --queued the queued resource and its "
            "node. Does not ask for confirmation.")
    p.add_argument("--queued", action="store_true", help="it was created with create --queued")
    return parser, subs


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first '--' is run's command, passed on word for word.
    cmd = None
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1:]
    parser, subs = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        if not cmd:
            subs["run"].error("missing the command to run after '--' (e.g. -- python -m "
                              "seaweed_jax.train --config=... --workdir=gs://...)")
        args.cmd = cmd
    elif cmd is not None:
        subs[args.command].error(f"unexpected arguments after '--': {shlex.join(cmd)}")
    gcloud = Runner(args.dry_run)
    try:
        gcloud.check_gcloud()
        args.func(args, gcloud)
    except Failed as e:
        return e.code
    except KeyboardInterrupt:
        if args.command in ("run", "logs"):
            print("\nstopped following the log; the run goes on", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
