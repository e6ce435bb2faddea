"""Where the dataset files are: the search path, the cache, downloads and SHA-256 checks.

`locate` finds one dataset's files; `toolkit.data._datasets` parses them. Where the files are looked
for, in order (the first complete set wins):

1. the `data_dir` argument (the CLI's `--data-dir`): when given, the only place looked in
   (a run records it, so the files must come from there; nothing is downloaded);
2. the directory in `$TOOLKIT_DATA_DIR`;
3. the user cache, `platformdirs.user_cache_dir("tempered-dp-toolkit")`;
4. for Fashion-MNIST, the Debian package directory `/usr/share/datasets/fashion-mnist`.

In each, the files may lie directly or in a subfolder named after the dataset. MNIST and
Fashion-MNIST are the four IDX files, gzipped or raw; CIFAR-10 is `cifar-10-python.tar.gz` or
its extracted `cifar-10-batches-py/` folder. If nothing is found and `download=True`, the
canonical files are downloaded into `<cache>/<name>/`.

Checksum policy: a download is always checked against the published SHA-256 before it is moved
into the cache. Files found in the cache are checked on every load. Files in a directory the
user chose (or in the Debian directory, which dpkg manages) are only validated structurally
(by `toolkit.data._datasets`), unless `verify=True`. Published checksums exist for the `.gz`
IDX files and the CIFAR tarball only; raw IDX files and extracted CIFAR batches are validated
structurally.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

import platformdirs

from toolkit.base import ToolkitError, default_mode

DATASETS = ("mnist", "fashion-mnist", "cifar10")
ENV_VAR = "TOOLKIT_DATA_DIR"

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")  # test last

_BASE_URL = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
}
# Accepted SHA-256 of each downloadable file; its keys are what a download fetches. The canonical
# digests are the ones TFDS, Keras and torchvision publish. The Debian Fashion-MNIST files are the
# canonical ones with the gzip header normalised (name dropped, mtime set) by the Debian build,
# so they differ byte-wise but hold the same data.
_SHA256: dict[str, dict[str, tuple[str, ...]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
    },
    "fashion-mnist": {  # (canonical, Debian dataset-fashion-mnist 0.0~git20200523.55506a9-1)
        "train-images-idx3-ubyte.gz": (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        ),
        "train-labels-idx1-ubyte.gz": (
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        ),
        "t10k-images-idx3-ubyte.gz": (
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        ),
    },
    "cifar10": {
        CIFAR_ARCHIVE: ("6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",),
    },
}
_SYSTEM_DIRS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}
_APT_PACKAGE = {"fashion-mnist": "dataset-fashion-mnist"}


@dataclasses.dataclass(frozen=True)
class DataFiles:
    """One dataset's complete set of files, as `locate` found (or downloaded) them.

    Attributes:
        name: One of `DATASETS`.
        paths: (Fashion-)MNIST: the four IDX files in the order of `IDX_STEMS` (train images,
            train labels, test images, test labels). CIFAR-10: the archive alone, or the six
            batches in the order of `CIFAR_BATCHES` (test last).
        check: Whether `read` checks a file's SHA-256 against the published ones.
        strict: Whether, when checking, `read` refuses a file with no published SHA-256.
    """

    name: str
    paths: tuple[Path, ...]
    check: bool
    strict: bool

    @property
    def source(self) -> str:
        """The directory the files lie in."""
        return str(self.paths[0].parent)

    def read(self, path: Path) -> bytes:
        """The bytes of `path` (one of `paths`), checked as `check` and `strict` say.

        Raises:
            ToolkitError: If the file cannot be read, or a check fails (the message says
                which file and how to replace it).
        """
        data = read_bytes(path)
        if not self.check:
            return data
        accepted = _SHA256[self.name].get(path.name)
        if accepted is None:
            if self.strict:
                raise ToolkitError(
                    f"{path}: no published SHA-256 for this file, so verify=True cannot check "
                    f"it; use the canonical {', '.join(_SHA256[self.name])} or verify=False"
                )
            return data
        digest = hashlib.sha256(data).hexdigest()
        if digest not in accepted:
            raise ToolkitError(
                f"{path}: SHA-256 {digest} does not match the published {' or '.join(accepted)}; "
                f"replace it with {_BASE_URL[self.name]}{path.name} (deleting it from the cache "
                f"makes the next load download it)"
            )
        return data


def locate(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool | None = None,
) -> DataFiles:
    """Finds a dataset's files in the first place that holds them (see the module docstring).

    Args:
        name: One of `DATASETS`.
        data_dir: The directory that holds the files; when given, no other place is
            searched and nothing is downloaded.
        download: Whether to download the canonical files into the cache if none are found.
        verify: Whether the files' SHA-256 digests are to be checked when read. `None` checks
            files in the cache only (downloads included); `True` checks every file and refuses
            ones without a published digest; `False` checks none. Downloads are always checked
            as they arrive.

    Returns:
        The files, with the checks `DataFiles.read` is to make on them.

    Raises:
        ToolkitError: For an unknown name, a search directory that does not exist, a partial
            set outside the cache, a failed or corrupt download, or files not found with
            `download=False` (the message says where it looked and how to get them).
    """
    if name not in DATASETS:
        raise ToolkitError(f"dataset={name!r} is unknown; choose one of {', '.join(DATASETS)}")
    strict = verify is True
    places = _search_path(name, data_dir)
    if data_dir is not None:  # the user's choice, recorded by the run: no fallback
        files = _find(name, places[0][1], allow_partial=False)
        if files is None:
            raise ToolkitError(
                f"data_dir={os.fspath(data_dir)} holds no {name} files "
                f"({', '.join(_SHA256[name])}, there or in {name}/); point it at the "
                "directory holding them, or leave it out to search the usual places."
            )
        return DataFiles(name, tuple(files), check=verify is True, strict=strict)
    for _, base, cache in places:
        files = _find(name, base, allow_partial=cache)
        if files is not None:
            check = verify if verify is not None else cache
            return DataFiles(name, tuple(files), check=check, strict=strict)
    looked = ", ".join(where for where, _, _ in places)
    if not download:
        raise ToolkitError(f"{name} not found in {looked} and download=False; {_how_to_get(name)}")
    target = _cache_root() / name
    for filename, accepted in _SHA256[name].items():
        if not (target / filename).is_file():
            url = _BASE_URL[name] + filename
            try:
                _download(url, target / filename, accepted)
            except (OSError, http.client.HTTPException) as e:
                raise ToolkitError(
                    f"{name} not found in {looked} and downloading {url} failed "
                    f"({_one_line(e)}); {_how_to_get(name)}"
                ) from e
    files = _find(name, target, allow_partial=False)
    assert files is not None, "every downloadable file is in place"
    return DataFiles(name, tuple(files), check=verify is not False, strict=strict)


def read_bytes(path: Path) -> bytes:
    """The bytes of `path`; a `ToolkitError` naming it if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise ToolkitError(f"cannot read {path} ({_one_line(e)}); check the path") from e


