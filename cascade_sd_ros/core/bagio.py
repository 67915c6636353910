"""rosbag2 reading (as robots record it, damaged or not) and writing without ROS.

Reading takes what ``ros2 bag record`` leaves behind, not only what this package writes:

* a rosbag2 folder (``metadata.yaml`` + storage files) or a bare storage file, in either storage:
  sqlite3 or MCAP, told apart by the files' first bytes, so an empty or missing
  ``storage_identifier``, a renamed file or a wrong suffix do not matter;
* several files per bag (read in the metadata's order), compressed MCAP chunks (zstd, lz4),
  file-compressed bags (``*.mcap.zstd``, ``*.db3.zstd``) and per-message zstd compression;
* type definitions as ``ros2msg`` or ``ros2idl`` (rosbag2 concatenates the included IDL files, so
  ``#include`` lines are dropped before parsing). Where the bag's definition of a type cannot be
  parsed, the definition this package knows (:func:`typestore`: ROS 2 Kilted's standard messages,
  ``event_camera_msgs``, this package's ``msg/``) is used when the type name agrees and so does the
  recorded type hash, where one is given; that is said once (a ``logging`` warning and
  :attr:`Bag.notes`);
* damaged recordings, as ``mcap recover`` / ``ros2 bag reindex`` would: a file cut short (the
  recorder was killed), a chunk that fails its CRC or does not decompress, a garbled or missing
  ``metadata.yaml``, a listed file that is missing or empty. Every message before the damage is
  read; :attr:`Bag.damage` says in which file, where (byte offset or row) and why reading stopped;
  later files of the bag are still read. A record whose bytes do not deserialise raises
  :class:`CorruptRecord` from :meth:`Bag.deserialize` and costs only itself.

Order: MCAP files with an intact index are read in log-time order (chunks merged); a file without
one (cut short) in file order, each chunk sorted by log time; sqlite3 files by timestamp; the files
of a split bag one after another. Message definitions of this package are found in the source
tree (``msg/``, ``interfaces/event_camera_msgs/msg/``) or, for an installed package, in the ament
share directories.
"""

from __future__ import annotations

import heapq
import logging
import re
import shutil
import sqlite3
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

try:  # Python 3.14's module; rosbags already depends on the backport below
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the interpreter
    from backports import zstd

PACKAGE = "cascade_sd_ros"
EVENT_PACKET = "event_camera_msgs/msg/EventPacket"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]
_SOURCE_MSG_DIRS = {
    PACKAGE: _SOURCE_ROOT / "msg",
    "event_camera_msgs": _SOURCE_ROOT / "interfaces" / "event_camera_msgs" / "msg",
}
_STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
_LOG = logging.getLogger(__name__)

MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SEPARATOR = "=" * 80 + "\n"
# MCAP opcodes (https://mcap.dev/spec)
_OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x02, 0x03, 0x04, 0x05, 0x06
_OP_CHUNK_INDEX, _OP_STATISTICS, _OP_DATA_END = 0x08, 0x0B, 0x0F
_COPY_BYTES = 1 << 20


class BagError(ValueError):
    """A path that is not a readable rosbag2 recording, or a topic/type it does not hold."""


class CorruptRecord(BagError):
    """One record whose bytes do not deserialise as its type (the rest of the bag is fine)."""


@dataclass(frozen=True)
class Damage:
    """Where and why reading one storage file stopped early."""

    file: Path
    reason: str
    offset: int | None = None  # [bytes] into the (decompressed) file; None for sqlite3 rows
    messages_before: int = 0  # messages read from this file before the damage

    def __str__(self) -> str:
        if not self.messages_before and not self.offset:
            return f"{self.file}: {self.reason}"
        where = f" at byte {self.offset}" if self.offset is not None else ""
        return f"{self.file}: read {self.messages_before} message(s), then stopped{where}: {self.reason}"


@dataclass
class Connection:
    """One topic of the bag (all files of a split bag share it)."""

    id: int
    topic: str
    msgtype: str
    msgcount: int = 0  # from the metadata or the MCAP statistics (0: not recorded)
    digest: str = ""  # recorded type hash (RIHS01_...), "" where none
    definition: str = ""  # "bag", "package" (fallback) or "" (none: cannot deserialise)
    error: str = ""  # why its messages cannot be deserialised ("" when they can)
    store: Typestore | None = field(default=None, repr=False)


@dataclass
class _TypeDef:
    fmt: str  # "ros2msg", "ros2idl" or "" (none recorded)
    text: str
    digest: str


def msg_dir(package: str) -> Path:
    """The folder of ``package``'s ``.msg`` files: source tree first, then the ament index."""
    source = _SOURCE_MSG_DIRS.get(package)
    if source is not None and any(source.glob("*.msg")):
        return source
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError as err:  # a bare numpy install without ament: only the source tree counts
        raise BagError(f"no msg/ folder for {package} in the source tree and ament_index_python is missing") from err
    try:
        installed = Path(get_package_share_directory(package)) / "msg"
    except (PackageNotFoundError, OSError) as err:  # OSError: AMENT_PREFIX_PATH unset
        raise BagError(
            f"message package {package} is neither in the source tree nor installed (ament index): {err}"
        ) from err
    if not any(installed.glob("*.msg")):
        raise BagError(f"installed package {package} has no .msg files in {installed}")
    return installed


