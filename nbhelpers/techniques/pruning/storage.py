"""Sparse storage: ``save_sparse`` writes CSR arrays (fp32 values, uint16 column indices where they
fit, int32 row pointers) with NumPy, optionally deflate-compressed; ``save_torch_sparse`` writes
torch's sparse CSR tensors; both load back to the exact dense weights. ``predicted_bytes`` says how
many bytes such a file takes, from its arrays, their dtypes and the container.
"""

from __future__ import annotations

import gzip
import io
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nbhelpers.core.params import check_choice
from nbhelpers.measure import file_bytes
from nbhelpers.techniques.pruning.kernels import sparse_csr


def is_weight_matrix(key: str, v: torch.Tensor) -> bool:
    """Whether a state-dict entry is stored as a CSR matrix: a ``weight`` of two or more dims."""
    return key.endswith("weight") and v.dim() >= 2


def sparse_arrays(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """CSR arrays of every weight matrix of a (permanent) state dict; other tensors stay dense.

    A weight of shape (out, ...) is stored as a CSR matrix (out, prod(...)): ``values`` (float32),
    ``indices`` (column of each value: uint16 when the row has at most 65,536 columns, else int32),
    ``indptr`` (int32, where each row starts) and ``shape``.

    Args:
        state: name -> tensor, without pruning masks (call ``make_permanent`` first).

    Returns:
        Array name -> array, ready for ``np.savez``.
    """
    out: dict[str, np.ndarray] = {}
    for k, v in state.items():
        if k.endswith(("_orig", "_mask")):
            raise ValueError(f"{k}: make the pruning permanent (prune.remove) before saving")
        a = v.detach().cpu().numpy()
        if not is_weight_matrix(k, v):
            out[f"{k}.dense"] = a
            continue
        m = a.reshape(a.shape[0], -1)
        rows, cols = np.nonzero(m)
        out[f"{k}.values"] = m[rows, cols].astype(np.float32)
        out[f"{k}.indices"] = cols.astype(np.uint16 if m.shape[1] <= 65536 else np.int32)
        out[f"{k}.indptr"] = np.concatenate(
            [[0], np.cumsum(np.bincount(rows, minlength=m.shape[0]))]
        ).astype(np.int32)
        out[f"{k}.shape"] = np.asarray(a.shape, dtype=np.int64)
    return out


def dense_state(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The dense state dict back from ``sparse_arrays`` (the inverse, exactly).

    Args:
        arrays: array name -> array.

    Returns:
        Name -> tensor.
    """
    state: dict[str, torch.Tensor] = {}
    for key in arrays:
        name, kind = key.rsplit(".", 1)
        if kind == "dense":
            state[name] = torch.from_numpy(np.array(arrays[key]))
        elif kind == "values":
            shape = tuple(int(s) for s in arrays[f"{name}.shape"])
            indptr = arrays[f"{name}.indptr"].astype(np.int64)
            m = np.zeros((shape[0], int(np.prod(shape[1:]))), dtype=np.float32)
            rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
            m[rows, arrays[f"{name}.indices"].astype(np.int64)] = arrays[key]
            state[name] = torch.from_numpy(m.reshape(shape))
    return state


def save_sparse(state: Mapping[str, torch.Tensor], path: str | Path, compress: bool = False) -> int:
    """Write the CSR arrays of a state dict to an ``.npz`` file (deflate-compressed if asked).

    Args:
        state: permanent state dict.
        path: file to write (should end in ``.npz``).
        compress: use ``np.savez_compressed``.

    Returns:
        Bytes on disk.
    """
    (np.savez_compressed if compress else np.savez)(Path(path), **sparse_arrays(state))
    return file_bytes(path)


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a file written by ``save_sparse`` back to a dense state dict."""
    with np.load(Path(path)) as f:
        return dense_state({k: f[k] for k in f.files})


def torch_sparse_state(
    state: Mapping[str, torch.Tensor], compact: bool = False
) -> dict[str, torch.Tensor | dict[str, Any]]:
    """What ``save_torch_sparse`` writes: every weight matrix as a CSR tensor, the rest as is.

    Args:
        state: permanent state dict (conv weights are flattened to (out, -1); the shape is kept).
        compact: CSR arrays in storages of their own size (``kernels.sparse_csr``).

    Returns:
        Name -> tensor, or {"csr": sparse CSR tensor, "shape": the weight's shape}; on the CPU.
    """
    out: dict[str, torch.Tensor | dict[str, Any]] = {}
    for k, v in state.items():
        v = v.detach().cpu()  # the artifact does not depend on (or record) the model's device
        if is_weight_matrix(k, v):
            csr = sparse_csr(v.reshape(v.shape[0], -1), compact=compact)
            out[k] = {"csr": csr, "shape": tuple(v.shape)}
        else:
            out[k] = v
    return out


def save_torch_sparse(
    state: Mapping[str, torch.Tensor], path: str | Path, compact: bool = False
) -> int:
    """``torch.save`` with every weight matrix as a torch sparse CSR tensor (int64 indices).

    Tensors are saved from the CPU, whatever their device. By default the column indices are
    torch's view into the COO index storage (16 bytes each on disk); ``compact`` writes 8.

    Args:
        state: permanent state dict (conv weights are flattened to (out, -1); the shape is kept).
        path: file to write.
        compact: give the CSR arrays storages of their own size.

    Returns:
        Bytes on disk.
    """
    torch.save(torch_sparse_state(state, compact), Path(path))
    return file_bytes(path)


def load_torch_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a file written by ``save_torch_sparse`` back to a dense state dict (on the CPU)."""
    raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    return {
        k: v["csr"].to_dense().reshape(v["shape"]) if isinstance(v, dict) else v
        for k, v in raw.items()
    }


def gzip_file(path: str | Path) -> int:
    """Compress a file with gzip (level 9) next to it (``<path>.gz``).

    Args:
        path: the file.

    Returns:
        Bytes of the compressed file.
    """
    out = Path(f"{path}.gz")
    with open(path, "rb") as src, gzip.open(out, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    return file_bytes(out)


#: Ways ``storage_prediction`` can predict a file: torch.save of the dense state dict, torch.save
#: of torch's CSR tensors (as ``to_sparse_csr`` returns them, or compact), NumPy CSR arrays.
LAYOUTS = ("torch dense", "torch csr", "torch csr compact", "npz csr")

#: torch.save's zip records around the tensors' storages (name, bytes), in the order written.
_TORCH_HEAD = (("data.pkl", 0), (".format_version", 1), (".storage_alignment", 2), ("byteorder", 6))

_TORCH_TAIL = (("version", 2), (".data/serialization_id", 40))


def torch_zip_bytes(storages: Sequence[int], archive: str, pickle: int = 0) -> int:
    """Bytes of a ``torch.save`` file holding these storages and a pickle of ``pickle`` bytes.

    The file is a zip: each record is a local header (30 bytes and its name), an extra field
    (at least 4 bytes) that starts the data on a 64-byte boundary, the data and a 16-byte data
    descriptor; then one central directory entry per record (46 bytes and the name), a zip64 end
    record and locator (76) and the end record (22).

    Args:
        storages: bytes of each tensor storage, in the order written.
        archive: the zip's folder name (torch uses the file name without its suffix).
        pickle: bytes of the pickle that describes the tensors (0: not known; it is a few hundred
            bytes to a few kB and shifts the padding of the records after it).

    Returns:
        Predicted bytes.
    """
    head = (("data.pkl", pickle), *_TORCH_HEAD[1:])
    records = [*head, *((f"data/{i}", n) for i, n in enumerate(storages)), *_TORCH_TAIL]
    offset = central = 0
    for name, size in records:
        header = 30 + len(f"{archive}/{name}")
        pad = -(offset + header) % 64  # an extra field of 4 bytes at least: 0 to 3 take 64 more
        offset += header + pad + (64 if pad < 4 else 0) + size + 16
        central += 46 + len(f"{archive}/{name}")
    return offset + central + 76 + 22


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of ``np.savez`` (uncompressed) of these arrays.

    Each array is a zip record: local header (30 bytes, the name ``<key>.npy``, a 20-byte zip64
    field), the ``.npy`` header (padded to a multiple of 64 bytes) and the data; then one central
    directory entry (46 bytes and the name) per array and the end record (22).

    Args:
        arrays: name -> array.

    Returns:
        Predicted bytes on disk.
    """
    total = 22
    for key, a in arrays.items():
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(a))
        total += 30 + 20 + 46 + 2 * len(f"{key}.npy") + len(head.getvalue()) + a.nbytes
    return total


def predicted_bytes(
    state: Mapping[str, torch.Tensor], layout: str, archive: str = "model", pickle: int = 0
) -> dict[str, int]:
    """Bytes a file should take, from the arrays it stores, their dtypes and the container.

    Args:
        state: permanent state dict.
        layout: one of ``LAYOUTS``.
        archive: for torch.save, the file name without its suffix (it names the zip's records).
        pickle: for torch.save, the pickle's bytes if known (0: the prediction leaves it out).

    Returns:
        {"textbook", "values", "column indices", "row pointers", "other", "container",
        "predicted"}: "textbook" is values and column indices alone (4 bytes per value, plus the
        index dtype's width), "other" the biases (and npz's shapes), "container" the zip and
        ``.npy`` headers and padding (and ``pickle``), "predicted" the sum.
    """
    check_choice("layout", layout, LAYOUTS)
    parts = dict.fromkeys(["values", "column indices", "row pointers", "other"], 0)
    if layout == "npz csr":
        arrays = sparse_arrays(state)
        for k, a in arrays.items():
            kind = k.rsplit(".", 1)[1]
            part = {"values": "values", "indices": "column indices", "indptr": "row pointers"}
            parts[part.get(kind, "other")] += a.nbytes
        container = npz_bytes(arrays) - sum(parts.values())
        textbook = sum(a.nbytes + arrays[k.replace(".values", ".indices")].nbytes
                       for k, a in arrays.items() if k.endswith(".values"))  # fmt: skip
    else:
        storages = []
        saved = torch_sparse_state(state, layout == "torch csr compact")
        textbook = 0
        for k, v in saved.items():
            if isinstance(v, dict) and layout != "torch dense":
                csr = v["csr"]
                named = zip(("row pointers", "column indices", "values"),
                            (csr.crow_indices(), csr.col_indices(), csr.values()))  # fmt: skip
                for part, t in named:
                    storages.append(t.untyped_storage().nbytes())
                    parts[part] += storages[-1]
                textbook += csr.values().numel() * (4 + csr.col_indices().element_size())
            else:
                t = state[k].detach()
                storages.append(t.numel() * t.element_size())
                parts["values" if is_weight_matrix(k, t) else "other"] += storages[-1]
                textbook += storages[-1] if is_weight_matrix(k, t) else 0
        container = torch_zip_bytes(storages, archive, pickle) - sum(storages)
    total = sum(parts.values()) + container
    return {"textbook": int(textbook), **parts, "container": int(container), "predicted": total}
