"""Ingest transcode of the project against the ffmpeg command line, in CPU seconds per video.

    python bench/ingest_throughput.py [--videos 40] [--large-videos 40] [--frames 150] [--repeats 3]
                                      [--large-size 640x360] [--quality-videos 3] [--keep DIR] [--quick]

Two source sets are generated with the project's own writer (dynamonet.data.encode.encode_video),
a random textured canvas (dynamonet.data.synthetic.random_canvas) panning at 1-3 px/frame, in
``<class>/<video>`` folders:

    ucf101_like    MPEG-4 part 2 AVI, 320x240, 25 fps, 1.2 Mbit/s, GOP 250 (like UCF101's files)
    h264_640x360   H.264 mp4, 640x360 (--large-size), 25 fps, crf 20, GOP 250

Both sides make the canonical format (H.264 mp4, short side 128, even dims, keyint 16, no
B-frames, no scene-cut keyframes, closed GOP, crf 23, preset veryfast, tune fastdecode, 1 thread):

  project     ``python pipelines/prepare_data.py --source folder --executor local --no-progress
              --short-side 128``: one process for the whole set, Parquet shards written, the
              interpreter's start-up included (as a user pays it; ``prepare_data.py --help`` is
              measured alone and reported, and a ratio without it, but the target keeps it);
  ffmpeg CLI  one ``ffmpeg -threads 1 -i SRC -an -vf scale=-2:128 -c:v libx264 ... -threads 1``
              process per video, one after the other, as a user would script it (imageio-ffmpeg's
              binary).

CPU is user + sys of the child processes (os.wait4), wall is the whole command (project) or the
whole loop (ffmpeg). The two sides run interleaved ``--repeats`` times, the first side alternating.
Target, checked on the unrounded median of the per-repeat ratios with bench/_verdict.py:
ffmpeg CPU per video / project CPU per video (= project throughput per core over ffmpeg's) >= 0.9
on each set. Quality, reported without a target: for ``--quality-videos`` videos per set, both
outputs (decoded to rgb24) are compared with a Lanczos resize of the source frames (mean per-frame
PSNR). The two sides resize differently on purpose: the canonical format keeps swscale's area
filter (unchanged; one scaler per video instead of one per frame gives the same frames, bit for
bit), the ffmpeg CLI uses its scale filter's bicubic default, which is sharper and so closer to a
Lanczos reference (about +0.5 dB here) for about 10 % more CPU at 640x360. Output bytes per
video are reported. Progress on stderr; one JSON object
on stdout (medians, spread = min/max over the repeats).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _verdict import check, summarize

from dynamonet.data.encode import TranscodeSettings, encode_video
from dynamonet.data.synthetic import random_canvas

ROOT = Path(__file__).resolve().parents[1]
SHORT, GOP, CRF, PRESET, TUNE = 128, 16, 23, "veryfast", "fastdecode"
PREPARE = ROOT / "pipelines" / "prepare_data.py"
RATIO_TARGET = 0.9
SETTINGS = (f"H.264 mp4 yuv420p, short side {SHORT} (even dims), keyint {GOP} (min-keyint {GOP}, scenecut 0, "
            f"closed GOP), no B-frames, crf {CRF}, preset {PRESET}, tune {TUNE}, 1 thread; audio dropped; "
            "resize: project swscale AREA, ffmpeg CLI scale filter defaults")


def _log(msg: str) -> None:
    print(f"[ingest_throughput {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _ffmpeg() -> tuple[str, str]:
    """(ffmpeg binary, its version) from imageio-ffmpeg; SystemExit with a one-line hint if absent."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise SystemExit("ingest_throughput: error: the ffmpeg CLI baseline needs imageio-ffmpeg: "
                         "pip install imageio-ffmpeg") from None
    return imageio_ffmpeg.get_ffmpeg_exe(), imageio_ffmpeg.get_ffmpeg_version()


# ------------------------------------------------------------------------------------------
# Source videos
# ------------------------------------------------------------------------------------------

def _bounce(p: float, span: int) -> int:
    """Position ``p`` folded into [0, span] (back and forth, no jumps)."""
    if span <= 0:
        return 0
    m = p % (2 * span)
    return int(round(m if m <= span else 2 * span - m))


