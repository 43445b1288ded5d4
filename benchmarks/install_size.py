"""Installed size of the device install: a fresh venv with ``pip install '.[edge]'`` (the README's device command).

Creates a venv in a temporary folder (no system site packages, so nothing is borrowed from this machine),
installs this checkout with the ``edge`` extra from the package index, and prints the size of its
site-packages in total, without the venv's own pip and setuptools (deploy/install.sh makes the Pi's venv
without them), and the largest entries. This machine's architecture decides the wheels (x86_64 here; the arm64
sizes come from deploy/pi_check.sh). Run::

    PYTHONPATH=. nice -n 10 python3 benchmarks/install_size.py [--extra edge]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_TOOLS = ("pip", "setuptools", "_distutils_hack", "distutils-precedence.pth")


def tree_bytes(path: Path) -> int:
    """Bytes of every file below ``path`` (or of ``path`` itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main(argv: list[str] | None = None) -> int:
    """Build the venv, install, print the sizes."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extra", default="edge", help="Extras to install (default: edge, the device's).")
    args = ap.parse_args(argv)
    venv = Path(tempfile.mkdtemp(prefix="edge-install-size-")) / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{ROOT}[{args.extra}]"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"error: pip install failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return 1
    [site] = (venv / "lib").glob("python3*/site-packages")
    entries = {}
    for p in site.iterdir():
        name = p.name.split("-")[0] if p.name.endswith((".dist-info", ".data")) else p.name
        entries[name] = entries.get(name, 0) + tree_bytes(p)
    total = sum(entries.values())
    tools = sum(v for k, v in entries.items() if k in VENV_TOOLS)
    mb = 1024 * 1024
    print(f"fresh venv ({sys.version.split()[0]}, {sys.platform}), pip install '.[{args.extra}]':")
    print(f"  site-packages: {total / mb:.0f} MiB; without the venv's pip and setuptools: {(total - tools) / mb:.0f} MiB")
    for name, size in sorted(entries.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {size / mb:7.1f} MiB  {name}")
    print(f"command: PYTHONPATH=. python3 benchmarks/install_size.py --extra {args.extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
