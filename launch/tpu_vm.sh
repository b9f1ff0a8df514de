#!/usr/bin/env bash
# Moved to launch/tpu_vm.py (same subcommands, flags instead of positional args; --help).
exec python3 "$(dirname "$0")/tpu_vm.py" "$@"