def _cache_root() -> Path:
    return Path(platformdirs.user_cache_dir("tempered-dp-toolkit"))


def _search_path(name: str, data_dir: str | os.PathLike | None) -> list[tuple[str, Path, bool]]:
    """(description, base directory, is the cache) for each place to look, in order."""
    places = []
    for label, value in (("data_dir", data_dir), (ENV_VAR, os.environ.get(ENV_VAR) or None)):
        if value is None:
            continue
        base = Path(value).expanduser()
        if not base.is_dir():
            raise ToolkitError(
                f"{label}={os.fspath(value)} is not a directory; "
                f"point it at the directory holding the {name} files"
            )
        places.append((f"{label}={base}", base, False))
    places.append((f"the cache {_cache_root()}", _cache_root(), True))
    places += [(d, Path(d), False) for d in _SYSTEM_DIRS.get(name, ())]
    return places


def _layouts(name: str, d: Path) -> list[list[tuple[Path, ...]]]:
    """The ways a dataset's files may lie in `d`: lists of slots, each the accepted paths of one."""
    if name == "cifar10":
        return [
            [(d / _CIFAR_FOLDER / b,) for b in CIFAR_BATCHES],
            [(d / b,) for b in CIFAR_BATCHES],
            [(d / CIFAR_ARCHIVE,)],
        ]
    return [[(d / f"{stem}.gz", d / stem) for stem in IDX_STEMS]]


def _find(name: str, base: Path, *, allow_partial: bool) -> list[Path] | None:
    """The dataset's files in `base` or `base/name`, or None; raises on an incomplete set."""
    partial = None
    for d in (base, base / name):
        for layout in _layouts(name, d):
            hits = [next((p for p in slot if p.is_file()), None) for slot in layout]
            if all(hits):
                return hits
            if any(hits) and partial is None:
                partial = (
                    d,
                    [slot[0].name for slot, hit in zip(layout, hits, strict=True) if hit is None],
                )
    if partial is not None and not allow_partial:
        d, missing = partial
        raise ToolkitError(
            f"{d} holds only part of {name}: {', '.join(missing)} missing; "
            f"add the missing files (from {_BASE_URL[name]}) or remove the partial set"
        )
    return None


def _how_to_get(name: str) -> str:
    files = ", ".join(_SHA256[name])
    hint = f"download {files} from {_BASE_URL[name]} into {_cache_root() / name}"
    hint += f" or into a directory passed with --data-dir or {ENV_VAR}"
    if name in _APT_PACKAGE:
        hint += f", or run `apt install {_APT_PACKAGE[name]}`"
    return hint


def _download(url: str, dest: Path, accepted: tuple[str, ...]) -> None:
    """Streams `url` to a temporary file beside `dest`, checks its SHA-256, then renames it.

    The cache directory is only created once the server answers, so a failed connection leaves
    nothing behind, and a failed or corrupt transfer removes its temporary file.
    """
    with urllib.request.urlopen(url, timeout=60) as response:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            os.fchmod(fd, default_mode())
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() not in accepted:
                raise ToolkitError(
                    f"download of {url} has SHA-256 {digest.hexdigest()}, expected "
                    f"{' or '.join(accepted)}; it was corrupted or changed upstream and was not "
                    f"saved; retry, or fetch it by hand into {dest.parent}"
                )
            # Atomic: readers see no file or the whole verified one. The directory is not
            # fsync'ed: a rename lost in a crash only costs another download.
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())
