"""A minimal writer of OLE2 compound files (MS-CFB version 3), for Zeiss XRM/TXRM test scans.

``olefile`` reads compound files but cannot make one, and a real scan is megabytes; this
writes the smallest valid file holding the given streams: 512-byte sectors, streams under
4096 bytes in the mini stream (64-byte sectors), every directory entry black, each storage's
children in a binary search tree in the format's name order.
"""

from __future__ import annotations

import struct
from pathlib import Path

FREE, END, FAT_SECTOR, NONE = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
SECTOR, MINI, CUTOFF = 512, 64, 4096


def _chain(first: int, count: int) -> list[int]:
    return [first + i + 1 if i < count - 1 else END for i in range(count)]


def _sectors(n_bytes: int, size: int = SECTOR) -> int:
    return -(-n_bytes // size)


def write_compound_file(path: str | Path, streams: dict[str, bytes]) -> None:
    """Write ``streams`` (``"Storage/Sub/Stream"`` -> bytes) as a compound file at ``path``."""
    # the tree: entry 0 is the root; every storage on a stream's path gets an entry
    entries: list[dict] = [{"name": "Root Entry", "type": 5, "children": [], "data": b""}]
    storages = {"": 0}
    for full, data in streams.items():
        parts = full.split("/")
        for depth in range(1, len(parts)):
            key = "/".join(parts[:depth])
            if key not in storages:
                storages[key] = len(entries)
                entries[storages["/".join(parts[: depth - 1])]]["children"].append(len(entries))
                entries.append({"name": parts[depth - 1], "type": 1, "children": [], "data": b""})
        entries[storages["/".join(parts[:-1])]]["children"].append(len(entries))
        entries.append({"name": parts[-1], "type": 2, "children": [], "data": bytes(data)})

    # small streams in the mini stream, the others in sectors of their own
    mini_fat: list[int] = []
    mini = bytearray()
    big: list[dict] = []
    for e in entries:
        if e["type"] != 2:
            continue
        if len(e["data"]) < CUTOFF:
            n = _sectors(len(e["data"]), MINI)
            e["start"] = len(mini_fat) if n else END
            mini_fat += _chain(len(mini_fat), n)
            mini += e["data"] + bytes(n * MINI - len(e["data"]))
        else:
            big.append(e)
    n_dir = _sectors(len(entries) * 128)
    n_minifat = _sectors(len(mini_fat) * 4)
    n_mini = _sectors(len(mini))
    n_big = [_sectors(len(e["data"])) for e in big]
    n_fat = 1
    while n_fat * (SECTOR // 4) < n_fat + n_dir + n_minifat + n_mini + sum(n_big):
        n_fat += 1
    if n_fat > 109:
        raise ValueError("too large for a header-only DIFAT")

    fat = [FAT_SECTOR] * n_fat
    first_dir = len(fat)
    fat += _chain(first_dir, n_dir)
    first_minifat = len(fat) if n_minifat else END
    fat += _chain(len(fat), n_minifat)
    entries[0]["start"] = len(fat) if n_mini else END
    entries[0]["size"] = len(mini)
    fat += _chain(len(fat), n_mini)
    for e, n in zip(big, n_big, strict=True):
        e["start"] = len(fat)
        fat += _chain(len(fat), n)
    fat += [FREE] * (n_fat * SECTOR // 4 - len(fat))

    def tree(children: list[int]) -> int:
        """Root of a balanced binary search tree of ``children`` (by name length, then upper-case name)."""
        ordered = sorted(children, key=lambda i: (len(entries[i]["name"]), entries[i]["name"].upper()))

        def build(lo: int, hi: int) -> int:
            if lo >= hi:
                return NONE
            mid = (lo + hi) // 2
            entries[ordered[mid]]["left"] = build(lo, mid)
            entries[ordered[mid]]["right"] = build(mid + 1, hi)
            return ordered[mid]

        return build(0, len(ordered))

    for e in entries:
        e["child"] = tree(e["children"]) if e["children"] else NONE
    directory = bytearray()
    for e in entries:
        name = e["name"].encode("utf-16-le") + b"\0\0"
        directory += struct.pack("<64sHBBIII16sIQQIQ", name, len(name), e["type"], 1, e.get("left", NONE),
                                 e.get("right", NONE), e["child"], bytes(16), 0, 0, 0, e.get("start", END),
                                 e.get("size", len(e["data"])))
    directory += (bytes(64) + struct.pack("<HBBIII", 0, 0, 0, NONE, NONE, NONE) + bytes(48)) * (
        n_dir * 4 - len(entries))

    difat = list(range(n_fat)) + [FREE] * (109 - n_fat)
    header = struct.pack("<8s16sHHHHH6sIIIIIIIII109I", bytes.fromhex("D0CF11E0A1B11AE1"), bytes(16), 0x3E, 3,
                         0xFFFE, 9, 6, bytes(6), 0, n_fat, first_dir, 0, CUTOFF, first_minifat, n_minifat, END, 0,
                         *difat)
    body = bytearray(header)
    body += struct.pack(f"<{len(fat)}I", *fat)
    body += directory
    body += struct.pack(f"<{len(mini_fat)}I", *mini_fat) + bytes(n_minifat * SECTOR - 4 * len(mini_fat))
    body += mini + bytes(n_mini * SECTOR - len(mini))
    for e, n in zip(big, n_big, strict=True):
        body += e["data"] + bytes(n * SECTOR - len(e["data"]))
    Path(path).write_bytes(bytes(body))