def typestore() -> Typestore:
    """A fresh rosbags typestore with standard, event-camera and this package's messages."""
    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for package in ("event_camera_msgs", PACKAGE):
        for path in sorted(msg_dir(package).glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(), f"{package}/msg/{path.stem}"))
    store.register(types)
    return store


# ------------------------------------------------------------------------------ type definitions


def parse_definition(msgtype: str, fmt: str, text: str) -> dict[str, Any]:
    """A rosbag2 type definition (``ros2msg`` or ``ros2idl``, dependencies concatenated) as
    rosbags types. Raises on anything rosbags cannot parse."""
    if fmt == "ros2msg":
        return get_types_from_msg(text, msgtype)
    if fmt != "ros2idl":
        raise BagError(f"unknown definition encoding {fmt!r}")
    sections = text.split(_SEPARATOR)[1:] if text.startswith(_SEPARATOR) else [text]
    types: dict[str, Any] = {}
    for section in sections:
        _header, _, idl = section.partition("\n") if text.startswith(_SEPARATOR) else ("", "", section)
        # rosbag2 concatenates every included file, so the includes themselves carry nothing
        types.update(get_types_from_idl(re.sub(r"(?m)^[ \t]*#[ \t]*include\b.*$", "", idl)))
    if msgtype not in types:
        raise BagError(f"the definition does not define {msgtype}")
    return types


def _rihs01(store: Typestore, msgtype: str) -> str:
    """The type's RIHS01 hash; raises where the store lacks one of its dependencies."""
    return store.hash_rihs01(msgtype)


# ------------------------------------------------------------------------------ files


