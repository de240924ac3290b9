"""Writing image files: atomically, so a crash or a refused import never leaves half a file behind."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from taskalign.runtime import atomic_path


def full_suffix(name: str) -> str:
    """'.nii.gz' for 'x.nii.gz', else the last suffix ('.mha')."""
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def write_image(image: sitk.Image, path: Path, compress: bool = True) -> Path:
    """Write `image` to `path` atomically. SimpleITK picks the format from the extension, so it writes a sibling
    that keeps the extension, which then takes the place of `atomic_path`'s temporary file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        staged = tmp.with_name(tmp.name + full_suffix(path.name))
        try:
            sitk.WriteImage(image, str(staged), compress)
            os.replace(staged, tmp)
        finally:
            staged.unlink(missing_ok=True)
    return path


def _sitk_reason(error: Exception) -> str:
    text = str(error)
    if "sitk::ERROR:" in text:
        text = text.split("sitk::ERROR:", 1)[1]
    text = " ".join(text.split())
    return text[:300]


def unreadable_message(path: Path, what: str, error: Exception) -> str:
    """The user's message for a file SimpleITK cannot read. ITK appends the C library's last error, which for a
    truncated or corrupt file that exists is a stale "No such file or directory"; that line is dropped."""
    reason = _sitk_reason(error)
    if path.exists():
        reason = reason.replace("Reason: No such file or directory", "").strip()
        return f"{what} unreadable: the file is truncated or corrupt (SimpleITK: {reason})"
    return f"{what} unreadable ({reason})"
