"""Landlock: an unprivileged Linux process takes away its own access to files, the network,
other processes' signals and ptrace. Used by the grading child before a submission runs: it can
read the Python installation and write its own working directory, nothing else (the hidden tests,
the solutions and other students' notebooks included), cannot open a TCP connection, and cannot
signal, ptrace or read the memory of the grader that judges it.

Kernel interface: https://docs.kernel.org/userspace-api/landlock.html (syscalls 444-446 on every
architecture). Rights a kernel does not know are left out, so an older kernel gets what it offers.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = ["abi", "restrict"]

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_VERSION_FLAG, _RULE_PATH_BENEATH, _PR_SET_NO_NEW_PRIVS = 1, 1, 38
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_READ = _EXECUTE | _READ_FILE | _READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi() -> int:
    """The Landlock ABI version this kernel offers; 0 where there is none (not Linux, too old, off)."""
    if not sys.platform.startswith("linux"):
        return 0
    version = _libc().syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_VERSION_FLAG))
    return max(0, version)


def _fs_rights(version: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if version >= 2:
        rights |= 1 << 13  # refer
    if version >= 3:
        rights |= 1 << 14  # truncate
    if version >= 5:
        rights |= 1 << 15  # ioctl on devices
    return rights


def restrict(read: Iterable[Path], write: Iterable[Path]) -> int:
    """Confine this process (and everything it starts) for good: read-only access beneath ``read``,
    full access beneath ``write``; no TCP (ABI 4+); no signals to, or abstract sockets of,
    processes outside (ABI 6+). Returns the ABI used, 0 when the kernel has no Landlock."""
    version = abi()
    if not version:
        return 0
    libc = _libc()
    handled = _fs_rights(version)
    attr = _RulesetAttr(handled, 0b11 if version >= 4 else 0, 0b11 if version >= 6 else 0)
    size = 24 if version >= 6 else 16 if version >= 4 else 8
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        rules = [(Path(p), _READ) for p in read] + [(Path(p), handled) for p in write]
        for path, allowed in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a path this machine lacks grants nothing
            try:
                if not os.path.isdir(path):
                    allowed &= _EXECUTE | _READ_FILE | _WRITE_FILE  # directory rights on a file are refused
                rule = _PathBeneath(allowed, fd)
                if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)):
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return version
