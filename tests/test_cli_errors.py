"""Every verb answers a user mistake with ONE `error: ...` line naming the fix, exit code 2,
no traceback; `--debug` / SEAWEED_DEBUG=1 shows the traceback; a bug keeps its traceback and
exit code 1 (seaweed_jax/cli.py). The table of cases is tests/_error_cases.py (also rendered
to docs/errors.md by scripts/error_table.py).

Each case is a subprocess of the real CLI (each imports JAX: ~3-6 s), run two at a time. The
fast subset (one or two cases per kind of mistake) runs in `make test`; the rest is slow.
"""
from __future__ import annotations

import pytest

import _error_cases as E

FAST = [c for c in E.CASES if not c.slow]
SLOW = [c for c in E.CASES if c.slow]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli_errors"))


@pytest.fixture(scope="module")
def fast_results(root):
    # stub runs (the real config, no model): every fast case stops at the run's kind or before
    return E.run_all(FAST, E.build_fixtures(root, real_runs=False))


@pytest.fixture(scope="module")
def slow_results(root):
    return E.run_all(SLOW, E.build_fixtures(root, real_runs=True))


def _report(r: E.Result) -> str:
    return (f"{r.case.id}: {'; '.join(r.problems)}\n  argv: {' '.join(r.argv[1:])}\n"
            f"  stderr (last 2000 chars):\n{r.stderr[-2000:]}")


def test_the_table_is_big_enough():
    user = [c for c in E.CASES if c.code == 2 and not c.traceback]
    assert len(user) >= 25
    assert {c.verb for c in user} == {"train", "sample", "reconstruct", "evaluate", "prepare",
                                      "check"}
    assert len({c.id for c in E.CASES}) == len(E.CASES)
    assert any(c.traceback and c.code == 2 for c in FAST)      # --debug
    assert any(c.code == 1 for c in FAST)                      # a bug


@pytest.mark.parametrize("case", FAST, ids=[c.id for c in FAST])
def test_fast_case(case, fast_results):
    r = fast_results[case.id]
    assert not r.problems, _report(r)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW, ids=[c.id for c in SLOW])
def test_slow_case(case, slow_results):
    r = slow_results[case.id]
    assert not r.problems, _report(r)


def test_one_line_keeps_the_hint_of_a_config_traceback():
    from seaweed_jax import cli
    msg = ("flag --config=c.py:x: Error whilst parsing config file:\n\nTraceback (most recent "
           "call last):\n  File \"c.py\", line 3\n    raise ValueError('bad x')\nValueError: "
           "unknown config argument 'x'; expected one of ['size']\n")
    assert cli.one_line(msg) == ("flag --config=c.py:x: unknown config argument 'x'; expected "
                                 "one of ['size']")
    assert cli.one_line("a\n  b   c") == "a b c"


def test_user_error_policy():
    import numpy as np
    from seaweed_jax import cli

    def raised(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the policy under test
            return e
        raise AssertionError("did not raise")

    assert cli.user_message(cli.UserError("x")) == "x"
    assert cli.user_message(raised(lambda: open("/no/such/file"))) == (
        "/no/such/file: No such file or directory")
    # a ValueError raised by seaweed_jax's own validation is a user error ...
    from seaweed_jax.moving_shapes import labels
    e = raised(lambda: labels.label_name("no_such_kind", 0))
    assert "unknown label 'no_such_kind'" in cli.user_message(e)
    # ... one raised inside numpy (or any library), or by a builtin the package called, is a bug
    assert cli.user_message(raised(lambda: labels.label_name("color", "x"))) is None
    assert cli.user_message(raised(lambda: np.zeros(3).reshape(2))) is None
    assert cli.user_message(raised(lambda: {}["k"])) is None
    assert cli.user_message(raised(lambda: int("x"))) is None    # raised here, not in the package