def _sniff(path: Path) -> str:
    """``mcap``, ``sqlite3``, ``zstd``, ``empty`` or ``unknown``, from the first bytes."""
    with path.open("rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head.startswith(MCAP_MAGIC):
        return "mcap"
    if head.startswith(SQLITE_MAGIC):
        return "sqlite3"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "unknown"


def storage_kind(path: str | Path) -> str:
    """What a file is, by its first bytes: ``mcap``, ``sqlite3``, ``zstd`` (file-compressed),
    ``empty`` or ``unknown``."""
    return _sniff(Path(path))


def _decompress_file(src: Path, dst: Path) -> str | None:
    """zstd-decompress ``src`` into ``dst``; returns why it stopped early (None: complete)."""
    dec = zstd.ZstdDecompressor()
    with src.open("rb") as fin, dst.open("wb") as fout:
        while True:
            block = fin.read(_COPY_BYTES)
            if not block:
                return None if dec.eof else "the zstd stream ends early (file cut short)"
            try:
                fout.write(dec.decompress(block))
            except zstd.ZstdError as err:
                return f"zstd data is corrupt: {err}"
            if dec.eof:
                if fin.read(1):  # rosbag2 writes one frame per file
                    dec = zstd.ZstdDecompressor()
                    fin.seek(-1, 1)
                else:
                    return None


def _read_metadata(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(rosbag2_bagfile_information, None) or (None, why it is unusable)."""
    import yaml

    path = folder / "metadata.yaml"
    if not path.is_file():
        return None, "it has no metadata.yaml"
    try:
        doc = yaml.safe_load(path.read_text(errors="replace"))
    except (yaml.YAMLError, OSError) as err:
        return None, f"metadata.yaml is not YAML ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    info = doc.get("rosbag2_bagfile_information") if isinstance(doc, dict) else None
    if not isinstance(info, dict):
        return None, "metadata.yaml holds no rosbag2_bagfile_information"
    return info, None


def _metadata_topics(info: dict[str, Any]) -> dict[tuple[str, str], tuple[int, str]]:
    """(topic, type) -> (message_count, type_description_hash) from the metadata, where well formed."""
    out: dict[tuple[str, str], tuple[int, str]] = {}
    for entry in info.get("topics_with_message_count") or []:
        try:
            meta = entry["topic_metadata"]
            out[(str(meta["name"]), str(meta["type"]))] = (
                int(entry.get("message_count") or 0),
                str(meta.get("type_description_hash") or ""),
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


# ------------------------------------------------------------------------------ MCAP records


class _Cut(Exception):
    """Reading a storage file stopped here."""

    def __init__(self, offset: int | None, reason: str) -> None:
        super().__init__(reason)
        self.offset, self.reason = offset, reason


def _str(buf: bytes | memoryview, off: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, off)
    end = off + 4 + n
    if end > len(buf):
        raise struct.error("string runs past its record")
    return bytes(buf[off + 4 : end]).decode("utf-8", "replace"), end


def _parse_schema(body: bytes | memoryview) -> tuple[int, str, str, str]:
    (sid,) = struct.unpack_from("<H", body, 0)
    name, off = _str(body, 2)
    encoding, off = _str(body, off)
    (n,) = struct.unpack_from("<I", body, off)
    return sid, name, encoding, bytes(body[off + 4 : off + 4 + n]).decode("utf-8", "replace")


def _parse_channel(body: bytes | memoryview) -> tuple[int, int, str, dict[str, str]]:
    cid, sid = struct.unpack_from("<HH", body, 0)
    topic, off = _str(body, 4)
    _encoding, off = _str(body, off)
    (n,) = struct.unpack_from("<I", body, off)
    off += 4
    end, meta = off + n, {}
    while off < end:
        key, off = _str(body, off)
        meta[key], off = _str(body, off)
    return cid, sid, topic, meta


def _chunk_payload(body: bytes | memoryview, complete: bool) -> tuple[bytes, str | None]:
    """A chunk's records, decompressed; with ``complete=False`` (a chunk cut short) as much as
    decompresses. Returns (records, why they are incomplete or None)."""
    try:
        _start, _end, usize, crc = struct.unpack_from("<QQQI", body, 0)
        compression, off = _str(body, 28)
        (n,) = struct.unpack_from("<Q", body, off)
    except struct.error:
        if complete:
            raise
        return b"", "the file ends inside a chunk header (cut short)"
    data = body[off + 8 : off + 8 + n]
    cut = None if complete and len(data) == n else "the file ends inside this chunk (cut short)"
    if compression == "":
        raw = bytes(data)
    elif compression == "zstd":
        dec = zstd.ZstdDecompressor()
        raw = dec.decompress(bytes(data))
        if cut is None and not dec.eof:
            cut = "the chunk's zstd data ends early"
    elif compression == "lz4":
        import lz4.frame

        dec4 = lz4.frame.LZ4FrameDecompressor()
        raw = dec4.decompress(bytes(data))
        if cut is None and not dec4.eof:
            cut = "the chunk's lz4 data ends early"
    else:
        raise _Cut(None, f"unsupported chunk compression {compression!r}")
    if cut is None:
        if len(raw) != usize:
            raise _Cut(None, f"chunk decompresses to {len(raw)} bytes, its header says {usize}")
        if crc and zlib.crc32(raw) != crc:
            raise _Cut(None, "chunk fails its CRC check (corrupt)")
    return raw, cut


def _records(buf: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    """(opcode, body) of the records in a decompressed chunk; stops silently at a cut record."""
    view, off = memoryview(buf), 0
    while off + 9 <= len(view):
        opcode, length = struct.unpack_from("<BQ", view, off)
        if off + 9 + length > len(view):
            return
        yield opcode, view[off + 9 : off + 9 + length]
        off += 9 + length


class _McapFile:
    """One MCAP storage file: its definitions, channels and messages, damage-tolerant."""

    def __init__(self, path: Path, label: Path) -> None:
        self.path, self.label = path, label
        self.size = path.stat().st_size
        self.schemas: dict[int, tuple[str, str, str]] = {}  # id -> (name, encoding, text)
        self.channels: dict[int, tuple[str, int, dict[str, str]]] = {}  # id -> (topic, schema id, metadata)
        self.counts: dict[int, int] = {}  # channel id -> messages (statistics)
        self.chunk_index: list[tuple[int, int, int]] = []  # (message_start_time, offset, length)
        self.last_cut: _Cut | None = None  # where the last read of its messages stopped early
        self.indexed = self._read_summary()

    def _read_summary(self) -> bool:
        """Definitions and chunk index from the summary section; False where there is none."""
        if self.size < 8 + 9 + 20 + 8:
            return False
        with self.path.open("rb") as f:
            f.seek(self.size - 8 - 29)
            tail = f.read(29 + 8)
            if tail[-8:] != MCAP_MAGIC or tail[0] != _OP_FOOTER:
                return False
            summary_start, _offset_start = struct.unpack_from("<QQ", tail, 9)
            if not 8 <= summary_start <= self.size - 37:
                return False
            if summary_start == 0:
                return False
            f.seek(summary_start)
            summary = f.read(self.size - 37 - summary_start)
        try:
            for opcode, body in _records(summary):
                if opcode == _OP_SCHEMA:
                    sid, name, enc, text = _parse_schema(body)
                    self.schemas[sid] = (name, enc, text)
                elif opcode == _OP_CHANNEL:
                    cid, sid, topic, meta = _parse_channel(body)
                    self.channels[cid] = (topic, sid, meta)
                elif opcode == _OP_CHUNK_INDEX:
                    start, _end, offset, length = struct.unpack_from("<QQQQ", body, 0)
                    self.chunk_index.append((start, offset, length))
                elif opcode == _OP_STATISTICS:
                    (n,) = struct.unpack_from("<I", body, 42)
                    off = 46
                    while off < 46 + n:
                        cid, count = struct.unpack_from("<HQ", body, off)
                        self.counts[cid] = count
                        off += 10
        except struct.error:  # a damaged summary: read the data section instead
            self.schemas.clear()
            self.channels.clear()
            self.counts.clear()
            self.chunk_index.clear()
            return False
        return bool(self.channels)

    # --- sequential reading (no index, or to find definitions of a file without one)

    def _top_records(self, f: BinaryIO) -> Iterator[tuple[int, int, memoryview, bool]]:
        """(offset, opcode, body, complete) of the data section; raises _Cut at damage or the end."""
        if f.read(8) != MCAP_MAGIC:
            raise _Cut(0, "not an MCAP file (bad magic)")
        pos = 8
        while True:
            head = f.read(9)
            if not head:
                raise _Cut(pos, "the file ends without a data-end record (cut short: the recorder did not close it)")
            if len(head) < 9:
                raise _Cut(pos, "the file ends inside a record header (cut short)")
            opcode, length = struct.unpack("<BQ", head)
            left = self.size - pos - 9
            if opcode == 0:
                raise _Cut(pos, "record opcode 0x00 (corrupt)")
            if length > left:
                if opcode == _OP_CHUNK:  # cut inside a chunk: salvage what decompresses
                    yield pos, opcode, memoryview(f.read(left)), False
                raise _Cut(
                    pos,
                    f"record 0x{opcode:02x} of {length} bytes runs past the end of the file "
                    f"({left} bytes left: cut short)",
                )
            yield pos, opcode, memoryview(f.read(length)), True
            if opcode in (_OP_DATA_END, _OP_FOOTER):
                return
            pos += 9 + length

    def scan_definitions(self) -> _Cut | None:
        """Schemas and channels of a file without a usable summary (one pass over its data)."""
        for _ in self._sequential(define_only=True):
            pass
        return self.last_cut

    def _sequential(self, define_only: bool = False) -> Iterator[tuple[int, int, memoryview]]:
        """(log_time, channel id, data) in file order (each chunk by log time); sets last_cut."""
        self.last_cut = None
        with self.path.open("rb") as f:
            try:
                for pos, opcode, body, complete in self._top_records(f):
                    try:
                        if opcode == _OP_CHUNK:
                            raw, cut = _chunk_payload(body, complete)
                            yield from self._chunk_messages(raw, define_only)
                            if cut is not None:
                                raise _Cut(pos, cut)
                        else:
                            message = self._take_record(opcode, body, define_only)
                            if message is not None:
                                yield message
                    except (struct.error, zstd.ZstdError, RuntimeError, ValueError) as err:
                        raise _Cut(pos, f"record 0x{opcode:02x} is corrupt ({type(err).__name__}: {err})") from err
                    except _Cut as cut:
                        raise _Cut(pos if cut.offset is None else cut.offset, cut.reason) from None
            except _Cut as cut:
                self.last_cut = cut

    def _chunk_messages(self, raw: bytes, define_only: bool) -> Iterator[tuple[int, int, memoryview]]:
        messages = [
            m for opcode, body in _records(raw) if (m := self._take_record(opcode, body, define_only)) is not None
        ]
        messages.sort(key=lambda m: m[0])
        yield from messages

    def _take_record(self, opcode: int, body: memoryview, define_only: bool) -> tuple[int, int, memoryview] | None:
        """One schema, channel or message record, at top level or inside a chunk: definitions are
        kept (the first of an id wins), a message is returned as (log time, channel id, data)."""
        if opcode == _OP_SCHEMA:
            sid, name, enc, text = _parse_schema(body)
            self.schemas.setdefault(sid, (name, enc, text))
        elif opcode == _OP_CHANNEL:
            cid, sid, topic, meta = _parse_channel(body)
            self.channels.setdefault(cid, (topic, sid, meta))
        elif opcode == _OP_MESSAGE and not define_only:
            cid, _seq, log_time = struct.unpack_from("<HIQ", body, 0)
            return log_time, cid, body[22:]
        return None

    def _indexed(self) -> Iterator[tuple[int, int, memoryview]]:
        """Messages in log-time order through the chunk index (overlapping chunks merged)."""
        self.last_cut = None
        chunks = sorted(self.chunk_index)
        heap: list[tuple[int, int, int, _Head]] = []  # (log_time, chunk offset, channel id, rest of the chunk)
        i = 0
        with self.path.open("rb") as f:
            while i < len(chunks) or heap:
                while i < len(chunks) and self.last_cut is None and (not heap or chunks[i][0] <= heap[0][0]):
                    _start, offset, length = chunks[i]
                    i += 1
                    try:
                        f.seek(offset)
                        opcode, rec_len = struct.unpack("<BQ", f.read(9))
                        if opcode != _OP_CHUNK or offset + 9 + rec_len > self.size:
                            raise _Cut(offset, "the chunk index points at no chunk (corrupt)")
                        raw, _ = _chunk_payload(memoryview(f.read(rec_len)), True)
                        messages = iter(list(self._chunk_messages(raw, False)))
                    except _Cut as cut:
                        self.last_cut = _Cut(offset, cut.reason)
                        break
                    except (struct.error, zstd.ZstdError, RuntimeError, ValueError) as err:
                        self.last_cut = _Cut(offset, f"chunk is corrupt ({type(err).__name__}: {err})")
                        break
                    first = next(messages, None)
                    if first is not None:
                        heapq.heappush(heap, (first[0], offset, first[1], _Head(first, messages)))
                if not heap:
                    if self.last_cut is not None:
                        return
                    continue
                log_time, offset, cid, head = heapq.heappop(heap)
                yield log_time, cid, head.data
                nxt = next(head.rest, None)
                if nxt is not None:
                    heapq.heappush(heap, (nxt[0], offset, nxt[1], _Head(nxt, head.rest)))

    def messages(self) -> Iterator[tuple[int, int, memoryview]]:
        yield from (self._indexed() if self.indexed and self.chunk_index else self._sequential())


@dataclass(eq=False)
class _Head:
    """The next message of one chunk in the merge heap, and the chunk's messages after it."""

    first: tuple[int, int, memoryview]
    rest: Iterator[tuple[int, int, memoryview]]

    @property
    def data(self) -> memoryview:
        return self.first[2]

    def __lt__(self, other: _Head) -> bool:  # never decides: heap keys hold each chunk's own offset
        return False


# ------------------------------------------------------------------------------ sqlite3


def _sqlite_cut(path: Path) -> tuple[int, int, int] | None:
    """(file size, size its header declares, page size) of a sqlite3 file cut short, else None."""
    with path.open("rb") as f:
        head = f.read(100)
    if len(head) < 100:
        return None
    (page,) = struct.unpack(">H", head[16:18])
    page = 65536 if page == 1 else page
    (pages,) = struct.unpack(">I", head[28:32])
    size = path.stat().st_size
    if head[92:96] != head[24:28] or not pages or page < 512:  # the header's page count is not kept
        return (size, size - size % page, page) if page >= 512 and size % page else None
    return (size, pages * page, page) if size < pages * page else None


class _SqliteFile:
    """One rosbag2 sqlite3 storage file, read-only (a WAL beside it is replayed in a copy)."""

    def __init__(self, path: Path, label: Path, workdir: Path, count: bool = True) -> None:
        self.path, self.label = path, label
        self.cut = _sqlite_cut(path)
        wal = Path(f"{path}-wal")
        copy = workdir / f"{len(list(workdir.iterdir()))}_{path.name}"
        if wal.is_file() and wal.stat().st_size > 0:  # the recorder died in WAL mode: recover its commits
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, Path(f"{copy}-wal"))
            self.db = sqlite3.connect(copy)
        elif self.cut is not None:  # cut short: a copy of its whole pages, the header told their number
            page, pages = self.cut[2], self.cut[0] // self.cut[2]
            with path.open("rb") as fin, copy.open("wb") as fout:
                left = pages * page
                while left > 0:
                    block = fin.read(min(_COPY_BYTES, left))
                    if not block:
                        break
                    fout.write(block)
                    left -= len(block)
                fout.seek(28)
                fout.write(struct.pack(">I", pages))
            self.db = sqlite3.connect(f"file:{quote(str(copy.resolve()))}?mode=ro&immutable=1", uri=True)
        else:
            self.db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1", uri=True)
        self.db.row_factory = sqlite3.Row
        try:
            rows = self.db.execute("SELECT * FROM topics").fetchall()
            self.topics = {
                int(r["id"]): (
                    str(r["name"]),
                    str(r["type"]),
                    str(r["type_description_hash"]) if "type_description_hash" in r.keys() else "",
                )
                for r in rows
            }
        except sqlite3.DatabaseError as err:
            self.db.close()
            raise _Cut(None, f"not a readable rosbag2 sqlite3 file ({err})") from err
        self.definitions: dict[str, tuple[str, str]] = {}
        try:
            for r in self.db.execute(
                "SELECT topic_type, encoding, encoded_message_definition FROM message_definitions"
            ):
                if r[2]:
                    self.definitions[str(r[0])] = (str(r[1]), str(r[2]))
        except sqlite3.DatabaseError:  # older bags (schema < 4) have no definitions: the package's are used
            pass
        self.counts: dict[int, int] = {}
        try:  # a table scan: only where no metadata.yaml gives the counts
            if count:
                self.counts = {
                    int(r[0]): int(r[1])
                    for r in self.db.execute("SELECT topic_id, COUNT(*) FROM messages GROUP BY topic_id")
                }
        except sqlite3.DatabaseError:
            pass
        self.last_cut: _Cut | None = None

    def messages(self) -> Iterator[tuple[int, int, bytes]]:
        """(timestamp, topic id, data) by timestamp; a damaged table is read in row order up to
        the damage when the ordered read fails before its first row."""
        self.last_cut = None
        yielded = 0
        for query in (
            "SELECT timestamp, topic_id, data FROM messages ORDER BY timestamp",
            "SELECT timestamp, topic_id, data FROM messages ORDER BY id",
        ):
            try:
                for t, tid, data in self.db.execute(query):
                    yielded += 1
                    yield int(t), int(tid), data
                return
            except sqlite3.DatabaseError as err:
                self.last_cut = _Cut(None, f"sqlite3: {err} ({self._cut_text() or 'file damaged'})")
                if yielded:
                    return
            finally:
                if self.last_cut is None and self.cut is not None:
                    self.last_cut = _Cut(None, self._cut_text())

    def _cut_text(self) -> str:
        if self.cut is None:
            return ""
        return f"the file is cut short: {self.cut[0]} of the {self.cut[1]} bytes its header declares"

    def close(self) -> None:
        self.db.close()


# ------------------------------------------------------------------------------ the bag


class Bag:
    """A rosbag2 recording opened for reading: a folder, or a single storage file.

    Use as a context manager (or :meth:`open` / :meth:`close`). After opening, :attr:`connections`
    lists its topics, :attr:`notes` what was assumed, :attr:`damage` where reading stopped early
    (grows while :meth:`messages` runs into damage).
    """

    def __init__(self, path: str | Path, quiet: bool = False) -> None:
        self.path = Path(path)
        self.quiet = quiet  # notes are kept in .notes but not logged (a bag opened again by the same run)
        if not self.path.exists():
            raise BagError(f"no such bag: {self.path}")
        if not (self.path.is_dir() or self.path.is_file()):
            raise BagError(f"{self.path} is neither a rosbag2 folder nor a storage file")
        self.connections: list[Connection] = []
        self.notes: list[str] = []
        self._damage: dict[tuple[str, int | None], Damage] = {}
        self._files: list[_McapFile | _SqliteFile] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._map: dict[tuple[int, int], Connection] = {}  # (file index, file-local id) -> connection
        self._message_compression = False
        self._opened = False

    # --- life cycle

    def __enter__(self) -> Bag:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files:
            if isinstance(f, _SqliteFile):
                f.close()
        self._files = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._opened = False

    @property
    def damage(self) -> list[Damage]:
        return list(self._damage.values())

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            if not self.quiet:
                _LOG.warning("%s", text)

    def _hurt(self, file: Path, cut: _Cut, before: int = 0) -> None:
        self._damage.setdefault((str(file), cut.offset), Damage(file, cut.reason, cut.offset, before))

    def _workdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cascade_sd_bag_")
        return Path(self._tmp.name)

    def open(self) -> None:
        if self._opened:
            return
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        self._opened = True

    def _storage_files(self) -> tuple[list[Path], dict[str, Any] | None]:
        if self.path.is_file():
            return [self.path], None
        info, why = _read_metadata(self.path)
        listed: list[Path] = []
        if info is not None:
            paths = info.get("relative_file_paths") or [
                f.get("path") for f in info.get("files") or [] if isinstance(f, dict)
            ]
            listed = [self.path / str(p) for p in paths if p]
            mode = str(info.get("compression_mode") or "").lower()
            self._message_compression = mode == "message"
            if mode == "message" and str(info.get("compression_format") or "zstd").lower() != "zstd":
                raise BagError(
                    f"{self.path}: per-message compression {info.get('compression_format')!r} "
                    "is not supported (zstd is)"
                )
        present = [p for p in listed if p.is_file()]
        if info is not None and listed and len(present) == len(listed):
            return present, info
        found = sorted(
            p
            for p in self.path.iterdir()
            if p.is_file()
            and p.name != "metadata.yaml"
            and not p.name.endswith(("-wal", "-shm"))
            and _sniff(p) in ("mcap", "sqlite3", "zstd", "empty")
        )
        if not found:
            reason = why or (
                f"the storage files it lists are missing ({', '.join(p.name for p in listed)})"
                if listed
                else "metadata.yaml lists no storage files"
            )
            raise BagError(
                f"{self.path} is not a readable rosbag2 folder: {reason}, and it holds no sqlite3 or MCAP file"
            )
        if info is None:
            self._note(
                f"{self.path}: {why}; reading its storage file(s) {', '.join(p.name for p in found)} "
                "as ros2 bag reindex would"
            )
        else:
            missing = [p.name for p in listed if not p.is_file()]
            self._note(
                f"{self.path}: metadata.yaml lists {', '.join(missing) or 'no files'} but "
                f"{'they are' if len(missing) != 1 else 'it is'} not there; reading "
                f"{', '.join(p.name for p in found)} instead (renamed?)"
            )
        return found, info

    def _open(self) -> None:
        files, info = self._storage_files()
        meta_topics = _metadata_topics(info) if info is not None else {}
        defs: dict[str, _TypeDef] = {}
        by_key: dict[tuple[str, str], Connection] = {}
        for index, path in enumerate(files):
            kind = _sniff(path)
            actual = path
            if kind == "zstd":
                actual = self._workdir() / f"{index}_{path.name.removesuffix('.zstd')}"
                why = _decompress_file(path, actual)
                if why is not None:
                    self._note(f"{path}: {why}; reading what decompressed")
                kind = _sniff(actual) if actual.stat().st_size else "empty"
            if self.path.is_file() and kind in ("empty", "unknown"):
                raise BagError(
                    f"{path}: empty file (0 bytes), not a rosbag2 recording"
                    if kind == "empty"
                    else f"{path} is not a rosbag2 storage file (neither MCAP nor sqlite3 by its first bytes)"
                )
            if kind == "empty":
                self._hurt(path, _Cut(0, "empty file (0 bytes): nothing was recorded in it"))
                continue
            if kind not in ("mcap", "sqlite3"):
                self._hurt(path, _Cut(0, "neither an MCAP nor a sqlite3 file (by its first bytes)"))
                continue
            try:
                handle: _McapFile | _SqliteFile = (
                    _McapFile(actual, path)
                    if kind == "mcap"
                    else _SqliteFile(actual, path, self._workdir(), count=not meta_topics)
                )
            except _Cut as cut:
                self._hurt(path, cut)
                continue
            except OSError as err:
                self._hurt(path, _Cut(0, f"cannot read it: {err}"))
                continue
            self._files.append(handle)
            if isinstance(handle, _McapFile):
                if not handle.indexed:
                    scan_cut = handle.scan_definitions()
                    if scan_cut is not None and not handle.channels:
                        self._hurt(path, scan_cut)
                local = {}
                for cid, (topic, sid, meta) in handle.channels.items():
                    name, enc, text = handle.schemas.get(sid, ("", "", ""))
                    local[cid] = (topic, name, meta.get("topic_type_hash", ""), enc, text, handle.counts.get(cid, 0))
            else:
                local = {}
                for tid, (topic, msgtype, digest) in handle.topics.items():
                    enc, text = handle.definitions.get(msgtype, ("", ""))
                    local[tid] = (topic, msgtype, digest, enc, text, handle.counts.get(tid, 0))
            for lid, (topic, msgtype, digest, enc, text, count) in local.items():
                if not msgtype:
                    continue
                key = (topic, msgtype)
                conn = by_key.get(key)
                if conn is None:
                    mcount, mdigest = meta_topics.get(key, (0, ""))
                    conn = by_key[key] = Connection(len(by_key) + 1, topic, msgtype, mcount, digest or mdigest)
                if key not in meta_topics:
                    conn.msgcount += count
                self._map[(id(handle), lid)] = conn
                if text and (msgtype not in defs or not defs[msgtype].text):
                    defs[msgtype] = _TypeDef(enc, text, digest)
        self.connections = list(by_key.values())
        if not self.connections:
            if self._damage:
                raise BagError("; ".join(str(d) for d in self._damage.values()))
            raise BagError(f"{self.path}: the recording holds no topics")
        self._resolve_types(defs)

    def _resolve_types(self, defs: dict[str, _TypeDef]) -> None:
        """A typestore per connection: the bag's definitions, else the package's (name and hash agree)."""
        bag_store = get_typestore(Stores.EMPTY)
        parsed: dict[str, str] = {}  # msgtype -> hash of the bag's definition
        failed: dict[str, str] = {}  # msgtype -> why the bag's definition is unusable
        for msgtype, d in defs.items():
            try:
                bag_store.register(parse_definition(msgtype, d.fmt, d.text))
                parsed[msgtype] = _rihs01(bag_store, msgtype)
            except Exception as err:  # rosbags raises several types for definitions it cannot take
                failed[msgtype] = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        known: Typestore | None = None
        for conn in self.connections:
            if conn.msgtype in parsed:
                conn.store, conn.definition = bag_store, "bag"
                if conn.digest.startswith("RIHS01_") and conn.digest != parsed[conn.msgtype]:
                    self._note(
                        f"{conn.topic}: recorded type hash {conn.digest} does not match the bag's own "
                        f"definition of {conn.msgtype} ({parsed[conn.msgtype]}); using the definition"
                    )
                continue
            if known is None:
                known = typestore()
            if conn.msgtype not in known.types:
                conn.error = (
                    f"{conn.topic}: type {conn.msgtype} is unknown to this package and the bag's "
                    f"definition is {'unusable: ' + failed[conn.msgtype] if conn.msgtype in failed else 'missing'}"
                )
                continue
            ours = _rihs01(known, conn.msgtype)
            if conn.digest.startswith("RIHS01_") and conn.digest != ours:
                conn.error = (
                    f"{conn.topic}: the bag's definition of {conn.msgtype} is "
                    f"{'unusable (' + failed[conn.msgtype] + ')' if conn.msgtype in failed else 'missing'} "
                    f"and its recorded hash {conn.digest} differs from the package's ({ours})"
                )
                continue
            conn.store, conn.definition = known, "package"
            if conn.msgtype in failed:
                self._note(
                    f"{self.path}: cannot parse the bag's {defs[conn.msgtype].fmt} definition of "
                    f"{conn.msgtype} ({failed[conn.msgtype]}); using the package's own definition "
                    f"({'hash agrees' if conn.digest.startswith('RIHS01_') else 'no hash recorded'})"
                )

    # --- reading

    def messages(self, connections: Sequence[Connection] | None = None) -> Iterator[tuple[Connection, int, bytes]]:
        """(connection, receive time [ns], raw CDR) of the wanted connections, file after file."""
        self.open()
        wanted = None if connections is None else {id(c) for c in connections}
        for handle in list(self._files):
            count = 0  # messages of this file read so far, wanted or not
            for t_ns, lid, data in handle.messages():
                count += 1
                conn = self._map.get((id(handle), lid))
                if conn is None or (wanted is not None and id(conn) not in wanted):
                    continue
                raw = bytes(data)
                if self._message_compression:
                    try:
                        raw = zstd.decompress(raw)
                    except zstd.ZstdError:
                        raw = b""  # deserialize() reports it as a corrupt record
                yield conn, t_ns, raw
            cut = handle.last_cut
            if cut is not None:
                self._hurt(handle.label, cut, count)

    def deserialize(self, raw: bytes, connection: Connection) -> Any:
        """The message; :class:`BagError` where the type has no usable definition,
        :class:`CorruptRecord` where these bytes are not one."""
        if connection.store is None:
            raise BagError(connection.error)
        try:
            return connection.store.deserialize_cdr(raw, connection.msgtype)
        except Exception as err:  # rosbags raises assorted errors on bad bytes
            raise CorruptRecord(
                f"{connection.topic}: a {len(raw)}-byte record is not a valid "
                f"{connection.msgtype} ({type(err).__name__})"
            ) from err


def open_bag(path: str | Path, quiet: bool = False) -> Bag:
    """An unopened :class:`Bag` for a rosbag2 folder or a single storage file (``quiet``: its notes
    are not logged, for a bag this run has opened before)."""
    return Bag(path, quiet)


open_reader = open_bag  # the name replay code used before


@dataclass
class ReadReport:
    """What :func:`iter_messages` skipped or could not read, when asked to carry on."""

    damage: list[Damage] = field(default_factory=list)
    corrupt: dict[str, int] = field(default_factory=dict)  # topic -> records skipped
    notes: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool(self.damage or self.corrupt)

    def summary(self) -> str:
        parts = [str(d) for d in self.damage]
        parts += [f"skipped {n} corrupt record(s) on {t}" for t, n in self.corrupt.items()]
        return "; ".join(parts)


def topics(path: str | Path) -> dict[str, str]:
    """topic -> message type of every topic in the bag."""
    with open_bag(path) as bag:
        return {c.topic: c.msgtype for c in bag.connections}


def iter_messages(
    path: str | Path, topics: Sequence[str] | None = None, report: ReadReport | None = None
) -> Iterator[tuple[str, str, int, Any]]:
    """Yield (topic, msgtype, receive time [ns], deserialized message).

    Without ``report``, damage or a corrupt record raises :class:`BagError` once every message
    before it has been yielded; with one, corrupt records are skipped and counted, and reading
    stops quietly at damage, both recorded in ``report``.
    """
    with open_bag(path) as bag:
        connections = bag.connections
        if report is not None:
            report.notes.extend(n for n in bag.notes if n not in report.notes)
        if topics is not None:
            wanted = set(topics)
            missing = wanted - {c.topic for c in connections}
            if missing:
                raise BagError(
                    f"{path}: no topic(s) {sorted(missing)}; it has {sorted({c.topic for c in connections})}"
                )
            connections = [c for c in connections if c.topic in wanted]
        for conn in connections:
            if conn.store is None:
                raise BagError(conn.error)
        for conn, t_ns, raw in bag.messages(connections):
            try:
                msg = bag.deserialize(raw, conn)
            except CorruptRecord:
                if report is None:
                    raise
                report.corrupt[conn.topic] = report.corrupt.get(conn.topic, 0) + 1
                continue
            yield conn.topic, conn.msgtype, t_ns, msg
        if report is not None:
            report.damage.extend(d for d in bag.damage if d not in report.damage)
        elif bag.damage:
            raise BagError("; ".join(str(d) for d in bag.damage))


def write_bag(
    path: str | Path,
    messages: Iterable[tuple[str, str, int, Any]],
    storage: str = "sqlite3",
) -> int:
    """Write (topic, msgtype, t_ns, message) tuples to a new rosbag2 folder; returns the count.

    Messages are rosbags message objects built from :func:`typestore` types.
    """
    if storage not in _STORAGES:
        raise BagError(f"storage must be one of {sorted(_STORAGES)}, got {storage!r}")
    target = Path(path)
    if target.exists():
        raise BagError(f"{target} exists; rosbag2 writes a new folder")
    store = typestore()
    count = 0
    with Writer(target, version=8, storage_plugin=_STORAGES[storage]) as writer:
        connections: dict[str, Any] = {}
        for topic, msgtype, t_ns, msg in messages:
            conn = connections.get(topic)
            if conn is None:
                conn = connections[topic] = writer.add_connection(topic, msgtype, typestore=store)
            elif conn.msgtype != msgtype:
                raise BagError(f"topic {topic} was {conn.msgtype}, now {msgtype}")
            writer.write(conn, int(t_ns), store.serialize_cdr(msg, msgtype))
            count += 1
    return count
