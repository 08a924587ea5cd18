"""Decoders: frame-exact reads of generated H.264 clips, and the official resize.

"Frame-exact" is checked two ways. (1) Pixel-exact: a lossless clip (libx264rgb, qp 0, no chroma
subsampling) of random frames must decode to the very bytes that were encoded. (2) Index-exact on ordinary
footage: yuv420p at crf 18 with B-frames and a key frame every 8 frames is lossy, so each frame carries its
index as a flat grey level 6 apart from its neighbours; any window, wherever it starts in a GOP, must come
back as exactly the frames asked for, identified by that level.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosmos_engine.data.decode_pyav import PyAVDecoder
from cosmos_engine.data.video_io import probe_video, resize_frames, to_unit_range, write_video
from cosmos_engine.errors import DatasetError

GREY0, GREY_STEP = 20, 6


def grey_index_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frame t is flat grey 20 + 6 t: its index survives lossy coding."""
    return np.stack([np.full((height, width, 3), GREY0 + GREY_STEP * t, dtype=np.uint8) for t in range(count)])


def decoded_indices(frames: torch.Tensor) -> list[int]:
    return [round((float(f.float().mean()) - GREY0) / GREY_STEP) for f in frames]


@pytest.fixture(scope="module")
def lossless_clip(tmp_path_factory):
    frames = np.random.default_rng(0).integers(0, 256, size=(20, 48, 80, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("clips") / "lossless.mp4"
    write_video(path, frames, fps=16, lossless=True, gop=6)
    return path, frames


@pytest.fixture(scope="module")
def gop_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "gop8.mp4"
    write_video(path, grey_index_frames(40), fps=24, gop=8)
    return path


def test_lossless_clip_decodes_to_the_encoded_bytes(lossless_clip):
    path, frames = lossless_clip
    decoded = PyAVDecoder().read_frames(path, range(len(frames)))
    assert decoded.dtype == torch.uint8 and decoded.shape == (20, 48, 80, 3)
    assert torch.equal(decoded, torch.from_numpy(frames))


def test_any_index_list_in_any_order_is_exact(lossless_clip):
    path, frames = lossless_clip
    indices = [13, 2, 2, 19, 7]
    assert torch.equal(PyAVDecoder().read_frames(path, indices), torch.from_numpy(frames[indices]))


@pytest.mark.parametrize("start", [0, 3, 7, 8, 13, 31])
def test_windows_starting_anywhere_in_a_gop_have_the_right_frames(gop_clip, start):
    frames = PyAVDecoder().read_frames(gop_clip, range(start, start + 9))
    assert decoded_indices(frames) == list(range(start, start + 9))


def test_fallback_without_timestamps_counts_frames(gop_clip, monkeypatch):
    monkeypatch.setattr(PyAVDecoder, "_table", lambda self, path: None)
    assert decoded_indices(PyAVDecoder().read_frames(gop_clip, [5, 30, 31])) == [5, 30, 31]


def test_out_of_range_index_names_the_file(gop_clip):
    with pytest.raises(DatasetError, match="gop8.mp4.*outside its 40 frames"):
        PyAVDecoder().read_frames(gop_clip, [38, 40])


def test_probe_reports_what_was_encoded(gop_clip):
    probe = probe_video(gop_clip)
    assert (probe.frames, probe.fps, probe.width, probe.height, probe.codec) == (40, 24.0, 64, 48, "h264")
    assert probe.duration == pytest.approx(40 / 24, abs=1e-3)


def test_resize_follows_the_official_pixel_path():
    frames = torch.from_numpy(np.random.default_rng(1).integers(0, 256, size=(10, 36, 64, 3), dtype=np.uint8))
    out = resize_frames(frames, 32, 48)
    assert out.dtype == torch.uint8 and out.shape == (3, 10, 32, 48)
    # The official per-frame steps (reference/vae_data_io.md §3.3), written out independently.
    expected = []
    for frame in frames:
        x = frame.permute(2, 0, 1).float()[None] / 255.0
        x = F.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False, antialias=True)
        expected.append(torch.clamp(x * 255, 0, 255).to(torch.uint8)[0])
    assert torch.equal(out, torch.stack(expected, dim=1))


def test_native_size_is_only_transposed_and_unit_range_spans_minus_one_to_one():
    frames = torch.arange(0, 256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(1, 16, 16, 3).contiguous()
    out = resize_frames(frames, 16, 16)
    assert torch.equal(out, frames.permute(3, 0, 1, 2))
    unit = to_unit_range(out)
    assert unit.dtype == torch.float32 and unit.min() == -1.0 and unit.max() == 1.0
    assert torch.equal(unit, out.float() / 127.5 - 1)


@pytest.fixture(scope="module")
def vp9_gop_clip(tmp_path_factory):
    """The grey-index frames as VP9 (a codec DALI's CPU decoder reads), a key frame every 8 frames."""
    import av

    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (the optional 'dali' extra)")
    if "libvpx-vp9" not in av.codecs_available:
        pytest.skip("this PyAV build has no VP9 encoder (libvpx)")
    path = tmp_path_factory.mktemp("clips") / "gop8_vp9.webm"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "8", "crf": "20", "b:v": "0", "threads": "1"}
        for frame in grey_index_frames(40):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.mark.parametrize("indices", [range(0, 9), range(5, 14), range(11, 20), range(31, 40), [17, 12, 12, 30]])
def test_dali_pipeline_on_its_cpu_backend_reads_the_frames_asked_for(vp9_gop_clip, indices):
    """The DALI decoder's pipeline (external sources, start_frame/sequence_length, frame bookkeeping) on
    DALI's CPU backend, which decodes VP9 but not H.264; the GPU backend is the `cuda` test below."""
    from cosmos_engine.data.decode_dali import DALIDecoder

    frames = DALIDecoder(backend="cpu").read_frames(vp9_gop_clip, indices)
    assert frames.device.type == "cpu" and frames.dtype == torch.uint8 and frames.shape == (len(indices), 48, 64, 3)
    assert decoded_indices(frames) == list(indices)
    pyav = PyAVDecoder().read_frames(vp9_gop_clip, indices)
    assert (frames.int() - pyav.int()).abs().max() <= 2  # colour conversion may round differently


def test_dali_errors_name_the_file_and_the_reason_and_the_decoder_recovers(vp9_gop_clip, tmp_path):
    from cosmos_engine.data.decode_dali import DALIDecoder

    decoder = DALIDecoder(backend="cpu")
    with pytest.raises(DatasetError, match=r"gop8_vp9.webm: DALI returned 2 frames for 38..40"):
        decoder.read_frames(vp9_gop_clip, [38, 40])
    with pytest.raises(DatasetError, match=r"gop8_vp9.webm: DALI could not decode frames 45..45 \(Start frame 45 is out of bounds"):
        decoder.read_frames(vp9_gop_clip, [45])
    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(DatasetError, match=r"garbage.webm: DALI could not decode frames 0..0 \(.*decoder"):
        decoder.read_frames(garbage, [0])
    assert decoded_indices(decoder.read_frames(vp9_gop_clip, range(3, 6))) == [3, 4, 5]


@pytest.mark.cuda
def test_dali_reads_the_same_frames_as_pyav(gop_clip):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (the optional 'dali' extra)")
    from cosmos_engine.data.decode_dali import DALIDecoder

    dali = DALIDecoder().read_frames(gop_clip, range(11, 20))
    assert dali.is_cuda and dali.dtype == torch.uint8
    assert decoded_indices(dali.cpu()) == list(range(11, 20))
    pyav = PyAVDecoder().read_frames(gop_clip, range(11, 20))
    assert (dali.cpu().int() - pyav.int()).abs().max() <= 2  # colour conversion may round differently
