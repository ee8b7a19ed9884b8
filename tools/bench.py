#!/usr/bin/env python3
"""The benchmarks of BlockMirror, one entry point:

  tools/bench.py passthrough   blockmirror serve vs raw, qemu-nbd, nbdkit (fio through NBD)
  tools/bench.py qd-sweep      the same peers at QD 1..64: IOPS and p50 latency per queue depth
  tools/bench.py recovery      blockmirror build vs a raw copy and qemu-storage-daemon's mirror
  tools/bench.py remote        recovery onto an NBD target on a second host (veth) vs qsd and nbdcopy
  tools/bench.py scaling       time to in-sync, RSS and NEW's allocation at 1 GiB, 16 GiB and 1 TiB sparse
  tools/bench.py crash-cost    regions a restart copies again after kill -9 of an in-sync mirror
  tools/bench.py md-vm build|run [SCENARIO...]|all
                               kernel md in a qemu VM next to the blockmirror engine
  tools/bench.py report        all of them in one go: a folder with REPORT.md and PNG plots

Each is set up through environment variables (SIZE=, RUNTIME=, REPEAT=, TARGETS=, ...): see
tools/bench.py COMMAND --help. tools/bench-passthrough.sh, tools/bench-qd-sweep.sh, tools/bench-recovery.sh,
tools/bench-remote.sh, tools/bench-scaling.sh, tools/bench-crash-cost.sh, tools/md-vm.sh and
tools/bench-report.sh run the same commands.
"""
import argparse
import importlib
import os
import sys

sys.dont_write_bytecode = True  # tools/ must stay as it is in git
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

COMMANDS = {"passthrough": "bench.passthrough", "qd-sweep": "bench.qd_sweep", "recovery": "bench.recovery", "remote": "bench.remote",
            "scaling": "bench.scaling", "crash-cost": "bench.crash_cost", "md-vm": "bench.md_vm",
            "report": "bench.report"}
OWN_ARGUMENTS = {"md-vm"}  # commands that read their own arguments (and usage exit status 64)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {name: importlib.import_module(path) for name, path in COMMANDS.items()}
    if argv and argv[0] in OWN_ARGUMENTS:
        return modules[argv[0]].cli(argv[1:])
    for name, module in modules.items():
        sub.add_parser(name, help=module.SUMMARY, description=module.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    args = parser.parse_args(argv)
    return modules[args.command].cli()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
