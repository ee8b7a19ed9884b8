"""`run fixtures`: the files the guest captured of kernel md in named states (/proc/mdstat,
mdadm --detail, md sysfs) copied into FIXTURES_DIR, with the README.md that says how each state
was reached and what the files show.
"""
from __future__ import annotations

import glob
import os
import shutil
import time

from .log import log

README = """# Kernel md outputs, captured from a real kernel

`mdstat-STATE.txt`, `detail-STATE.txt` and `sysfs-STATE.txt` were captured by
`FIXTURES_DIR=Tests/MDBackendTests/Fixtures tools/md-vm.sh run fixtures` ({date}):
kernel md in a qemu VM (TCG) running Debian 12's `linux-image-cloud-amd64` kernel {kernel} and
{mdadm} (Debian 12's mdadm package), with busybox as the shell.
The `seed-*` files come from elsewhere (the seed article) and are not touched by the script.

The arrays are non-persistent RAID1 builds (`mdadm --build /dev/md0 --level=1 --raid-disks=2`, no
superblock) of two 512 MiB virtio disks, vda (OLD, random data) and vdb (NEW); `resync-delayed` uses
two arrays on 30 MiB partitions of two more disks (md1 = vdc1 + vdd1, md2 = vdc2 + vdd2).

Per state:

- `mdstat-STATE.txt`: `/proc/mdstat` as read.
- `detail-STATE.txt`: `mdadm --detail /dev/mdN`, stdout and stderr; a non-zero exit status is added
  as a last line `(mdadm --detail exit status N)`.
- `sysfs-STATE.txt`: `KEY=VALUE` lines, one per file of `/sys/block/mdN/md/` (sync_action,
  sync_completed, sync_speed, sync_speed_min, sync_speed_max, mismatch_cnt, degraded, array_state,
  then last_sync_action, level, raid_disks, resync_start, component_size, metadata_version), then
  `dev-X/state`, `dev-X/slot`, `dev-X/errors` per member.

The three are read one after the other (sysfs, mdstat, detail) within about half a second: the
progress figures of a running sync differ slightly between them.

| state | how it was reached |
|---|---|
| degraded | `mdadm --build /dev/md0 --level=1 --raid-disks=2 /dev/vda missing` |
| recovering | `echo 5000 > sync_speed_max` (a local limit), `mdadm /dev/md0 --add /dev/vdb`, 3 s later |
| in-sync | the recovery finished (limits back to the system's) |
| check | `echo 5000 > sync_speed_max`, `echo check > sync_action`, 3 s later |
| checked | that check finished: mismatch_cnt 0, last_sync_action check |
| faulty | `mdadm /dev/md0 --fail /dev/vdb` |
| removed | then `mdadm /dev/md0 --remove /dev/vdb` |
| stopped | `mdadm --stop /dev/md0`: no array in mdstat, detail is mdadm's error (no sysfs file) |
| assume-clean | NEW changed alone (4 KiB at 4 MiB, 512 bytes at 100 MiB + 512: 9 sectors), then `mdadm --build ... --assume-clean /dev/vda /dev/vdb` |
| mismatch | `echo check > sync_action` finished on that array |
| repaired | `echo repair > sync_action` finished (a check afterwards found 0) |
| resync | `mdadm --build ... /dev/vda /dev/vdb` without `--assume-clean`, speed_limit_max 5000 (system), 3 s later |
| resync-pending | `echo frozen > sync_action` during that resync: `resync=PENDING` |
| resync-resumed | `echo idle > sync_action`: the resync goes on from where it stopped |
| resync-delayed | md1 resyncing, md2 waiting for it (same disks): mdstat of both, md2's detail and sysfs |
| resync-delayed-md1 | md1's detail and sysfs at the same moment |

What they show (kernel {kernel}):

- `sync_completed` moves in steps, not continuously: at 3% of a recovery (mdstat) it still read
  `0 / 1048576`; it reads `none` when idle and `delayed` for a delayed resync. mdstat's
  `(done/total)` is the finer progress.
- `mismatch_cnt` counts whole resync blocks (64 KiB = 128 sectors for RAID1), not differing sectors:
  9 changed sectors in two blocks gave 256. After `repair` it holds the count repaired.
- sync_speed_min/max read `N (system)` or `N (local)`; `sync_action` reads `frozen` while frozen.
- A non-persistent array's `Version :` is empty; member numbers in mdstat: `vdb[2]` after
  `--add` to a build with `missing`, `vdb[1]` when built with both; a failed one is `vdb[2](F)`.
- /proc/mdstat puts a tab before `resync=DELAYED` and `resync=PENDING` (after the 6 spaces), and
  ends each array with a line of 6 spaces.
- mdadm --detail's State says `resyncing (DELAYED)` / `resyncing (PENDING)`, `checking`,
  `degraded, recovering`; its "Rebuild/Resync/Check Status : N% complete" is a whole percent,
  mdstat's has a decimal.
"""


def install_fixtures(run_dir: str, result: dict, fixtures_dir: str) -> bool:
    """Copies RUN_DIR/files/fixtures/* into fixtures_dir and writes its README.md (the guest's
    kernel and mdadm version from result); False if no files came out of the VM."""
    src = os.path.join(run_dir, "files", "fixtures")
    if not os.path.isdir(src):
        log("fixtures: no files came out of the VM")
        return False
    os.makedirs(fixtures_dir, exist_ok=True)
    files = sorted(f for f in glob.glob(os.path.join(src, "*")) if os.path.isfile(f))
    for f in files:
        shutil.copy(f, fixtures_dir)
    kernel = result.get("KERNEL", "?")
    with open(os.path.join(fixtures_dir, "README.md"), "w") as f:
        f.write(README.format(date=time.strftime("%Y-%m-%d", time.gmtime()), kernel=kernel,
                              mdadm=result.get("MDADM", "?")))
    count = sum(len(names) for _, _, names in os.walk(src))
    log(f"fixtures: {count} files in {fixtures_dir} (kernel {kernel})")
    return True
