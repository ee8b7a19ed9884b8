"""Kernel md inside a qemu VM, next to the blockmirror engine on the same virtio disks.

This machine's kernel has no md module, so kernel md runs in a small VM under qemu's software
emulation (TCG; KVM here cannot run a guest): Debian's linux-image-cloud-amd64 kernel and an
initramfs with busybox, mdadm, fio, nbd-client, the virtio/md/raid1/nbd modules and the blockmirror
binary with the libraries it links. Two virtio disks: vda = OLD (SIZE bytes of seeded random data),
vdb = NEW (zeros, same size), plus a small out disk the guest writes its files to (a tar). The guest's
/init (tools/lib/md-vm-init.sh) runs one scenario per boot and prints "@@ KEY value" lines on the
serial console; OLD and NEW are compared on the host once the VM has powered off.

Usage: tools/md-vm.sh build                 the initramfs (and blockmirror unless BLOCKMIRROR_BIN)
       tools/md-vm.sh run [SCENARIO...]     boot once per scenario (default: both)
       tools/md-vm.sh all                   build, then run md, md-blockmirror, engine-nbd, engine
       (tools/md-vm.sh runs tools/bench.py md-vm: the same commands)
Scenarios (each starts from the same OLD and an empty NEW; the same fio writes during the recovery):
  md              kernel md through mdadm: mdadm --build /dev/md0 --level=1 --raid-disks=2
                  /dev/vda missing; fio on /dev/md0 (libaio, O_DIRECT); mdadm --add /dev/md0
                  /dev/vdb once fio writes; wait until sync_action is idle; check (mismatch_cnt);
                  mdadm --stop
  md-blockmirror  the same through blockmirror's verbs with --backend md (build, add, wait, check,
                  detail, status --json, stop)
  engine          the blockmirror engine: build m0 --target missing (NBD on a unix socket), fio
                  through its export (fio's nbd engine), add /dev/vdb, wait, check, stop
  engine-nbd      the engine reached as md is: the guest kernel's NBD client (nbd-client -unix,
                  netlink, NBD_CONNECTIONS connections) makes the export /dev/nbd0 and md's fio job
                  (libaio, O_DIRECT) writes there; add /dev/vdb, wait, check, nbd-client -d, stop
  both            md then engine, then the two side by side
  like-for-like   md, engine-nbd and engine side by side (with REPEAT=3: medians of 3)
  fixtures        /proc/mdstat, mdadm --detail and md sysfs in named states (degraded,
                  recovering, in sync, check running, mismatches, repaired, resync, resync=PENDING,
                  resync=DELAYED, faulty, removed, stopped) into FIXTURES_DIR
Environment:
  SIZE=512M            size of OLD and NEW (K/M/G suffixes)
  FIO_MB=64            MiB fio writes during the recovery (FIO_BS=64k, FIO_QD=8, FIO_SEED=1234)
  MD_SPEED_MAX=        KiB/s for /proc/sys/dev/raid/speed_limit_max (default: md's, 200000)
  BM_ARGS=             extra arguments of the engine's build (e.g. "--speed-max 200000")
  NBD_CONNECTIONS=2    engine-nbd: nbd-client's -C (the kernel client's connections; it makes
                       one hardware queue each, at most one per vCPU)
  NBD_SCHEDULER=none   engine-nbd: /dev/nbd0's I/O scheduler (none, like md0; empty: the
                       kernel's choice, mq-deadline)
  CLOCKSOURCE=tsc      the guest's clock source (clocksource=tsc tsc=reliable; empty: the
                       kernel's choice, which under TCG is the HPET: every clock read traps into
                       the emulator; perf in the guest found a fifth of its busy time there)
  GUEST_MD5=0          1: also md5sum both disks in the guest (busybox: ~9 s per 512 MiB)
  PROGRESS=1           the recovery's progress every 0.5 s (md: sync_completed; engine and
                       engine-nbd: its metrics endpoint, --metrics, one busybox wget a poll, in
                       the guest and daemon CPU figures); 0: none
  REPEAT=1             boots per scenario (the order alternates); the table shows medians
  BLOCKMIRROR_BIN=     the binary to put in the VM (default: swift build -c release into
                       .build-vm); `build` and `all` rebuild it, `run` builds only if missing
  WORK=/var/tmp/blockmirror-md-vm   initramfs, images, logs and results (not on tmpfs:
                       the disks are opened with O_DIRECT, cache=none)
  FIXTURES_DIR=$WORK/fixtures       where `run fixtures` puts the captured files
  RESULTS=$WORK/results/results.json   the JSON of all runs (results, progress, the table)
  MEM=2048 (MiB)  VM_TIMEOUT=600 (s: the VM must have powered off by then)  KVER= (guest kernel)
Exit status: 0 if every scenario's steps succeeded, check found no mismatch, both legs have the
same md5 and (with several scenarios) every scenario ended with the same contents; 1 otherwise
(also if the VM did not power off in time); 64 usage.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from . import MIB, blockmirror
from .log import BenchError, log
from .md_vm_disks import make_disks, md5_of, out_image, pristine_old, qemu_drives, remove_legs
from .md_vm_fixtures import install_fixtures
from .md_vm_guest import Kernel, build_initramfs, guest_kernel, initramfs_current, initramfs_path
from .md_vm_report import (boot_result, compare, console_lines, fio_marks, markers, progress, scenario_ok,
                           write_results, write_sorted)
from .packages import ensure_packages, first_line
from .procs import run_limited
from .results import build_meta, machine_meta, now_iso
from .run import run_main
from .settings import env, iec_number, positive_int

SUMMARY = "kernel md in a qemu VM (TCG) next to the blockmirror engine, side by side"
PACKAGES = ("qemu-system-x86", "linux-image-cloud-amd64", "busybox-static", "mdadm", "cpio", "fio", "libnbd0",
            "nbd-client", "python3")
SCENARIOS = ("md", "md-blockmirror", "engine", "engine-nbd", "fixtures")
# Run words that stand for several scenarios.
GROUPS = {"both": ("md", "engine"), "like-for-like": ("md", "engine-nbd", "engine")}
SCRATCH = ".build-vm"  # SwiftPM scratch path of the binary built for the VM
VCPUS = 2
USAGE = ("usage: tools/md-vm.sh build | run [md|md-blockmirror|engine|engine-nbd|both|like-for-like|fixtures]... "
         "| all")
EXIT_USAGE = 64


def size_setting(value: str) -> int:
    """SIZE in bytes (K/M/G suffixes, either case), a multiple of 1 MiB."""
    nbytes = iec_number(value.upper())
    if not nbytes or nbytes != int(nbytes):
        raise BenchError(f"bad size {value}")
    if int(nbytes) % MIB:
        raise BenchError("SIZE must be a multiple of 1 MiB")
    return int(nbytes)


@dataclass
class Settings:
    """The environment settings (the usage above), checked before anything runs."""
    work: str
    size: str
    nbytes: int
    fio_mb: str
    fio_bs: str
    fio_qd: str
    fio_seed: str
    md_speed_max: str
    bm_args: str
    nbd_connections: int
    nbd_scheduler: str
    clocksource: str
    guest_md5: str
    progress: str
    results: str
    repeat: int
    mem: int
    vm_timeout: int
    fixtures_dir: str
    data_seed: str
    kver: str
    blockmirror_bin: str

    @classmethod
    def from_env(cls) -> "Settings":
        work = env("WORK", "/var/tmp/blockmirror-md-vm")
        size = env("SIZE", "512M")
        return cls(work=work, size=size, nbytes=size_setting(size), fio_mb=env("FIO_MB", "64"),
                   fio_bs=env("FIO_BS", "64k"), fio_qd=env("FIO_QD", "8"), fio_seed=env("FIO_SEED", "1234"),
                   md_speed_max=env("MD_SPEED_MAX", ""), bm_args=env("BM_ARGS", ""),
                   nbd_connections=positive_int("NBD_CONNECTIONS", env("NBD_CONNECTIONS", "2")),
                   nbd_scheduler=env("NBD_SCHEDULER", "none"), clocksource=env("CLOCKSOURCE", "tsc"),
                   guest_md5=env("GUEST_MD5", "0"), progress=env("PROGRESS", "1"),
                   results=env("RESULTS", os.path.join(work, "results", "results.json")),
                   repeat=positive_int("REPEAT", env("REPEAT", "1")),
                   mem=positive_int("MEM", env("MEM", "2048"), "a number of MiB"),
                   vm_timeout=positive_int("VM_TIMEOUT", env("VM_TIMEOUT", "600"), "a number of seconds"),
                   fixtures_dir=env("FIXTURES_DIR", os.path.join(work, "fixtures")),
                   data_seed=env("DATA_SEED", "blockmirror-md-vm"), kver=env("KVER", ""),
                   blockmirror_bin=env("BLOCKMIRROR_BIN", ""))

    def guest_timeout(self) -> int:
        """The guest's own watchdog: it ends a hung scenario with its files saved, 30 s before the
        host kills qemu (the whole limit when that is 60 s or less)."""
        return self.vm_timeout - 30 if self.vm_timeout > 60 else self.vm_timeout


def clock_words(clocksource: str) -> list[str]:
    """The kernel's clock source words. TCG's CPU model lacks constant_tsc, so the kernel calls
    the TSC unsynchronized and takes the HPET, which every clock_gettime then reads through an
    emulated MMIO access (no vDSO): a userspace server that reads the clock per request pays for
    it where md in the kernel does not. TCG's TSC comes from one host clock for all vCPUs, so
    tsc=reliable is true here, and gives the guest the vDSO clock real machines have."""
    if not clocksource:
        return []
    return [f"clocksource={clocksource}"] + (["tsc=reliable"] if clocksource == "tsc" else [])


@dataclass
class Guest:
    """What every boot of one command shares: the settings, kernel, initramfs, binary and OLD."""
    s: Settings
    kernel: Kernel
    bin_path: str
    pristine: str = ""

    def cmdline(self, scenario: str, out_disk: str) -> str:
        """The kernel command line: the console, the clock source, and the scenario's bm_*
        settings for /init."""
        s = self.s
        words = ["console=ttyS0", "loglevel=1", "panic=-1", *clock_words(s.clocksource),
                 f"bm_scenario={scenario}", f"bm_out={out_disk}",
                 f"bm_fio_mb={s.fio_mb}", f"bm_fio_bs={s.fio_bs}", f"bm_fio_qd={s.fio_qd}",
                 f"bm_fio_seed={s.fio_seed}", f"bm_md5={s.guest_md5}", f"bm_progress={s.progress}",
                 f"bm_timeout={s.guest_timeout()}", f"bm_nbd_conns={s.nbd_connections}",
                 f"bm_nbd_sched={s.nbd_scheduler}"]
        if s.md_speed_max:
            words.append(f"bm_md_speed_max={s.md_speed_max}")
        if s.bm_args:
            words.append("bm_args=" + s.bm_args.replace(" ", ","))
        return " ".join(words)

    def qemu(self, scenario: str, disks: list[str], out_disk: str) -> list[str]:
        return ["qemu-system-x86_64", "-accel", "tcg", "-m", str(self.s.mem), "-smp", str(VCPUS), "-display", "none",
                "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel", self.kernel.image,
                "-initrd", initramfs_path(self.s.work), "-append", self.cmdline(scenario, out_disk),
                *qemu_drives(disks)]

    def meta(self) -> dict:
        """What the JSON says about the runs: the settings, the VM, the host and the build."""
        s = self.s
        return {"date": now_iso(), "size_bytes": s.nbytes, "fio_mb": s.fio_mb, "fio_bs": s.fio_bs, "fio_qd": s.fio_qd,
                "md_speed_max": s.md_speed_max or None, "bm_args": s.bm_args, "repeat": s.repeat, "mem_mib": s.mem,
                "vcpus": VCPUS, "guest_kernel": self.kernel.version, "clocksource": s.clocksource or None,
                "nbd_connections": s.nbd_connections, "nbd_scheduler": s.nbd_scheduler or None,
                "progress": s.progress == "1",
                "qemu": first_line("qemu-system-x86_64", "--version"), **machine_meta(s.work),
                "blockmirror_bin": self.bin_path, **build_meta()}

    def boot(self, scenario: str, run_dir: str) -> dict:
        """One VM run of a scenario: RUN_DIR/{console.log,markers.json,result.json,files/,out.img};
        shows the guest's "@@" and "--" lines; returns the result."""
        shutil.rmtree(run_dir, ignore_errors=True)
        files = os.path.join(run_dir, "files")
        os.makedirs(files)
        disks, out_disk = make_disks(scenario, run_dir, self.pristine, self.s.nbytes)
        console = os.path.join(run_dir, "console.log")
        log(f"boot: scenario {scenario} (qemu TCG, {self.s.mem} MiB, {VCPUS} vCPUs, SIZE={self.s.size}; "
            f"log {console})")
        t0 = time.monotonic()
        with open(console, "w") as out:
            status = run_limited(self.qemu(scenario, disks, out_disk), self.s.vm_timeout, out, out)
        wall = time.monotonic() - t0
        lines = console_lines(console)
        for line in lines:
            if line.startswith(("@@", "-- ")):
                print(f"  [{scenario}] {line}")
        sys.stdout.flush()
        found = markers(lines)
        write_sorted(os.path.join(run_dir, "markers.json"), found)
        found["PROGRESS"] = progress(lines, found.get("RECOVERY_SPAN"))
        if subprocess.run(["tar", "-xf", out_image(run_dir), "-C", files], stderr=subprocess.DEVNULL).returncode:
            log(f"{scenario}: nothing readable on the out disk")
        md5_old, md5_new = md5_of(disks[0]), md5_of(disks[1])
        result = boot_result(found, status, self.s.vm_timeout, md5_old, md5_new, wall)
        result.update(fio_marks(files, scenario))
        write_sorted(os.path.join(run_dir, "result.json"), result)
        remove_legs(run_dir, disks)
        log(f"{scenario}: qemu wall {wall:.1f} s; md5 OLD {md5_old} NEW {md5_new}")
        return result

    def run_scenarios(self, scenarios: list[str]) -> int:
        """REPEAT rounds of the scenarios (the order reversed each round), then the comparison
        (also in results/compare.txt); 0 if every scenario succeeded and the runs agree."""
        results_dir = os.path.join(self.s.work, "results")
        shutil.rmtree(results_dir, ignore_errors=True)
        status, compared, order = 0, [], list(scenarios)
        for rnd in range(1, self.s.repeat + 1):
            for sc in order:
                run_dir = os.path.join(results_dir, sc if self.s.repeat == 1 else f"{sc}-{rnd}")
                result = self.boot(sc, run_dir)
                if sc != "fixtures":
                    compared.append(os.path.join(run_dir, "result.json"))
                    continue
                if not install_fixtures(run_dir, result, self.s.fixtures_dir):
                    status = 1
                if not scenario_ok(result):
                    log("fixtures: failed: " + ("; ".join(result["FAIL"]) or f"guest status {result.get('STATUS')}"))
                    status = 1
            order.reverse()
        if compared:
            lines, ok = compare(compared)
            text = "".join(line + "\n" for line in lines)
            print("\n" + text, end="", flush=True)
            with open(os.path.join(results_dir, "compare.txt"), "w") as f:
                f.write(text)
            write_results(self.s.results, self.meta(), compared, lines, ok)
            status = status or (0 if ok else 1)
            log(f"results: {results_dir} (console.log, result.json and the guest's files per scenario)")
        return status


