"""Test helpers: small real videos, dataset layouts as distributed, and a flaky TCP proxy.

Everything binds to 127.0.0.1, and every loop is bounded in time.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import av
import numpy as np

from dynamonet.data.encode import encode_video

# --------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------


def position_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Frames ``(N, H, W, 3)`` whose pixels encode their position: R grows with x, G with y
    (2 levels per pixel), B with the frame index (6 levels per frame)."""
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[..., 0] = np.clip(x * 2 + 2, 0, 255)
    frames[..., 1] = np.clip(y * 2 + 2, 0, 255)
    frames[..., 2] = np.clip(np.arange(num_frames) * 6 + 3, 0, 255)[:, None, None]
    return frames


def frame_index(frames: np.ndarray) -> np.ndarray:
    """Frame indices ``(N,)`` recovered from :func:`position_frames` pixels (mean of B)."""
    return np.round((frames[..., 2].reshape(len(frames), -1).mean(1) - 3) / 6).astype(int)


def crop_center(frames: np.ndarray) -> tuple[float, float, bool]:
    """(y, x) of a crop's centre in the source frame, and whether it was flipped left-right."""
    r, g = frames[..., 0].astype(float), frames[..., 1].astype(float)
    flipped = r[:, :, 0].mean() > r[:, :, -1].mean()
    return (g.mean() - 2) / 2, (r.mean() - 2) / 2, bool(flipped)


