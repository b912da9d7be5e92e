"""Video files for ``tools/infer.py`` and ``python -m hrnet_mm_runtime``: frames read with OpenCV, annotated
frames written to a new video file atomically.

:func:`probe` checks a file (:class:`VideoInfo`), so that one OpenCV cannot open or decode (a missing codec, not
a video) is one :class:`VideoError` line; :func:`read_video` yields its BGR ``uint8`` frames.
:class:`VideoWriter` writes to a temporary file beside the target and renames it into place only when every
frame is written, so an interrupted run leaves nothing half-written.
"""
from __future__ import annotations

import os
import os.path as osp
import tempfile
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv')


def _quiet_ffmpeg() -> None:
    """FFmpeg's own log lines (``moov atom not found`` and the like) off unless the user set a level: the
    tools report an unreadable video in one line of their own."""
    os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')


class VideoError(ValueError):
    """A video file that cannot be read or written (the message is one line naming the file and the fix)."""


@dataclass(frozen=True)
class VideoInfo:
    """A video's frame rate, frame count (as the container states it; 0 when unknown) and frame size."""

    fps: float
    frames: int
    width: int
    height: int


def is_video(path: str) -> bool:
    """Whether ``path`` names a video file by its extension."""
    return path.lower().endswith(VIDEO_EXTENSIONS)


def probe(path: str) -> VideoInfo:
    """Opens ``path`` and decodes its first frame.

    Raises:
        VideoError: The file is missing, OpenCV cannot open it (no decoder for its codec, or not a video), or
            it has no frame that decodes.
    """
    import cv2

    if not osp.isfile(path):
        raise VideoError(f'video file not found: {path}')
    _quiet_ffmpeg()
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoError(f'cannot open video {path}: OpenCV has no decoder for it (unknown codec or '
                             'container, or not a video); convert it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4')
        ok, frame = cap.read()
        if not ok or frame is None:
            raise VideoError(f'cannot read video {path}: no frame decodes (damaged file or unsupported codec)')
        fps = cap.get(cv2.CAP_PROP_FPS)
        return VideoInfo(fps=fps if fps and fps > 0 else 25.0, frames=max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0),
                         width=frame.shape[1], height=frame.shape[0])
    finally:
        cap.release()


def read_video(path: str) -> Iterator[np.ndarray]:
    """The BGR ``(H, W, 3)`` frames of ``path``, in order; :func:`probe` it first for a clear error on a file that
    does not decode.

    Raises:
        VideoError: OpenCV cannot open the file.
    """
    import cv2

    _quiet_ffmpeg()
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoError(f'cannot open video {path}')
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


class VideoWriter:
    """Writes BGR frames of one size to ``path`` (MPEG-4 Part 2, ``mp4v``, which every OpenCV build writes).

    Use as a context manager: the file appears at ``path`` only when the block ends without an exception.
    """

    def __init__(self, path: str, fps: float, width: int, height: int) -> None:
        import cv2

        self.path, self.size, self.frames = path, (width, height), 0
        os.makedirs(osp.dirname(path) or '.', exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=osp.basename(path) + '.', suffix='.part.mp4',
                                        dir=osp.dirname(path) or '.')
        os.close(fd)
        self.writer = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*'mp4v'), fps, (width, height))
        if not self.writer.isOpened():
            os.unlink(self.tmp)
            raise VideoError(f'cannot write video {path}: OpenCV has no mp4v encoder in this build')

    def write(self, frame: np.ndarray) -> None:
        """Appends one BGR frame (resized to the video's size if it differs)."""
        import cv2

        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size)
        self.writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def __enter__(self) -> 'VideoWriter':
        return self

    def __exit__(self, exc_type: Optional[type], *_: object) -> None:
        self.writer.release()
        if exc_type is None and self.frames:
            os.replace(self.tmp, self.path)
        elif osp.exists(self.tmp):
            os.unlink(self.tmp)