def panning_video(seed: int, width: int, height: int, frames: int, **encode: object) -> bytes:
    """A textured scene panning at 1-3 px/frame in a random direction, encoded by ``encode_video``."""
    rng = np.random.default_rng(seed)
    size = int(math.ceil(1.5 * max(width, height) / 2) * 2)
    canvas = (random_canvas(rng, size) * 255).astype(np.uint8)
    speed, angle = rng.uniform(1.0, 3.0), rng.uniform(0.0, 2 * math.pi)
    vx, vy = speed * math.cos(angle), speed * math.sin(angle)
    x0, y0 = rng.uniform(0, size - width), rng.uniform(0, size - height)

    def frame(t: int) -> np.ndarray:
        x, y = _bounce(x0 + vx * t, size - width), _bounce(y0 + vy * t, size - height)
        return canvas[y:y + height, x:x + width]

    return encode_video((frame(t) for t in range(frames)), 25, **encode)  # type: ignore[arg-type]


def write_sources(root: Path, name: str, videos: int, frames: int, width: int, height: int) -> list[Path]:
    """``videos`` source files of set ``name`` under ``root/<class>/``; their paths, sorted."""
    if name == "ucf101_like":
        ext, enc = "avi", {"codec": "mpeg4", "container_format": "avi", "bit_rate": 1_200_000, "gop": 250}
    else:
        ext, enc = "mp4", {"codec": "libx264", "container_format": "mp4", "crf": 20, "gop": 250}
    paths = []
    for i in range(videos):
        path = root / f"class{i % 2}" / f"v_{i:03d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(panning_video(1000 * len(name) + i, width, height, frames, **enc))
        paths.append(path)
    return sorted(paths)


# ------------------------------------------------------------------------------------------
# Timed runs
# ------------------------------------------------------------------------------------------

def run_timed(cmd: list[str], log: Path) -> tuple[float, float]:
    """(CPU s = user + sys of the child and its waited-for descendants, wall s) of one command;
    RuntimeError with the end of its output if it fails."""
    start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        with open(log, "rb") as fh:
            fh.seek(start)
            tail = fh.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited with {proc.returncode}:\n{tail}")
    return usage.ru_utime + usage.ru_stime, wall


def project_cmd(src: Path, out: Path) -> list[str]:
    """The project's ingest of a class-folder tree, on this machine, as a user runs it."""
    return [sys.executable, str(PREPARE), "--source", "folder", "--input", str(src), "--output", str(out),
            "--executor", "local", "--no-progress", "--short-side", str(SHORT)]


def ffmpeg_cmd(ffmpeg: str, src: Path, out: Path, width: int, height: int) -> list[str]:
    """The ffmpeg CLI equivalent of the canonical transcode of one video."""
    scale = f"scale=-2:{SHORT}" if width >= height else f"scale={SHORT}:-2"
    return [ffmpeg, "-nostdin", "-loglevel", "error", "-threads", "1", "-i", str(src), "-an", "-vf", scale,
            "-c:v", "libx264", "-preset", PRESET, "-tune", TUNE, "-crf", str(CRF),
            "-x264-params", f"keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=0:open-gop=0",
            "-threads", "1", "-y", str(out)]


