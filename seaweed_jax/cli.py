"""The command-line boundary of every verb: `cli.run(main)` instead of `absl.app.run(main)`.

A user mistake is reported as ONE line on stderr, `error: <what is wrong, and the fix>`, with
exit code 2 and no traceback. `--debug` (or the environment variable SEAWEED_DEBUG=1) prints
the traceback above that line (exit code still 2). A bug keeps Python's traceback and exit
code 1. The table of mistakes and their lines: docs/errors.md (scripts/error_table.py).

What counts as a user mistake (the exception policy):
* While the flags are parsed (before `main` runs): everything absl's flag parser rejects
  (`flags.Error`): unknown flags and config overrides (absl's "Did you mean" hint kept),
  values that do not parse (`--steps=abc`, `--config.optimizer.lr=abc`), an override of a
  field that does not exist, a config file argument its `get_config(arg)` rejects (the
  config's own last line is shown); a config file that cannot be read (missing, a folder)
  or has a syntax error.
* While `main` runs:
  - `UserError` (the verbs' own checks of their flags, workdirs and inputs),
    `app.UsageError` and `flags.Error`, wherever raised;
  - FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError and
    FileExistsError, wherever raised: they name a path the user gave;
  - a ValueError raised by a `raise` statement of seaweed_jax itself: the library's
    validation (config fields, sizes, dataset names, run kinds), whose messages name the
    field and the fix. This is decided by the innermost traceback frame (package code, and
    its line a `raise`): a ValueError raised inside numpy / JAX / Orbax / etils, or by a
    builtin the package called (a shape mismatch, a bad call), is NOT a user error.
* Everything else is a bug (TypeError, KeyError, AttributeError, AssertionError, a
  ValueError from a third-party library, ...): traceback, exit code 1.
The price of the ValueError rule: a ValueError that seaweed_jax raises for a state that is
really a bug reads like a user error; `--debug` shows where it came from.
"""
from __future__ import annotations

import linecache
import os
import re
import sys
import traceback
from typing import Callable

from absl import app, flags

from seaweed_jax import paths

EXIT_USER_ERROR = 2
DEBUG_ENV = "SEAWEED_DEBUG"
# OSErrors that name a path the user passed: user mistakes wherever they are raised.
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                  FileExistsError)
_TRACEBACK = "Traceback (most recent call last)"

_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of a user error too (or set "
                           f"{DEBUG_ENV}=1); bugs always show theirs.")

# What to train / where a run of each task comes from (hints in the run checks).
TRAIN_HINT = {
    "vae": "train one with `python -m seaweed_jax.train --config=configs/vae/tiny.py "
           "--workdir=runs/vae_tiny`",
    "dit": "train one with `python -m seaweed_jax.train "
           "--config=configs/dit/moving_shapes.py:vae=runs/vae_tiny --workdir=runs/dit`",
    "refine": "train one with `python -m seaweed_jax.train "
              "--config=configs/refine/moving_shapes.py:vae=runs/vae_small --workdir=runs/refine`",
}
TASK_NAME = {"vae": "VAE", "dit": "DiT", "distill": "distilled DiT", "refine": "refiner"}


class UserError(ValueError):
    """A mistake in what the user passed: reported as one `error: ...` line, exit code 2.
    The message says what is wrong and how to fix it."""


def debug_requested(argv: list[str] | None = None) -> bool:
    """--debug / --debug=true on the command line (also when parsing failed), or SEAWEED_DEBUG."""
    if os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes", "on"):
        return True
    debug = False
    for arg in (sys.argv if argv is None else argv)[1:]:
        if arg == "--":
            break
        if arg in ("--debug", "-debug", "--debug=true", "--debug=1", "--debug=True"):
            debug = True
        elif arg in ("--nodebug", "-nodebug") or arg.lower() in ("--debug=false", "--debug=0"):
            debug = False
    return debug


def one_line(text: str) -> str:
    """A message on one line: the last line of an embedded traceback (its exception line,
    without the type), other line breaks and runs of spaces collapsed."""
    text = str(text)
    if _TRACEBACK in text:
        head, _, tb = text.partition(_TRACEBACK)
        lines = [ln.strip() for ln in tb.splitlines() if ln.strip()]
        last = lines[-1] if lines else ""
        kind, sep, msg = last.partition(": ")
        if sep and kind.replace(".", "").replace("_", "").isalnum() and " " not in kind:
            last = msg
        head = head.strip().rstrip(":").strip()
        # absl prefixes "flag --config=X: "; ml_collections adds "Error whilst parsing ..."
        head = head.replace("Error whilst parsing config file", "").strip().rstrip(":").strip()
        text = f"{head}: {last}" if head else last
    return " ".join(text.split())


