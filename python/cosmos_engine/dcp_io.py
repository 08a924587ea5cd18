"""Reading torch.distributed.checkpoint (DCP) folders without ever running code from them.

A DCP folder is `.metadata` (a pickle: the index of every entry) plus data files. torch's own reader
unpickles `.metadata` with plain `pickle.load`, and its default planner reads every non-tensor entry
("bytes" items) with `torch.load(weights_only=False)`: either runs whatever code a crafted file names.
Every DCP read in cosmos-engine (resume, convert, infer, a training init from a DCP folder) goes through
`load_dcp` here instead, which

* unpickles `.metadata` with `_MetadataUnpickler`: DCP's own metadata classes, sizes, dtypes and paths only;
* reads bytes items with `torch.load(weights_only=True)` (tensors, numbers, strings, lists, dicts);
* turns every failure into a `CheckpointError` naming the folder (and `--trust-checkpoint` where trusting
  the file would have let it load).

`trust_checkpoint=True` (the CLI's --trust-checkpoint) restores torch's unrestricted readers.

`folder_problem` says whether a folder is whole: its `.metadata` readable and every data file it names
present and long enough for the entries stored in it.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._nested_dict import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata

from cosmos_engine.errors import CheckpointError

METADATA_FILE = ".metadata"  # DCP's index of a checkpoint folder
TRUST_HINT = "pass --trust-checkpoint if you trust this checkpoint's source"


class UntrustedContent(CheckpointError):
    """The checkpoint holds pickled objects beyond plain data; only --trust-checkpoint would read them."""


class _Refused(pickle.UnpicklingError):
    """Something the metadata unpickler will not build."""


class _MetadataUnpickler(pickle._Unpickler):
    """Builds DCP's metadata objects and nothing else: the classes of `torch.distributed.checkpoint.metadata`,
    the file-system reader's `_StorageInfo`, torch sizes, dtypes and layouts, and paths. The pure-Python
    unpickler, so that BUILD can be refused on classes: `setattr` on an allowed class would change it for
    the whole process."""

    _ALLOWED = {
        ("torch", "Size"): torch.Size,
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
        ("pathlib", "PosixPath"): pathlib.PosixPath,
        ("pathlib", "WindowsPath"): pathlib.WindowsPath,
        ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
        ("pathlib", "PureWindowsPath"): pathlib.PureWindowsPath,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[module, name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == dcp_metadata.__name__ and isinstance(getattr(dcp_metadata, name, None), type):
            return getattr(dcp_metadata, name)
        raise _Refused(f"{module}.{name}")

    def _load_build(self) -> None:
        if isinstance(self.stack[-2], type):
            raise _Refused(f"attributes of the class {self.stack[-2].__qualname__}")
        super().load_build()

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: _load_build}


class _RestrictedReader(FileSystemReader):
    """A FileSystemReader whose `.metadata` is read by `_MetadataUnpickler` instead of `pickle.load`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        with open(Path(self.path) / METADATA_FILE, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"expected a DCP Metadata object, got {type(metadata).__name__}")
        if metadata.storage_meta is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafePlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose bytes items are read with `weights_only=True` unless trusted. Entries that
    loader refuses are collected in `refused` (DCP would bury an exception in its own wrapper)."""

    def __init__(self, trust_checkpoint: bool, flatten: bool) -> None:
        super().__init__(flatten_state_dict=flatten, flatten_sharded_tensors=flatten)
        self._trust = trust_checkpoint
        self.refused: list[str] = []     # pickled objects weights_only will not build
        self.unreadable: list[str] = []  # not a pickle at all

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        key = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=not self._trust)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            # torch's weights_only loader names the pickle GLOBAL it will not build (in more than one wording);
            # anything else (an unknown opcode, a truncated stream) is damage that trust would not cure
            (self.refused if "GLOBAL" in str(exc) else self.unreadable).append(key)
            return
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[key], obj)
        else:
            self.state_dict[key] = obj


def _untrusted_metadata(folder: Path, refused: _Refused) -> UntrustedContent:
    return UntrustedContent(f"{folder / METADATA_FILE}: refusing to unpickle {refused} from the DCP metadata; "
                            f"{TRUST_HINT}")


def dcp_reader(folder: str | Path, trust_checkpoint: bool = False) -> FileSystemReader:
    """The storage reader of a DCP folder: `.metadata` through the restricted unpickler unless trusted."""
    return FileSystemReader(folder) if trust_checkpoint else _RestrictedReader(folder)


def read_metadata(folder: str | Path, trust_checkpoint: bool = False) -> Metadata:
    """The DCP metadata of `folder`; CheckpointError naming the file when it is unreadable or untrusted."""
    path = Path(folder) / METADATA_FILE
    try:
        return dcp_reader(folder, trust_checkpoint).read_metadata()
    except _Refused as exc:
        raise _untrusted_metadata(Path(folder), exc) from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (the save did not finish, or this is not a DCP folder)") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the DCP metadata ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure of a damaged file
        raise CheckpointError(f"{path}: unreadable DCP metadata ({type(exc).__name__}: {exc})") from None


def folder_problem(folder: str | Path, trust_checkpoint: bool = False) -> str | None:
    """None when the DCP folder is whole; else what is wrong, naming the file. Untrusted metadata raises."""
    folder = Path(folder)
    try:
        metadata = read_metadata(folder, trust_checkpoint)
    except UntrustedContent:
        raise
    except CheckpointError as exc:
        return str(exc)
    needed: dict[str, int] = {}
    try:
        for info in (metadata.storage_data or {}).values():
            needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    except (AttributeError, TypeError):
        return f"{folder / METADATA_FILE}: malformed DCP metadata (its storage index is not DCP's)"
    for name, size in sorted(needed.items()):
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            return f"{folder / METADATA_FILE}: names the data file {name!r}, which is not a file in {folder}"
        try:
            found = (folder / name).stat().st_size
        except FileNotFoundError:
            return f"{folder / name}: missing (named by {folder / METADATA_FILE})"
        if found < size:
            return f"{folder / name}: truncated ({found} bytes, the metadata needs {size})"
    return None


def load_dcp(state: dict[str, Any], folder: str | Path, *, trust_checkpoint: bool = False, flatten: bool = True,
             no_dist: bool = True) -> None:
    """Fill `state` in place from the DCP folder (collective when `no_dist` is False: every rank calls it).

    `flatten=False` loads into a flat dict exactly as keyed (entries that are not tensors are replaced
    by what the file holds). Raises CheckpointError naming the folder for unreadable or untrusted data."""
    folder = Path(folder)
    planner = _SafePlanner(trust_checkpoint, flatten)
    with warnings.catch_warnings():
        # One process with no process group is exactly what no_dist means; torch warns about it.
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        try:
            dcp.load(state, storage_reader=dcp_reader(folder, trust_checkpoint), planner=planner, no_dist=no_dist)
        except CheckpointException as exc:  # DCP's wrapper of what failed on each rank
            causes = list(_causes(cause for cause, _ in exc.failures.values()))
            refused = next((cause for cause in causes if isinstance(cause, _Refused)), None)
            if refused is not None:
                raise _untrusted_metadata(folder, refused) from None
            raise CheckpointError(f"{folder}: unreadable checkpoint data ({_describe(causes)})") from None
        except _Refused as exc:
            raise _untrusted_metadata(folder, exc) from None
        except (OSError, EOFError, pickle.UnpicklingError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{folder}: unreadable checkpoint ({_describe([exc])})") from None
    if planner.refused:
        raise UntrustedContent(f"{folder}: entries {_shown(planner.refused)} hold pickled objects that weights_only "
                               f"loading refuses; {TRUST_HINT}")
    if planner.unreadable:
        raise CheckpointError(f"{folder}: entries {_shown(planner.unreadable)} are unreadable (damaged data)")


def _shown(keys: list[str]) -> str:
    return ", ".join(map(repr, keys[:5])) + (", ..." if len(keys) > 5 else "")


def _causes(errors: Iterable[BaseException]) -> Iterable[BaseException]:
    """Each error and the chain of errors it was raised from."""
    for error in errors:
        while error is not None:
            yield error
            error = error.__cause__ or error.__context__


def _describe(errors: Iterable[BaseException]) -> str:
    return "; ".join(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}" for e in errors)