def _div(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _per_video(cpu: float, wall: float, n: int) -> dict[str, float | None]:
    return {"cpu_s_per_video": _div(cpu, n), "wall_s_per_video": _div(wall, n), "cores": _div(cpu, wall)}


def run_project(src: Path, out: Path, n: int, log: Path) -> dict[str, float | None]:
    """One project ingest of the set into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    cpu, wall = run_timed(project_cmd(src, out), log)
    return {"cpu_s": cpu, "wall_s": wall} | _per_video(cpu, wall, n)


def run_ffmpeg(ffmpeg: str, sources: list[Path], src_root: Path, out: Path, size: tuple[int, int], log: Path
               ) -> dict[str, float | None]:
    """One ffmpeg process per video, sequentially, into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cpu, t0 = 0.0, time.perf_counter()
    for path in sources:
        dst = out / (path.relative_to(src_root).with_suffix(".mp4").as_posix().replace("/", "__"))
        cpu += run_timed(ffmpeg_cmd(ffmpeg, path, dst, *size), log)[0]
    wall = time.perf_counter() - t0
    return {"cpu_s": cpu, "wall_s": wall} | _per_video(cpu, wall, len(sources))


def project_rows(out: Path) -> dict[str, bytes]:
    """The project's canonical videos by source path (relative, POSIX), from the Parquet shards."""
    import pyarrow.parquet as pq

    rows: dict[str, bytes] = {}
    for shard in sorted(out.rglob("*.parquet")):
        table = pq.read_table(shard, columns=["source", "video"])
        rows.update(zip(table.column("source").to_pylist(), table.column("video").to_pylist(), strict=True))
    return rows


# ------------------------------------------------------------------------------------------
# Quality
# ------------------------------------------------------------------------------------------

def _rgb_interpolation() -> tuple[Interpolation, str]:
    """Lanczos with accurate rounding and full chroma interpolation if this PyAV takes the flags."""
    flags = Interpolation.LANCZOS | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
    try:
        VideoReformatter().reformat(av.VideoFrame(16, 16, "yuv420p"), 8, 8, format="rgb24", interpolation=flags)
    except (TypeError, ValueError, av.FFmpegError):
        return Interpolation.LANCZOS, "LANCZOS"
    return flags, "LANCZOS|ACCURATE_RND|FULL_CHR_H_INT"


def rgb_frames(src: str | bytes, interp: Interpolation, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Frames of a video as rgb24 arrays, resized to ``size`` = (width, height) if given."""
    scaler = VideoReformatter()
    with av.open(io.BytesIO(src) if isinstance(src, bytes) else src) as container:
        for frame in container.decode(video=0):
            width, height = size or (frame.width, frame.height)
            yield scaler.reformat(frame, width, height, format="rgb24", interpolation=interp).to_ndarray()


def psnr(ref: list[np.ndarray], test: list[np.ndarray]) -> float:
    """Mean over frames of the per-frame PSNR (dB, 8 bit, capped at 100) of the common frames."""
    values = []
    for a, b in zip(ref, test, strict=False):
        mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
        values.append(100.0 if mse == 0 else min(100.0, 10 * math.log10(255.0 ** 2 / mse)))
    return statistics.fmean(values) if values else float("nan")


def quality(sources: list[Path], src_root: Path, rows: dict[str, bytes], ff_out: Path, interp: Interpolation
            ) -> dict[str, object]:
    """PSNR of both outputs against a Lanczos resize of the source frames, on the first videos."""
    per_video = []
    for path in sources:
        rel = path.relative_to(src_root).as_posix()
        outputs = {"project": rows[rel], "ffmpeg": (ff_out / rel.replace("/", "__")).with_suffix(".mp4").read_bytes()}
        entry: dict[str, object] = {"source": rel}
        for side, data in outputs.items():
            test = list(rgb_frames(data, interp))
            height, width = test[0].shape[:2]
            ref = list(rgb_frames(str(path), interp, (width, height)))
            entry[side] = {"psnr_db": psnr(ref, test), "frames": len(test), "source_frames": len(ref),
                           "size": [width, height]}
        per_video.append(entry)
    mean = {side: statistics.fmean(e[side]["psnr_db"] for e in per_video) if per_video else None  # type: ignore[index]
            for side in ("project", "ffmpeg")}
    return {"psnr_db_project": mean["project"], "psnr_db_ffmpeg": mean["ffmpeg"],
            "videos": [{"source": e["source"]} | {side: {k: round(v, 3) if isinstance(v, float) else v
                                                         for k, v in e[side].items()}  # type: ignore[union-attr]
                                                  for side in ("project", "ffmpeg")} for e in per_video]}


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------

def _spread(values: list[float | None]) -> dict[str, float] | None:
    got = [v for v in values if v is not None]
    if not got:
        return None
    return {"median": round(statistics.median(got), 3), "min": round(min(got), 3), "max": round(max(got), 3)}


def _side_summary(runs: list[dict[str, float | None]], bytes_per_video: float | None) -> dict[str, object]:
    """Spreads of one side's per-repeat readings."""
    return {k: _spread([r[k] for r in runs]) for k in runs[0]} | {
        "bytes_per_video": None if bytes_per_video is None else round(bytes_per_video)}


def _versions() -> dict[str, object]:
    return {"pyav": av.__version__,
            "pyav_libav": {k: ".".join(map(str, v)) for k, v in av.library_versions.items()}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=None, help="ucf101_like source videos (default 40; 0 = skip)")
    p.add_argument("--large-videos", type=int, default=None, help="h264 large source videos (default 40; 0 = skip)")
    p.add_argument("--large-size", default="640x360", help="WIDTHxHEIGHT of the H.264 sources (even)")
    p.add_argument("--frames", type=int, default=None, help="frames per source video, 25 fps (default 150)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved measurements of each side (default 3)")
    p.add_argument("--quality-videos", type=int, default=None, help="videos per set for the PSNR check (default 3)")
    p.add_argument("--keep", default="", metavar="DIR", help="work in DIR and keep it (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 + 2 videos, 30 frames, 1 repeat, 1 PSNR video")
    return p


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults (or the --quick sizes) for the options left unset; sizes checked."""
    quick = {"videos": 4, "large_videos": 2, "frames": 30, "repeats": 1, "quality_videos": 1}
    full = {"videos": 40, "large_videos": 40, "frames": 150, "repeats": 3, "quality_videos": 3}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        width, height = (int(v) for v in args.large_size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"ingest_throughput: error: --large-size: WIDTHxHEIGHT, got {args.large_size!r}") from None
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise SystemExit(f"ingest_throughput: error: --large-size: even dimensions >= 2, got {args.large_size!r}")
    if args.frames < 1 or args.repeats < 1 or min(args.videos, args.large_videos, args.quality_videos) < 0:
        raise SystemExit("ingest_throughput: error: --frames and --repeats >= 1, video counts >= 0")
    args.large_wh = (width, height)
    return args


def measure(args: argparse.Namespace, work: Path, ffmpeg: str) -> dict[str, object]:
    """Generate the sets, run both sides interleaved, check quality; the report."""
    sets = {"ucf101_like": (args.videos, (320, 240), "MPEG-4 part 2 AVI 320x240, 25 fps, 1.2 Mbit/s, GOP 250"),
            f"h264_{args.large_wh[0]}x{args.large_wh[1]}": (
                args.large_videos, args.large_wh,
                f"H.264 mp4 {args.large_wh[0]}x{args.large_wh[1]}, 25 fps, crf 20, GOP 250")}
    sets = {name: s for name, s in sets.items() if s[0] > 0}
    sources: dict[str, list[Path]] = {}
    for name, (n, (width, height), _) in sets.items():
        _log(f"writing {n} {name} sources ({args.frames} frames)")
        sources[name] = write_sources(work / name / "src", name, n, args.frames, width, height)

    _log("project start-up: prepare_data.py --help")
    startup = [run_timed([sys.executable, str(PREPARE), "--help"], work / "startup.log") for _ in range(args.repeats)]
    runs: dict[str, dict[str, list]] = {name: {"project": [], "ffmpeg": []} for name in sets}
    for r in range(args.repeats):
        for name, (n, size, _) in sets.items():
            base, log = work / name, work / name / "run.log"
            for side in (("project", "ffmpeg") if r % 2 == 0 else ("ffmpeg", "project")):
                runs[name][side].append(
                    run_project(base / "src", base / f"project_r{r}", n, log) if side == "project"
                    else run_ffmpeg(ffmpeg, sources[name], base / "src", base / f"ffmpeg_r{r}", size, log))
                got = runs[name][side][-1]
                _log(f"repeat {r + 1}/{args.repeats} {name} {side}: {got['cpu_s']:.2f} CPU-s, {got['wall_s']:.2f} s")

    interp, interp_name = _rgb_interpolation()
    report_sets: dict[str, object] = {}
    targets = []
    for name, (n, _, desc) in sets.items():
        base = work / name
        rows = project_rows(base / "project_r0")
        if len(rows) != n:
            raise RuntimeError(f"{name}: the project wrote {len(rows)} of {n} videos (see {base}/project_r0)")
        ff_files = sorted((base / "ffmpeg_r0").glob("*.mp4"))
        ratios = [_div(f["cpu_s_per_video"], p["cpu_s_per_video"])  # type: ignore[arg-type]
                  for p, f in zip(runs[name]["project"], runs[name]["ffmpeg"], strict=True)]
        _log(f"{name}: PSNR of {min(n, args.quality_videos)} videos against a {interp_name} resize of the source")
        q = quality(sources[name][:args.quality_videos], base / "src", rows, base / "ffmpeg_r0", interp)
        startup_cpu = statistics.median(c for c, _ in startup)
        no_startup = [_div(f["cpu_s_per_video"], (p["cpu_s"] - startup_cpu) / n)  # type: ignore[arg-type,operator]
                      for p, f in zip(runs[name]["project"], runs[name]["ffmpeg"], strict=True)]
        got = [v for v in ratios if v is not None]
        ratio = statistics.median(got) if got else None
        report_sets[name] = {
            "source": desc, "videos": n, "frames_per_video": args.frames,
            "project": _side_summary(runs[name]["project"], _div(sum(map(len, rows.values())), n)),
            "ffmpeg_cli": _side_summary(runs[name]["ffmpeg"],
                                        _div(sum(f.stat().st_size for f in ff_files), len(ff_files))),
            "ratio_throughput_per_core": _spread(ratios),
            "ratio_if_startup_excluded": _spread(no_startup),
            "psnr_db_project": None if q["psnr_db_project"] is None else round(q["psnr_db_project"], 3),
            "psnr_db_ffmpeg": None if q["psnr_db_ffmpeg"] is None else round(q["psnr_db_ffmpeg"], 3),
            "quality_videos": q["videos"]}
        targets.append(check(f"{name}: project throughput per core / ffmpeg CLI >= {RATIO_TARGET} "
                             "(ffmpeg CPU-s per video / project CPU-s per video, median of repeats)",
                             ratio, ">=", RATIO_TARGET))
        diff = (None if q["psnr_db_project"] is None or q["psnr_db_ffmpeg"] is None
                else q["psnr_db_project"] - q["psnr_db_ffmpeg"])  # type: ignore[operator]
        targets.append(check(f"{name}: project PSNR - ffmpeg CLI PSNR, dB (reported: area filter vs ffmpeg's "
                             f"bicubic default, against a {interp_name} resize of the source)", diff, None, None))
    setup = {"settings": SETTINGS, "transcode": TranscodeSettings(short_side=SHORT).describe(),
             "project_cmd": " ".join(project_cmd(Path("SRC"), Path("OUT"))[1:]),
             "ffmpeg_cmd": " ".join(ffmpeg_cmd("FFMPEG", Path("SRC"), Path("OUT.mp4"), 2, 1)),
             "repeats": args.repeats, "frames_per_video": args.frames, "quality_videos": args.quality_videos,
             "psnr_reference": f"source frames resized to the output size, swscale {interp_name}, rgb24",
             "project_startup_cpu_s": _spread([c for c, _ in startup]),
             "project_startup_wall_s": _spread([w for _, w in startup]),
             "ratio_if_startup_excluded": "reported only: the project's CPU less the median start-up CPU",
             "cpu": "user + sys of the child processes (os.wait4); project: the whole prepare_data.py run"}
    return {"setup": setup, "sets": report_sets, **summarize(targets)}


def main(argv: list[str] | None = None) -> int:
    args = _resolve(build_parser().parse_args(argv))
    ffmpeg, ffmpeg_version = _ffmpeg()
    t0 = time.perf_counter()
    if args.keep:
        work = Path(args.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
        result = measure(args, work, ffmpeg)
    else:
        with tempfile.TemporaryDirectory(prefix="dynamonet-ingest-bench-") as tmp:
            result = measure(args, Path(tmp), ffmpeg)
    result["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                         "python": platform.python_version(), "ffmpeg": ffmpeg_version, **_versions()}
    result["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
