"""Running Graphviz ``dot``, and stamping what it renders with the hash of its DOT source.

SVG and PNG bytes depend on the Graphviz version and fonts installed, so ``--check`` does not
compare them byte for byte. Instead each rendered file carries the SHA-256 of the DOT text it was
rendered from: an XML comment in SVG, a ``tEXt`` chunk in PNG. ``--check`` compares that stamp
with the hash of the DOT the current machine generates, which needs no Graphviz at all.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import zlib
from typing import Final

from .errors import GraphvizFailed, GraphvizNotFound

__all__ = ["STAMP_KEY", "dot_available", "read_stamp", "render", "source_hash"]

STAMP_KEY: Final = "eipflow-dot-sha256"
_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
#: seconds; the lifecycle renders in well under one
_TIMEOUT: Final = 60


def dot_available() -> bool:
    """Whether Graphviz ``dot`` is on PATH."""
    return shutil.which("dot") is not None


def source_hash(dot_source: str) -> str:
    return hashlib.sha256(dot_source.encode("utf-8")).hexdigest()


def render(dot_source: str, fmt: str) -> bytes:
    """Render DOT as ``svg`` or ``png`` and stamp the result with :func:`source_hash`.

    Raises:
        GraphvizNotFound: ``dot`` is not installed.
        GraphvizFailed: ``dot`` rejected the source.
    """
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizNotFound([fmt])
    proc = subprocess.run(  # fixed argv, no shell
        [exe, f"-T{fmt}"], input=dot_source.encode("utf-8"), capture_output=True, timeout=_TIMEOUT, check=False
    )
    if proc.returncode != 0:
        raise GraphvizFailed(fmt, proc.returncode, proc.stderr.decode("utf-8", "replace"))
    digest = source_hash(dot_source)
    return _stamp_svg(proc.stdout, digest) if fmt == "svg" else _stamp_png(proc.stdout, digest)


def _stamp_svg(svg: bytes, digest: str) -> bytes:
    marker = b"<svg"
    at = svg.find(marker)
    if at < 0:
        raise GraphvizFailed("svg", 0, "output has no <svg> element")
    return svg[:at] + f"<!-- {STAMP_KEY}: {digest} -->\n".encode("ascii") + svg[at:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _stamp_png(png: bytes, digest: str) -> bytes:
    if not png.startswith(_PNG_MAGIC):
        raise GraphvizFailed("png", 0, "output is not a PNG")
    # IHDR must stay the first chunk: insert the tEXt chunk right after it (8 magic + 25 IHDR bytes)
    (ihdr_len,) = struct.unpack(">I", png[8:12])
    end = 8 + 12 + ihdr_len
    text = _png_chunk(b"tEXt", STAMP_KEY.encode("ascii") + b"\x00" + digest.encode("ascii"))
    return png[:end] + text + png[end:]


def read_stamp(data: bytes) -> str | None:
    """The DOT hash stamped into an SVG or PNG by :func:`render`, or ``None``."""
    if data.startswith(_PNG_MAGIC):
        pos = 8
        while pos + 8 <= len(data):
            (length,) = struct.unpack(">I", data[pos:pos + 4])
            kind = data[pos + 4:pos + 8]
            body = data[pos + 8:pos + 8 + length]
            if kind == b"tEXt":
                key, _, value = body.partition(b"\x00")
                if key == STAMP_KEY.encode("ascii"):
                    return value.decode("ascii", "replace")
            if kind == b"IEND":
                break
            pos += 12 + length
        return None
    head = f"<!-- {STAMP_KEY}: ".encode("ascii")
    at = data.find(head)
    if at < 0:
        return None
    end = data.find(b" -->", at)
    return data[at + len(head):end].decode("ascii", "replace") if end > 0 else None
