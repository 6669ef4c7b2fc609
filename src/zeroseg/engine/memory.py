"""This process's memory as the Linux kernel reports it (``/proc/self``): the current and peak
resident set, and a reset of the peak mark so a stretch of work can be measured on its own."""

from __future__ import annotations

__all__ = ["reset_peak_rss", "status_mib"]


def status_mib(field: str) -> float:
    """A memory field of ``/proc/self/status`` (VmRSS, VmHWM, ...) in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Resets the kernel's peak-RSS mark (VmHWM) of this process (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