def noise_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random frames (cheap to encode, not trivially compressible)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (num_frames, height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(small.repeat(8, 1).repeat(8, 2)[:, :height, :width])


def write_video(path: str, frames: np.ndarray, fps: float = 25.0, gop: int = 12, crf: int = 10) -> str:
    """Write H.264 mp4 (``.mp4``) or MPEG-4 part 2 AVI (``.avi``, long GOP, like UCF101's files)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if path.endswith(".avi"):
        data = encode_video(frames, fps, codec="mpeg4", container_format="avi", gop=250, bit_rate=2_000_000)
    else:
        data = encode_video(frames, fps, gop=gop, crf=crf)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def write_audio_only(path: str) -> str:
    """An AVI file with a PCM audio stream and no video stream."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with av.open(path, "w", format="avi") as c:
        stream = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    return path


def write_bad_files(folder: str, good: bytes) -> dict[str, str]:
    """Zero-length, truncated, garbage and audio-only files in ``folder``; name -> expected reason."""
    os.makedirs(folder, exist_ok=True)
    files = {"empty.avi": b"", "truncated.avi": good[: len(good) // 3], "garbage.avi": b"not a video" * 200}
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)
    write_audio_only(os.path.join(folder, "audio_only.avi"))
    return {"empty.avi": "zero-length", "truncated.avi": "truncated", "garbage.avi": "unreadable",
            "audio_only.avi": "no video stream"}


# --------------------------------------------------------------------------------------------
# Dataset layouts
# --------------------------------------------------------------------------------------------

def make_ucf101(root: str, frames: int = 20) -> tuple[str, str]:
    """A 3-class UCF101 tree + ucfTrainTestlist (with the official HandStandPushups spelling quirk
    and one list line naming a missing file). Returns (videos root, annotations dir)."""
    classes = ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    videos, ann = os.path.join(root, "UCF-101"), os.path.join(root, "ucfTrainTestlist")
    train, test = [], []
    for ci, cls in enumerate(classes):
        spelled = "HandStandPushups" if cls == "HandstandPushups" else cls
        for g in (1, 2, 8):
            name = f"v_{spelled}_g{g:02d}_c01.avi"
            write_video(os.path.join(videos, cls, name), noise_frames(frames, 48, 64, seed=ci * 10 + g))
            (train if g == 8 else test).append(f"{cls}/{name}" + (f" {ci + 1}" if g == 8 else ""))
    train.append("Archery/v_Archery_g09_c05.avi 2")   # listed, never downloaded
    os.makedirs(ann, exist_ok=True)
    for name, lines in (("classInd.txt", [f"{i + 1} {c}" for i, c in enumerate(classes)]),
                        ("trainlist01.txt", train), ("testlist01.txt", test)):
        with open(os.path.join(ann, name), "w", newline="\r\n") as fh:   # the official files use CRLF
            fh.write("\n".join(lines) + "\n")
    return videos, ann


def make_hmdb51(root: str, frames: int = 20) -> tuple[str, str]:
    """A 2-class HMDB51 tree + split files (1 train, 2 test, 0 unused, one missing file)."""
    videos, ann = os.path.join(root, "hmdb51"), os.path.join(root, "testTrainMulti_7030_splits")
    os.makedirs(ann, exist_ok=True)
    for ci, cls in enumerate(["brush_hair", "cartwheel"]):
        lines = []
        for i, code in enumerate((1, 1, 2, 0)):
            name = f"{cls}_clip_{i}.avi"
            write_video(os.path.join(videos, cls, name), noise_frames(frames, 48, 64, seed=100 + ci * 10 + i))
            lines.append(f"{name} {code} ")
        lines.append(f"{cls}_missing.avi 1 ")
        with open(os.path.join(ann, f"{cls}_test_split1.txt"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return videos, ann


def make_kinetics(root: str, frames: int = 20) -> tuple[str, str]:
    """Kinetics files (train nested under <split>/<label>/, val flat) + one CSV with a missing row."""
    videos, csv_path = os.path.join(root, "kinetics"), os.path.join(root, "kinetics400.csv")
    rows = ["label,youtube_id,time_start,time_end,split"]
    for i, (label, split) in enumerate([("abseiling", "train"), ("abseiling", "train"), ("air drumming", "train"),
                                        ("air drumming", "val"), ("abseiling", "val")]):
        yid, start = f"yt{i:03d}Ab-x_", 10 * i
        name = f"{yid}_{start:06d}_{start + 10:06d}.mp4"
        sub = os.path.join(videos, split, label) if split == "train" else videos
        write_video(os.path.join(sub, name), noise_frames(frames, 48, 64, seed=200 + i))
        rows.append(f'"{label}",{yid},{start},{start + 10},{split}')
    rows.append("abseiling,missingVid01,0,10,train")
    with open(csv_path, "w") as fh:
        fh.write("\n".join(rows) + "\n")
    return videos, csv_path


def make_folder(root: str, frames: int = 20, splits: bool = True) -> str:
    """``<split>/<class>/*.mp4`` (or ``<class>/*.mp4``) with 2 classes."""
    for si, split in enumerate(("train", "val") if splits else ("",)):
        for ci, cls in enumerate(("jump", "run")):
            for i in range(2):
                path = os.path.join(root, split, cls, f"{cls}{i}.mp4")
                write_video(path, noise_frames(frames, 48, 64, seed=300 + si * 100 + ci * 10 + i))
    return root


# --------------------------------------------------------------------------------------------
# A TCP proxy that can make an endpoint unreachable
# --------------------------------------------------------------------------------------------

@dataclass
class FlakyProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>, and can make the endpoint unreachable.

    The proxy binds its one listener itself (port 0) and keeps it for its whole life. During an
    outage every open connection is cut and every new one is reset as soon as it is accepted, as a
    dead endpoint behaves for the client. :meth:`arm_outage` starts the outage at the next
    connection, so it lands on the reads that follow, whatever their timing."""

    target_port: int
    rate: float = 0.0                   # bytes/s per connection and direction (0 = unlimited)
    port: int = 0
    connections: int = 0                # forwarded
    refused: int = 0                    # reset during an outage
    outage_started: threading.Event = field(default_factory=threading.Event)
    outage_started_at: float = 0.0
    _outage_s: float = 0.0              # armed: an outage of this length starts at the next connection
    _down_until: float = 0.0
    _open: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                if self._outage_s:
                    self._begin_outage(self._outage_s)
                down = time.monotonic() < self._down_until
                if down:
                    self.refused += 1
            if down:
                reset_connection(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                reset_connection(client)
                continue
            with self._lock:
                self._open += [client, upstream]
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            src.settimeout(None)
            while data := src.recv(1 << 14):
                dst.sendall(data)
                if self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _begin_outage(self, seconds: float) -> None:
        """(Lock held.) Cut every open connection; refuse new ones for ``seconds``."""
        self._outage_s = 0.0
        self.outage_started_at = time.monotonic()
        self._down_until = self.outage_started_at + seconds
        for s in self._open:
            reset_connection(s)
        self._open = []
        self.outage_started.set()

    def outage(self, seconds: float) -> None:
        """Make the endpoint unreachable now, for ``seconds``."""
        with self._lock:
            self._begin_outage(seconds)

    def arm_outage(self, seconds: float) -> None:
        """Make the endpoint unreachable for ``seconds`` from the next connection on (that one included)."""
        with self._lock:
            self._outage_s = seconds

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


def reset_connection(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): the peer sees the connection fail at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
