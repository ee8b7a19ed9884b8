"""The benchmark harness behind tools/bench.py.

Shared, written once: log.py (messages and errors), settings.py (the environment settings),
packages.py (tools installed when missing), workdir.py, procs.py (daemons: start, readiness,
stop), results.py (samples, medians, JSON), run.py (exit status and cleanup), files.py (the
files measured on), netns.py (a second host: a network namespace over veth). One module per peer:
blockmirror.py, qemu.py (qemu-nbd, qemu-storage-daemon), nbdkit.py; fio.py is the load generator
and the raw peer. One module per measure: passthrough.py, qd_sweep.py (passthrough's runs per
queue depth), recovery.py, remote.py and scaling.py (both reuse recovery.py's runs),
crash_cost.py, with their reports in *_report.py. md_vm.py runs kernel
md in a qemu VM next to the engine: the guest's kernel and initramfs in md_vm_guest.py, its disks
in md_vm_disks.py, its results and the side-by-side table in md_vm_report.py, the captured md
outputs in md_vm_fixtures.py. report.py runs them all into one folder: REPORT.md from
report_md.py, the PNG plots from report_plots.py (matplotlib), the time series of several runs
summarized by series.py.
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
MIB = 1 << 20
