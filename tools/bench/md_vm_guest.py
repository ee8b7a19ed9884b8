"""What the md-vm guest boots: Debian's cloud kernel of this host, and the initramfs around the
guest's /init (tools/lib/md-vm-init.sh): static busybox, mdadm, fio, nbd-client and the blockmirror
binary with the libraries they link, the virtio/md/raid1/nbd modules in load order (mods/order).

The initramfs is rebuilt only when its stamp (kernel, blockmirror binary and mtime, the init and
this builder) no longer matches.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from . import ROOT
from .log import BenchError, log

GUEST_INIT = os.path.join(ROOT, "tools", "lib", "md-vm-init.sh")
ROOTFS_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "etc", "proc", "sys", "dev", "run",
               "tmp", "root", "mods")
MODULES = ("virtio_pci", "virtio_blk", "md-mod", "raid1", "nbd")
FIO_ENGINES = "/usr/lib/x86_64-linux-gnu/fio"
GUEST_BLOCKMIRROR = "/usr/local/bin/blockmirror"


@dataclass
class Kernel:
    """The guest's kernel: its version, image and module directory."""
    version: str

    @property
    def image(self) -> str:
        return f"/boot/vmlinuz-{self.version}"

    @property
    def moddir(self) -> str:
        return f"/lib/modules/{self.version}"


def _version_key(text: str) -> list:
    """A sort key that orders versions as sort -V does (digit runs as numbers)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", text)]


def guest_kernel(kver: str) -> Kernel:
    """KVER, or the newest cloud-amd64 kernel in /lib/modules; its image must be in /boot."""
    if not kver:
        found = sorted((os.path.basename(p) for p in glob.glob("/lib/modules/*-cloud-amd64")), key=_version_key)
        kver = found[-1] if found else ""
    kernel = Kernel(kver)
    if not kver or not os.path.isfile(kernel.image):
        raise BenchError("no cloud-amd64 kernel in /boot and /lib/modules (linux-image-cloud-amd64)")
    return kernel


def module_order(moddir: str, names: tuple[str, ...]) -> list[str]:
    """The .ko files (paths relative to moddir) that load names in dependency order, from
    modules.dep; built-in modules are skipped (said on stderr), an unknown one is an error."""
    def short(path: str) -> str:
        return os.path.basename(path).split(".ko")[0].replace("-", "_")

    dep = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            key, _, value = line.partition(":")
            dep[key.strip()] = value.split()
    by_name = {short(k): k for k in dep}
    builtin_path = os.path.join(moddir, "modules.builtin")
    builtin = set()
    if os.path.exists(builtin_path):
        with open(builtin_path) as f:
            builtin = {short(line.strip()) for line in f if line.strip()}
    out: list[str] = []
    seen: set[str] = set()

    def visit(key: str) -> None:
        if key in seen:
            return
        seen.add(key)
        for d in dep[key]:
            visit(d)
        out.append(key)

    for name in names:
        n = name.replace("-", "_")
        if n in builtin:
            log(f"module {name} is built into the kernel")
        elif n not in by_name:
            raise BenchError(f"no module {name} in {moddir}/modules.dep")
        else:
            visit(by_name[n])
    return out


def _install(src: str, dest: str) -> None:
    """install -D -m755 SRC DEST: the file's bytes at dest, its directories created."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o755)


def _strip_debug(path: str) -> None:
    """Debug sections only: the initramfs is unpacked under emulation, its size is boot time."""
    subprocess.run(["strip", "--strip-debug", path], stderr=subprocess.DEVNULL)


def _linked_libraries(path: str) -> list[str]:
    """Every absolute path ldd lists for an ELF file (its libraries and loader), sorted."""
    p = subprocess.run(["ldd", path], capture_output=True, text=True)
    return sorted(set(re.findall(r"/[^ ]+", p.stdout)))


def copy_elf(rootfs: str, path: str, dest: str | None = None) -> None:
    """An executable (at dest, by default its own path) and every library it links, at their
    paths in rootfs (libraries stripped of debug sections)."""
    _install(path, rootfs + (dest or path))
    for lib in _linked_libraries(path):
        if os.path.exists(lib) and not os.path.exists(rootfs + lib):
            _install(os.path.realpath(lib), rootfs + lib)
            _strip_debug(rootfs + lib)


def _copy_modules(rootfs: str, kernel: Kernel) -> list[str]:
    """The modules into /mods, decompressed (busybox insmod wants them plain); returns their
    names in load order (what mods/order lists)."""
    names = []
    for ko in module_order(kernel.moddir, MODULES):
        name = os.path.basename(ko)
        shutil.copyfile(os.path.join(kernel.moddir, ko), os.path.join(rootfs, "mods", name))
        if name.endswith(".xz"):
            subprocess.run(["xz", "-d", os.path.join(rootfs, "mods", name)], check=True)
            name = name[:-3]
        elif name.endswith(".zst"):
            subprocess.run(["zstd", "-q", "-d", "--rm", os.path.join(rootfs, "mods", name)], check=True)
            name = name[:-4]
        names.append(name)
    with open(os.path.join(rootfs, "mods", "order"), "w") as f:
        f.write("".join(n + "\n" for n in names))
    return names


