"""A memory-mapped safetensors reader that checks every tensor's extent against the file before use.

Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}},
then the data; offsets are relative to the end of the header. Tensors come back as zero-copy views of the map,
so loading touches only the pages it reads and peak memory stays near the size of what is built from them.
"""

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is: the message names the file or tensor and what was expected."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int


class SafetensorsFile:
    """One .safetensors file, mapped read-only (copy-on-write, so torch gets a writable buffer without copying)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "rb")
        size = self.path.stat().st_size
        self.tensors = self._read_header(size)
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY) if size else None

    def _read_header(self, size: int) -> dict[str, TensorInfo]:
        if size < 8:
            raise CheckpointError(f"{self.path}: truncated: {size} bytes, too short for a safetensors header")
        (header_len,) = struct.unpack("<Q", self._file.read(8))
        if 8 + header_len > size:
            raise CheckpointError(f"{self.path}: truncated: header needs {8 + header_len} bytes, file has {size}")
        try:
            header = json.loads(self._file.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{self.path}: header is not valid JSON ({e})") from None
        header.pop("__metadata__", None)
        return {name: self._info(name, meta, 8 + header_len, size) for name, meta in header.items()}

    def _info(self, name: str, meta: dict, data_start: int, size: int) -> TensorInfo:
        if meta.get("dtype") not in DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {meta.get('dtype')!r}")
        begin, end = (data_start + off for off in meta["data_offsets"])
        shape = tuple(meta["shape"])
        dtype = DTYPES[meta["dtype"]]
        expected = dtype.itemsize * _numel(shape)
        if end - begin != expected:
            raise CheckpointError(f"{self.path}: tensor {name} spans {end - begin} bytes but shape {list(shape)} "
                                  f"of {meta['dtype']} needs {expected}")
        if end > size:
            raise CheckpointError(f"{self.path}: truncated: tensor {name} ends at byte {end} but the file has "
                                  f"only {size} bytes (re-download or re-copy the file)")
        return TensorInfo(name, dtype, shape, begin, end)

    def get(self, name: str) -> torch.Tensor:
        """A zero-copy view of the tensor in the map."""
        info = self.tensors[name]
        if info.end == info.begin:
            return torch.empty(info.shape, dtype=info.dtype)
        flat = torch.frombuffer(self._map, dtype=info.dtype, count=_numel(info.shape), offset=info.begin)
        return flat.view(info.shape)

    def close(self):
        self._file.close()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Write tensors in the safetensors format (what the HF safetensors library writes, byte for byte)."""
    header, offset, blobs = {}, 0, []
    for name, tensor in tensors.items():
        data = tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
