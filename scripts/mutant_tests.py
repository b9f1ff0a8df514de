"""pytest for one mutant (mutmut_config.py's test command): exit 1 whenever the tests notice.

mutmut 2 counts a mutant as killed only on exit code 1 (tests failed). A mutant that breaks
the module at import time makes pytest exit 2 (collection error), which mutmut would count
as survived; that is a loud failure, not a silent bug, so it is reported as a kill here.
Usage errors (4: a test id that does not exist, 5: no tests collected) pass through, and
scripts/mutate.py checks every test id before a run so they cannot occur.
"""
import os
import sys

import pytest

sys.path.insert(0, os.getcwd())  # the tree being mutated, not an installed copy

code = int(pytest.main(sys.argv[1:]))
sys.exit(1 if code in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.INTERRUPTED,
                       pytest.ExitCode.INTERNAL_ERROR) else code)
