"""The storage path of the runs, on any filesystem pyarrow reaches: a local path, an NFS mount or
``s3://bucket/prefix`` (credentials and endpoint from the usual ``AWS_*`` environment variables).

A run's folder, ``<storage>/<run.name>``, holds its checkpoints, the MLflow outbox and a few small
files; everything here takes and returns locations as strings (a path or a URI), so the same
code serves every kind of storage.
"""
from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs


def run_path(storage: str, run_name: str) -> str:
    """``<storage>/<run_name>``: Ray Train's experiment folder of the run."""
    return f"{str(storage).rstrip('/')}/{run_name}"


def filesystem(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``location`` (a URI, or a local path made absolute) and the path in it."""
    location = str(location)
    if "://" not in location:
        location = os.path.abspath(location)
    return pafs.FileSystem.from_uri(location)


def read_text(location: str) -> str | None:
    """The text of the file at ``location``, or None when there is no such file."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def write_text(location: str, text: str) -> None:
    """Write ``text`` to the file at ``location``, whole or not at all: it is written beside it under
    a temporary name and then moved in place (a rename on a local or NFS filesystem; on S3 an object
    appears only once its upload completes)."""
    fs, path = filesystem(location)
    folder, name = path.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode("utf-8"))
    fs.move(tmp, path)


def list_files(folder: str, suffix: str = "") -> list[str]:
    """The locations of the files in ``folder`` whose names end with ``suffix``, sorted by name
    (none when the folder does not exist)."""
    fs, path = filesystem(folder)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
                   and not i.base_name.startswith("."))
    return [f"{str(folder).rstrip('/')}/{n}" for n in names]


def delete_file(location: str) -> None:
    fs, path = filesystem(location)
    fs.delete_file(path)


def is_folder(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_run_file(storage: str, run_name: str, filename: str) -> str | None:
    """The text of ``<storage>/<run_name>/<filename>``, or None when it does not exist."""
    return read_text(f"{run_path(storage, run_name)}/{filename}")


def write_run_file(storage: str, run_name: str, filename: str, text: str) -> None:
    write_text(f"{run_path(storage, run_name)}/{filename}", text)
