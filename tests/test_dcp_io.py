"""The one DCP reader: nothing but DCP's metadata is built, damaged folders are described, not raised."""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import pickletools

import pytest
import torch
import torch.distributed.checkpoint as dcp

from cosmos_engine.dcp_io import METADATA_FILE, UntrustedContent, folder_problem, load_dcp, read_metadata
from cosmos_engine.errors import CheckpointError
from tests.conftest import PickleThatRunsCode


def save(folder: pathlib.Path, state: dict) -> pathlib.Path:
    dcp.save(state, checkpoint_id=folder, no_dist=True)
    return folder


def class_patching_pickle() -> bytes:
    """GLOBAL pathlib.PosixPath; BUILD with a slot-state dict that would set PosixPath.__truediv__."""
    body = (pickle.PROTO + bytes([2]) + b"cpathlib\nPosixPath\n" + b"N}" + pickle.SHORT_BINUNICODE
            + bytes([len("__truediv__")]) + b"__truediv__" + b"ctorch\nSize\n" + pickle.SETITEM + pickle.TUPLE2
            + pickle.BUILD + pickle.STOP)
    pickletools.dis(body, out=io.StringIO())  # a well-formed pickle
    return body


def test_metadata_that_would_patch_an_allowed_class_is_refused(tmp_path):
    folder = save(tmp_path / "ck", {"w": torch.zeros(2)})
    (folder / METADATA_FILE).write_bytes(class_patching_pickle())
    with pytest.raises(UntrustedContent, match="attributes of the class PosixPath.*--trust-checkpoint"):
        read_metadata(folder)
    assert pathlib.PosixPath("/a") / "b" == pathlib.PosixPath("/a/b")  # unchanged


def test_metadata_naming_a_callable_is_refused_before_it_runs(tmp_path, capsys):
    folder = save(tmp_path / "ck", {"w": torch.zeros(2)})
    (folder / METADATA_FILE).write_bytes(pickle.dumps(PickleThatRunsCode()))
    with pytest.raises(UntrustedContent, match="builtins.print"):
        folder_problem(folder)
    assert "this must not run" not in capsys.readouterr().out


class CallsOsFunction:
    def __reduce__(self):
        return (os.getcwd, ())  # torch words its refusal of a blocked module differently from print's


@pytest.mark.parametrize("payload", [PickleThatRunsCode(), CallsOsFunction()], ids=["builtins", "os"])
def test_a_pickled_object_entry_needs_trust(tmp_path, payload):
    folder = save(tmp_path / "ck", {"w": torch.zeros(2), "obj": payload})
    with pytest.raises(UntrustedContent, match="'obj' hold pickled objects.*--trust-checkpoint"):
        load_dcp({"w": torch.empty(2), "obj": None}, folder)


def test_a_garbage_entry_is_called_damaged(tmp_path):

    folder = save(tmp_path / "ck2", {"w": torch.zeros(2), "n": 7})
    (shard,) = folder.glob("*.distcp")
    data = bytearray(shard.read_bytes())
    info = next(i for k, i in read_metadata(folder).storage_data.items() if k.fqn == "n")
    data[info.offset:info.offset + info.length] = b"\x00" * info.length  # the entry's bytes, zeroed
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="'n' are unreadable") as caught:
        load_dcp({"w": torch.empty(2), "n": 0}, folder)
    assert not isinstance(caught.value, UntrustedContent)


def test_folder_problem_names_missing_truncated_and_foreign_data_files(tmp_path):
    folder = save(tmp_path / "ck", {"w": torch.arange(64.0)})
    assert folder_problem(folder) is None
    metadata = read_metadata(folder)
    for info in metadata.storage_data.values():
        info.relative_path = "../elsewhere.distcp"
    (folder / METADATA_FILE).write_bytes(pickle.dumps(metadata))
    assert "names the data file '../elsewhere.distcp'" in folder_problem(folder)

    metadata.storage_data = {"not": 3}
    (folder / METADATA_FILE).write_bytes(pickle.dumps(metadata))
    assert "malformed DCP metadata" in folder_problem(folder)
    (folder / METADATA_FILE).write_bytes(b"\x80\x04garbage")
    assert "unreadable DCP metadata" in folder_problem(folder)
    (folder / METADATA_FILE).unlink()
    assert "missing" in folder_problem(folder)