def fail(message: str, exc: BaseException | None = None, argv: list[str] | None = None):
    """Print `error: message` (after the traceback of `exc` with --debug) and exit 2."""
    debug = flags.FLAGS.is_parsed() and _DEBUG.value
    if exc is not None and (debug or debug_requested(argv)):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def _raised_by_project(exc: BaseException) -> bool:
    """Whether `exc` was raised by a `raise` statement of the seaweed_jax package: the
    innermost traceback frame is package code (by its module's package: a verb run with
    `python -m` is `__main__` there) and its line is a `raise`. A ValueError from C code that
    the package called (numpy's reshape, int('x')) has no frame of its own, so the line test
    tells it apart."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    package = tb.tb_frame.f_globals.get("__package__") or ""
    if package.split(".")[0] != __package__:
        return False
    line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno)
    return line.lstrip().startswith("raise ")


def user_message(exc: BaseException) -> str | None:
    """The one-line message if `exc` is a user mistake under the policy above, else None."""
    if isinstance(exc, (UserError, app.UsageError, flags.Error)):
        return str(exc)
    if isinstance(exc, USER_OS_ERRORS):
        if exc.filename is not None and exc.strerror and str(exc.filename) not in exc.strerror:
            return f"{exc.filename}: {exc.strerror}"   # e.g. [Errno 2] from open(): name the file
        return str(exc)
    if isinstance(exc, ValueError) and _raised_by_project(exc):
        return str(exc)
    return None


# ----------------------------------------------------------------------------- flag parsing

# absl's messages for values that do not parse, in words (the flag's value stays in front)
_VALUE_ERRORS = ((re.compile(r"invalid literal for int\(\) with base 10: .*"), "not an integer"),
                 (re.compile(r"could not convert string to float: .*"), "not a number"))


def _flag_message(exc: flags.Error) -> str:
    msg = str(exc)
    if isinstance(exc, flags.IllegalFlagValueError):
        msg = msg.removeprefix("flag ")
        for pattern, words in _VALUE_ERRORS:
            msg = pattern.sub(words, msg)
    if isinstance(exc, flags.UnrecognizedFlagError):
        name = exc.flagname
        if "." in name:   # a config override: say which config fields exist
            msg += (f" (--{name.split('.', 1)[0]}.FIELD=VALUE overrides an existing field of the "
                    f"config; --helpfull lists them)")
        else:
            msg += " (--helpfull lists the flags)"
    return msg


def _flag_arg(name: str, argv: list[str]) -> str:
    """The (last) value given to --name on the command line ('?' if not found)."""
    value = "?"
    for i, a in enumerate(argv[1:], 1):
        if a.startswith((f"--{name}=", f"-{name}=")):
            value = a.split("=", 1)[1]
        elif a in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _config_read_error(name: str, error: BaseException, argv: list[str]):
    """A config file that could not be read (missing, a folder, unreadable): one line."""
    arg = _flag_arg(name, argv)
    path = arg.split(":", 1)[0]
    where = paths.run_path(path) if path else None
    if where is None or not where.exists():
        fail(f"--{name}={arg}: config file {path!r} does not exist (relative paths start at "
             f"{os.getcwd()}); pass a config file such as --{name}=configs/vae/tiny.py",
             error, argv)
    if where.is_dir():
        fail(f"--{name}={arg}: {path!r} is a folder; pass a config file (a .py with "
             f"get_config), e.g. --{name}=configs/vae/tiny.py", error, argv)
    cause = next((e for e in _chain(error) if isinstance(e, OSError) and e.strerror), None)
    fail(f"--{name}={arg}: config file {path!r} cannot be read: "
         f"{cause.strerror if cause else one_line(str(error)).rsplit(': ', 1)[-1]}", error, argv)


def _config_flags_with_errors():
    """(name, error) of config-file flags whose file could not be read. ml_collections only
    reports those when the config is first used, with two chained tracebacks."""
    for name in list(flags.FLAGS):
        flag = flags.FLAGS[name]
        if name == flag.name and type(flag.value).__name__ == "_ErrorConfig":
            yield name, object.__getattribute__(flag.value, "_error")


def _is_config_file_flag(flag) -> bool:
    return type(flag.parser).__name__ in ("ConfigFileFlagParser", "_ConfigFileParser")


def _override_error(exc: BaseException, argv: list[str]) -> str | None:
    """The line for a config override of a field that does not exist (ml_collections raises
    an AttributeError around a KeyError whose text has the "Did you mean" hint), else None."""
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    ours = [f for f in frames if "config_flags" in f.f_code.co_filename
            and "ml_collections" in f.f_code.co_filename]
    if not ours or "ml_collections" not in frames[-1].f_code.co_filename:
        return None   # e.g. a KeyError raised by a config file's own code: a bug
    name, field = "config", None
    for f in ours:
        if isinstance(f.f_locals.get("self"), flags.Flag):
            name = f.f_locals["self"].name
        if isinstance(f.f_locals.get("field_path"), str):
            field = f.f_locals["field_path"]
    text = next((e.args[0] for e in _chain(exc) if isinstance(e, KeyError) and e.args
                 and isinstance(e.args[0], str)), str(exc))
    if field is None:
        return f"--{name}.FIELD override: {text}"
    parent = field.rpartition(".")[0]
    hint = re.search(r'Did you mean "([^"]+)" instead of', text)
    arg = f"--{name}.{field}"
    if hint:
        better = f"{parent}.{hint.group(1)}" if parent else hint.group(1)
        return f"{arg}: the config has no field {field!r}. Did you mean --{name}.{better} ?"
    return (f"{arg}: the config has no field {field!r}; check the name in the config file "
            f"(nested fields are --{name}.section.field)")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; a rejected flag or config file is one `error:` line, exit 2."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(_flag_message(e), e, argv)
    except SyntaxError as e:   # a config file that is not valid Python
        fail(f"{e.filename}:{e.lineno}: {e.msg} (a syntax error in the config file)", e, argv)
    except (AttributeError, KeyError, IndexError) as e:   # an override of a missing field
        message = _override_error(e, argv)
        if message is None:
            raise
        fail(message, e, argv)
    except OSError as e:       # an override of a config whose file could not be read
        names = [n for n in list(flags.FLAGS) if _is_config_file_flag(flags.FLAGS[n])
                 and _flag_arg(n, argv) != "?"]
        if not names or "earlier failure to load" not in str(e):
            raise
        _config_read_error(names[0], e, argv)
    for name, error in _config_flags_with_errors():
        _config_read_error(name, error, argv)
    return rest


def no_arguments(argv: list[str]) -> None:
    """Reject positional arguments (all options are --flag=value)."""
    if len(argv) > 1:
        raise UserError(f"unexpected argument(s) {' '.join(argv[1:])!r}: every option is "
                        f"--flag=value (--help lists them)")


def require(value, flag: str, what: str):
    """`value`, or a UserError naming the missing --flag."""
    if value is None or value == "":
        raise UserError(f"--{flag} is required: {what}")
    return value


def check_range(name: str, value, *, minimum=None, above=None, hint: str = "") -> None:
    """UserError unless value >= minimum (or > above); None (the flag's default) passes."""
    if value is None:
        return
    if minimum is not None and value < minimum:
        raise UserError(f"--{name}={value} must be >= {minimum}{hint}")
    if above is not None and value <= above:
        raise UserError(f"--{name}={value} must be > {above}{hint}")


def require_run(workdir: str | None, *, flag: str = "workdir", task: str | tuple | None = None,
                verb: str = "this verb"):
    """The config of the run at `workdir` after checking, before any work, that it exists, is
    a run (a checkpoint or config.json), has a finalized checkpoint and, with `task` (a name
    or a tuple of names), is a run of that task. Raises UserError naming the fix."""
    tasks = (task,) if isinstance(task, str) else tuple(task or ())
    task = tasks[0] if tasks else None
    need = (f"a {' or '.join(TASK_NAME.get(t, t) for t in tasks)} run directory" if tasks
            else "a run directory")
    workdir = require(workdir, flag, f"{need} (what `python -m seaweed_jax.train` wrote)")
    path = paths.run_path(workdir)
    shown = paths.display(workdir)
    hint = (f", or {TRAIN_HINT[task]}" if task in TRAIN_HINT
            else " (the --workdir of a `python -m seaweed_jax.train` run)")
    if not path.exists():
        where = "" if shown == workdir else f" ({shown})"
        raise UserError(f"--{flag}={workdir} does not exist{where}; pass {need}{hint}")
    if not path.is_dir():
        raise UserError(f"--{flag}={workdir} is a file; pass {need}")
    from seaweed_jax import checkpoint  # lazy: Orbax / JAX, only for the verbs that load runs
    step = checkpoint.latest_step(workdir)
    if step is None and not (path / "config.json").exists():
        raise UserError(f"--{flag}={workdir} is not a run (no checkpoints, no config.json); "
                        f"pass {need}{hint}")
    if step is None:
        raise UserError(f"--{flag}={workdir} has no finalized checkpoint yet; let its training "
                        f"save one (config.ckpt_every) or train it longer")
    config = checkpoint.load_config(workdir)
    got = config.get("task")
    if tasks and got not in tasks:
        extra = ""
        if got == "dit" and config.get("vae_workdir"):
            extra = f" (this DiT's VAE run is {config.vae_workdir})"
        raise UserError(f"--{flag}={workdir} is a {TASK_NAME.get(got, repr(got))} run "
                        f"(task {got!r}); {verb} needs {need}{extra}")
    return config


def _guarded(main: Callable[[list[str]], object]):
    def wrapper(argv):
        try:
            return main(argv)
        except Exception as e:  # user mistakes -> one line; anything else is re-raised
            message = user_message(e)
            if message is None:
                raise
            fail(message, e)
    return wrapper


def run(main: Callable[[list[str]], object]) -> None:
    """`app.run(main)` with the user-error policy of this module (see its docstring)."""
    app.run(_guarded(main), flags_parser=parse_flags)
