#ifndef BLOCKMIRROR_CLIBAIO_SHIM_H
#define BLOCKMIRROR_CLIBAIO_SHIM_H

/* O_DIRECT, SEEK_DATA/SEEK_HOLE and fallocate() are only declared by glibc under _GNU_SOURCE.
 * Defining _GNU_SOURCE here would give this module a different view of the libc headers than
 * Swift's Glibc module (clang then rejects the mismatched struct definitions), so the shim takes
 * each from where it is always visible instead: __O_DIRECT from glibc's bits, SEEK_DATA/SEEK_HOLE,
 * RWF_DSYNC and FALLOC_FL_* from the kernel's uapi headers, and declares fallocate() itself. */

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <linux/fs.h>
#include <linux/falloc.h>
#include <sys/file.h>
#include <sys/eventfd.h>
#include <libaio.h>
#include <sys/syscall.h>
#include <linux/stat.h>
#include <malloc.h>
#include <sys/epoll.h>

/* Constants Swift cannot import (function-like or _GNU_SOURCE-guarded macros). */
static inline int bm_o_direct(void) { return __O_DIRECT; }
static inline int bm_seek_data(void) { return SEEK_DATA; }
static inline int bm_seek_hole(void) { return SEEK_HOLE; }
static inline int bm_falloc_punch_hole(void) { return FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE; }
static inline int bm_falloc_zero_range(void) { return FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE; }
static inline int bm_rwf_dsync(void) { return RWF_DSYNC; }

extern int fallocate(int fd, int mode, off_t offset, off_t len);
static inline int bm_fallocate(int fd, int mode, uint64_t offset, uint64_t length) {
    return fallocate(fd, mode, (off_t)offset, (off_t)length);
}
static inline int bm_flock(int fd, int exclusive) { return flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB); }

/* Block-device ioctls: return 0 or -1 with errno set. */
static inline int bm_blkgetsize64(int fd, uint64_t *bytes) { return ioctl(fd, BLKGETSIZE64, bytes); }
static inline int bm_blksszget(int fd, int *bytes) { return ioctl(fd, BLKSSZGET, bytes); }
static inline int bm_blkdiscard(int fd, uint64_t offset, uint64_t length) {
    uint64_t range[2] = { offset, length };
    return ioctl(fd, BLKDISCARD, range);
}
static inline int bm_blkzeroout(int fd, uint64_t offset, uint64_t length) {
    uint64_t range[2] = { offset, length };
    return ioctl(fd, BLKZEROOUT, range);
}

/* A file's birth time (statx STATX_BTIME), where the filesystem records one: 0, or -1 with errno
 * set (ENODATA when the filesystem keeps no birth time). glibc declares statx() only under
 * _GNU_SOURCE, so this calls the system call itself. */
static inline int bm_birth_time_at(int fd, const char *path, int64_t *seconds, uint32_t *nanoseconds) {
    struct statx info;
    memset(&info, 0, sizeof info);
    int flags = path[0] == 0 ? 0x1000 /* AT_EMPTY_PATH */ : 0;
    if (syscall(__NR_statx, fd, path, flags, STATX_BTIME, &info) != 0) return -1;
    if (!(info.stx_mask & STATX_BTIME)) { errno = ENODATA; return -1; }
    *seconds = info.stx_btime.tv_sec;
    *nanoseconds = info.stx_btime.tv_nsec;
    return 0;
}
static inline int bm_birth_time(int fd, int64_t *seconds, uint32_t *nanoseconds) {
    return bm_birth_time_at(fd, "", seconds, nanoseconds);
}
static inline int bm_birth_time_of_path(const char *path, int64_t *seconds, uint32_t *nanoseconds) {
    return bm_birth_time_at(-100 /* AT_FDCWD */, path, seconds, nanoseconds);
}
/* The inode's generation number (FS_IOC_GETVERSION: ext4, xfs and btrfs draw a new one for every
 * inode they allocate, so a file re-created under a reused inode number still differs). */
static inline int bm_inode_generation(int fd, uint32_t *generation) {
    int value = 0;
    if (ioctl(fd, FS_IOC_GETVERSION, &value) != 0) return -1;
    *generation = (uint32_t)value;
    return 0;
}

/* iocb preparation with a 64-bit tag returned in the completion event. */
static inline void bm_prep_read(struct iocb *cb, int fd, void *buf, size_t count, long long offset, uint64_t tag) {
    io_prep_pread(cb, fd, buf, count, offset);
    cb->data = (void *)(uintptr_t)tag;
}
static inline void bm_prep_write(struct iocb *cb, int fd, void *buf, size_t count, long long offset, int rwflags, uint64_t tag) {
    io_prep_pwrite(cb, fd, buf, count, offset);
    cb->aio_rw_flags = rwflags;
    cb->data = (void *)(uintptr_t)tag;
}
static inline void bm_prep_fdsync(struct iocb *cb, int fd, uint64_t tag) {
    io_prep_fdsync(cb, fd);
    cb->data = (void *)(uintptr_t)tag;
}
static inline void bm_set_eventfd(struct iocb *cb, int eventfd) { if (eventfd >= 0) io_set_eventfd(cb, eventfd); }
static inline uint64_t bm_event_tag(const struct io_event *ev) { return (uint64_t)(uintptr_t)ev->data; }
static inline long long bm_event_result(const struct io_event *ev) { return (long long)(long)ev->res; }


/* Whether completions wait in a libaio context's ring. io_setup maps the ring (the kernel's
 * struct aio_ring, whose first fields libaio also reads) into user memory; its head and tail
 * tell, without a system call, whether io_getevents would return anything. A ring without the
 * kernel's magic (0xa10a10a1, as libaio checks it) answers "maybe" (1): io_getevents then asks. */
struct bm_aio_ring_header { unsigned id, nr, head, tail, magic, compat_features, incompat_features, header_length; };
static inline int bm_aio_ring_has_events(io_context_t context) {
    const struct bm_aio_ring_header *ring = (const struct bm_aio_ring_header *)context;
    if (ring->magic != 0xa10a10a1) return 1;
    return __atomic_load_n(&ring->head, __ATOMIC_ACQUIRE) != __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
}

/* A hint to the CPU inside a busy-wait loop (x86 PAUSE, Arm YIELD): lets a sibling hyperthread run
 * and saves power while spinning. */
static inline void bm_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