def has_md_backend(bin_path: str) -> bool:
    return "--backend" in (blockmirror.help_text(bin_path, "build") or "")


def all_scenarios(bin_path: str) -> list[str]:
    """The scenarios of `all` (and of the report's md-vm): md, md-blockmirror (if this binary has
    --backend md), engine-nbd, engine."""
    return ["md", *(["md-blockmirror"] if has_md_backend(bin_path) else []), "engine-nbd", "engine"]


def scenario_list(words: list[str], bin_path: str) -> list[str]:
    """The scenarios to boot (a group word stands for its scenarios), each known and possible
    with this binary."""
    scenarios = [sc for w in words for sc in GROUPS.get(w, (w,))]
    for sc in scenarios:
        if sc not in SCENARIOS:
            raise BenchError(f"unknown scenario {sc} ({', '.join(SCENARIOS + tuple(GROUPS))})")
        if sc == "md-blockmirror" and not has_md_backend(bin_path):
            raise BenchError(f"{bin_path} has no --backend md (scenario md-blockmirror)")
    return scenarios


def binary(s: Settings, rebuild: bool) -> str:
    """BLOCKMIRROR_BIN, or the release build in .build-vm (built again if rebuild or missing)."""
    return blockmirror.binary(s.blockmirror_bin, "BLOCKMIRROR_BIN", SCRATCH, os.path.join(s.work, "build.log"),
                              reuse=not rebuild)


def main(argv: list[str]) -> int:
    s = Settings.from_env()
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(__doc__)
        return 0 if argv else EXIT_USAGE
    command, words = argv[0], argv[1:]
    if command not in ("build", "run", "all"):
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    os.makedirs(s.work, exist_ok=True)
    ensure_packages(PACKAGES)
    kernel = guest_kernel(s.kver)
    guest = Guest(s, kernel, binary(s, rebuild=command != "run"))
    if command == "run":
        scenarios = scenario_list(words or ["both"], guest.bin_path)
        if not initramfs_current(s.work, kernel, guest.bin_path):
            build_initramfs(s.work, kernel, guest.bin_path)
    else:
        build_initramfs(s.work, kernel, guest.bin_path)
        if command == "build":
            return 0
        scenarios = all_scenarios(guest.bin_path)
        if "md-blockmirror" not in scenarios:
            log(f"md-blockmirror skipped: {guest.bin_path} has no --backend")
    guest.pristine = pristine_old(s.work, s.nbytes, s.data_seed)
    return guest.run_scenarios(scenarios)


def cli(argv: list[str]) -> int:
    return run_main("md-vm", lambda _run: main(argv), plain_log=True)