def _fill_rootfs(rootfs: str, kernel: Kernel, bin_path: str) -> list[str]:
    """The initramfs's files; returns the module names."""
    shutil.rmtree(rootfs, ignore_errors=True)
    for d in ROOTFS_DIRS:
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
    if subprocess.run(["ldd", "/bin/busybox"], capture_output=True).returncode == 0:
        raise BenchError("/bin/busybox is not static (busybox-static)")
    copy_elf(rootfs, "/sbin/mdadm")
    copy_elf(rootfs, "/usr/bin/fio")
    copy_elf(rootfs, "/sbin/nbd-client")  # the kernel NBD client's set-up tool (engine-nbd)
    # fio's nbd engine is built into Debian's fio (it links libnbd); external engines, if any:
    for engine in sorted(glob.glob(os.path.join(FIO_ENGINES, "*.so"))):
        copy_elf(rootfs, engine)
    copy_elf(rootfs, bin_path, GUEST_BLOCKMIRROR)
    _strip_debug(rootfs + GUEST_BLOCKMIRROR)
    with open(os.path.join(rootfs, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(rootfs, "etc", "group"), "w") as f:
        f.write("root:x:0:\n")
    modules = _copy_modules(rootfs, kernel)
    _install(GUEST_INIT, os.path.join(rootfs, "init"))
    return modules


def _pack(rootfs: str, initrd: str) -> None:
    """find . | cpio -o -H newc | gzip -1, into initrd (replaced only once complete)."""
    with open(initrd + ".tmp", "wb") as out:
        find = subprocess.Popen(["find", "."], cwd=rootfs, stdout=subprocess.PIPE)
        cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet"], cwd=rootfs, stdin=find.stdout,
                                stdout=subprocess.PIPE)
        gzip = subprocess.Popen(["gzip", "-1"], stdin=cpio.stdout, stdout=out)
        find.stdout.close()
        cpio.stdout.close()
        if (gzip.wait(), cpio.wait(), find.wait()) != (0, 0, 0):
            raise BenchError(f"cannot pack {rootfs} into {initrd}.tmp (find | cpio | gzip failed)")
    os.replace(initrd + ".tmp", initrd)


def _stamp(kernel: Kernel, bin_path: str) -> str:
    """What the initramfs was built from: the kernel, the binary (path and mtime), the init and
    this builder (md5)."""
    h = hashlib.md5()
    for path in (GUEST_INIT, os.path.abspath(__file__)):
        with open(path, "rb") as f:
            h.update(f.read())
    return (f"kernel={kernel.version}\nblockmirror={bin_path} {int(os.stat(bin_path).st_mtime)}\n"
            f"init={h.hexdigest()}\n")


def _du(*args: str) -> str:
    """du's human-readable size (its first field)."""
    return subprocess.run(["du", *args], capture_output=True, text=True).stdout.split("\t")[0]


def _tool_version(*cmd: str, field: int | None = None) -> str:
    """A tool's version line (stdout and stderr), or one space-separated field of it."""
    text = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout.strip()
    return text.split(" ")[field] if field is not None and len(text.split(" ")) > field else text


def build_initramfs(work: str, kernel: Kernel, bin_path: str) -> None:
    """WORK/initramfs.cpio.gz from WORK/initramfs/, and its stamp; says what went in."""
    rootfs, initrd = os.path.join(work, "initramfs"), initramfs_path(work)
    modules = _fill_rootfs(rootfs, kernel, bin_path)
    _pack(rootfs, initrd)
    with open(os.path.join(work, "initramfs.stamp"), "w") as f:
        f.write(_stamp(kernel, bin_path))
    log(f"initramfs {initrd}: {_du('-h', initrd)} gzipped ({_du('-sh', rootfs)} unpacked); "
        f"modules: {' '.join(modules)}")
    log(f"guest kernel {kernel.image}; mdadm {_tool_version('mdadm', '--version', field=2)}; "
        f"fio {_tool_version('fio', '--version')}; blockmirror {bin_path}")


def initramfs_path(work: str) -> str:
    return os.path.join(work, "initramfs.cpio.gz")


def initramfs_current(work: str, kernel: Kernel, bin_path: str) -> bool:
    """The initramfs exists and its stamp matches what it would be built from now."""
    try:
        with open(os.path.join(work, "initramfs.stamp")) as f:
            return os.path.isfile(initramfs_path(work)) and f.read() == _stamp(kernel, bin_path)
    except OSError:
        return False
