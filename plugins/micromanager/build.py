#!/usr/bin/env python3
"""Build the rtsmlm Micro-Manager device adapter (libmmgr_dal_Rtsmlm) with a C++ compiler.

    python plugins/micromanager/build.py            # fetch the SDK if needed, build incrementally

The device-adapter SDK (MMDevice, BSD licence) is taken from the pymmcore source distribution of the
*same version as the installed pymmcore*, because a device adapter only loads into an MMCore whose
device-interface version matches the SDK it was built against. The sdist is fetched once from the
package index pip uses (PIP_INDEX_URL / pip config / PyPI; hash-checked), falling back to
``pip download``, into plugins/micromanager/sdk/; objects and the library go to
plugins/micromanager/build/. Both folders are git-ignored and neither is ever committed.

To build for your own Micro-Manager installation, pass ``--pymmcore-version`` matching its
device-interface version (``pymmcore.CMMCore().getAPIVersionInfo()`` / Help > About), or ``--sdk``
pointing at an mmCoreAndDevices/MMDevice checkout, then copy the library next to the other
``libmmgr_dal_*`` files of the installation.

The last line printed is the absolute path of the built library.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
MODULE_NAME = "Rtsmlm"
MMDEVICE_SOURCES = ("Debayer.cpp", "DeviceUtils.cpp", "ImgBuffer.cpp", "MMDevice.cpp",
                    "ModuleInterface.cpp", "Property.cpp")


class BuildError(RuntimeError):
    """The adapter could not be built; the message says which step and why."""


def library_filename() -> str:
    """Micro-Manager's naming rule for adapter libraries (see MMCore's PluginManager.cpp)."""
    system = platform.system()
    if system == "Linux":
        return f"libmmgr_dal_{MODULE_NAME}.so.0"
    if system == "Darwin":
        return f"libmmgr_dal_{MODULE_NAME}"
    raise BuildError(f"building on {system} is not supported by this script; compile src/*.cpp "
                     "with the MMDevice sources into mmgr_dal_Rtsmlm.dll with MSVC")


def installed_pymmcore_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pymmcore")
    except PackageNotFoundError:
        raise BuildError("pymmcore is not installed, so the SDK version to build against is "
                         "unknown; pip install pymmcore or pass --pymmcore-version") from None


def _extract_mmdevice(sdist: Path, dest: Path) -> None:
    """Copy subprojects/mmdevice of a pymmcore sdist (tarball or extracted folder) to ``dest``."""
    tmp = Path(tempfile.mkdtemp(prefix="mmsdk-", dir=dest.parent))
    try:
        if sdist.is_dir():
            root = sdist
        else:
            with tarfile.open(sdist) as tar:
                members = [m for m in tar.getmembers() if "/subprojects/mmdevice/" in m.name
                           and ".." not in m.name and (m.isfile() or m.isdir())]
                if not members:
                    raise BuildError(f"{sdist} contains no subprojects/mmdevice; is it a pymmcore sdist?")
                tar.extractall(tmp, members=members, filter="data")
            root = next(tmp.iterdir())
        mmdevice = root / "subprojects" / "mmdevice" if (root / "subprojects").exists() else root
        if not (mmdevice / "MMDevice.h").exists():
            raise BuildError(f"{sdist} has no MMDevice.h under subprojects/mmdevice")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(mmdevice, dest, ignore=shutil.ignore_patterns("unittest", "docs", "*.vcxproj*"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _index_url(python: str) -> str:
    """The package index pip would use (PIP_INDEX_URL, pip's config, else PyPI)."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    proc = subprocess.run([python, "-m", "pip", "config", "get", "global.index-url"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else "https://pypi.org/simple"


def _fetch_from_index(version: str, download: Path, python: str) -> Path:
    """Download the sdist the way pip finds it: the index's project page (PEP 691 JSON or PEP 503
    HTML), then the file, checked against the index's sha256."""
    import hashlib
    import json
    import re
    import urllib.parse
    import urllib.request

    filename = f"pymmcore-{version}.tar.gz"
    page = _index_url(python).rstrip("/") + "/pymmcore/"
    request = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1", "User-Agent": "rtsmlm-build"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read().decode("utf-8")
        kind = response.headers.get("Content-Type", "")
    url = sha256 = None
    if "json" in kind:
        for entry in json.loads(body).get("files", []):
            if entry.get("filename") == filename:
                url, sha256 = entry["url"], entry.get("hashes", {}).get("sha256")
    else:
        for href in re.findall(r'href="([^"]+)"', body):
            if urllib.parse.urlparse(href).path.rsplit("/", 1)[-1] == filename:
                url, _, fragment = href.partition("#")
                sha256 = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
    if url is None:
        raise BuildError(f"{page} lists no {filename}")
    url = urllib.parse.urljoin(page, url)
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise BuildError(f"{url} does not match the sha256 the index gives ({sha256})")
    target = download / filename
    target.write_bytes(data)
    return target


def _fetch_with_pip(version: str, download: Path, python: str) -> Path:
    """``pip download`` of the sdist: always works where pip does, but pip builds the whole pymmcore
    wheel just to read its metadata (minutes of compiling), so it is the fallback."""
    cmd = [python, "-m", "pip", "download", "--no-deps", "--no-binary", "pymmcore",
           f"pymmcore=={version}", "-d", str(download)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    target = download / f"pymmcore-{version}.tar.gz"
    if proc.returncode != 0 or not target.exists():
        raise BuildError(f"'{' '.join(cmd)}' failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return target


def ensure_sdk(version: str, sdk_arg: Path | None, sdk_root: Path, python: str) -> Path:
    """Return a folder holding MMDevice.h and its sources, fetching the sdist if needed."""
    if sdk_arg is not None and sdk_arg.is_dir() and (sdk_arg / "MMDevice.h").exists():
        return sdk_arg  # an MMDevice checkout used in place
    dest = sdk_root / f"mmdevice-{version}"
    if (dest / "MMDevice.h").exists() and sdk_arg is None:
        return dest
    sdk_root.mkdir(parents=True, exist_ok=True)
    if sdk_arg is None:
        download = sdk_root / "download"
        download.mkdir(exist_ok=True)
        sdist = download / f"pymmcore-{version}.tar.gz"
        if not sdist.exists():
            print(f"fetching the pymmcore {version} sdist (device-adapter SDK) ...", flush=True)
            try:
                sdist = _fetch_from_index(version, download, python)
            except (BuildError, OSError, ValueError) as e:
                print(f"  direct download failed ({e}); falling back to pip download (slow: pip "
                      "compiles pymmcore to read its metadata)", flush=True)
                sdist = _fetch_with_pip(version, download, python)
        sdk_arg = sdist
    _extract_mmdevice(sdk_arg, dest)
    (dest / "PYMMCORE_VERSION").write_text(version + "\n")
    return dest


def _needs_build(target: Path, inputs: list[Path]) -> bool:
    if not target.exists():
        return True
    t = target.stat().st_mtime
    return any(p.stat().st_mtime > t for p in inputs)


def build(cxx: str, sdk: Path, out: Path, jobs: int, force: bool) -> Path:
    """Compile changed objects and link the adapter library; return its path."""
    if shutil.which(cxx) is None:
        raise BuildError(f"C++ compiler '{cxx}' not found; install g++ (Debian: apt-get install g++) "
                         "or pass --cxx")
    obj_dir = out / "obj"
    obj_dir.mkdir(parents=True, exist_ok=True)
    headers = sorted(SRC.glob("*.h")) + sorted(sdk.glob("*.h"))
    sources = [(sdk / name, obj_dir / f"mmdevice_{Path(name).stem}.o") for name in MMDEVICE_SOURCES]
    sources += [(cpp, obj_dir / f"{cpp.stem}.o") for cpp in sorted(SRC.glob("*.cpp"))]
    flags = ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-pthread", "-Wall",
             f"-I{SRC}", f"-I{sdk}"]

    def compile_one(src: Path, obj: Path) -> str | None:
        if not force and not _needs_build(obj, [src, *headers]):
            return None
        cmd = [cxx, *flags, "-c", str(src), "-o", str(obj)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"compiling {src.name} failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")
        return src.name

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        built = [name for name in pool.map(lambda pair: compile_one(*pair), sources) if name]
    for name in built:
        print(f"compiled {name}", flush=True)

    library = out / library_filename()
    objects = [obj for _, obj in sources]
    if force or built or _needs_build(library, objects):
        shared = ["-dynamiclib"] if platform.system() == "Darwin" else ["-shared"]
        cmd = [cxx, *shared, "-pthread", "-o", str(library), *map(str, objects)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"linking {library.name} failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")
        print(f"linked {library}", flush=True)
    return library


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pymmcore-version", help="SDK version (default: the installed pymmcore's)")
    parser.add_argument("--sdk", type=Path, help="a pymmcore sdist (.tar.gz or folder) or an MMDevice folder")
    parser.add_argument("--out", type=Path, default=HERE / "build", help="output folder (default: build/)")
    parser.add_argument("--cxx", default=os.environ.get("CXX", "g++"), help="C++ compiler (default: $CXX or g++)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--force", action="store_true", help="rebuild everything")
    args = parser.parse_args(argv)
    try:
        version = args.pymmcore_version or installed_pymmcore_version()
        sdk = ensure_sdk(version, args.sdk, HERE / "sdk", sys.executable)
        library = build(args.cxx, sdk, args.out.resolve(), args.jobs, args.force)
    except BuildError as e:
        print(f"build.py: {e}", file=sys.stderr)
        return 1
    print(library)
    return 0


if __name__ == "__main__":
    sys.exit(main())
