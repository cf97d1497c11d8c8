"""Re-vendor the data docs assets from the npm registry, exactly as manifest.json pins them.

    python loader/web/vendor/data_docs/vendor.py           # fetch, verify, copy, refresh hashes
    python loader/web/vendor/data_docs/vendor.py --check   # verify the committed copies only

For each package@version in manifest.json: `npm pack` the tarball, check its integrity against
the registry's and the manifest's, and copy the listed files (with the package's licence) to
<name>@<version>/<path>. A file marked "written" is not in the tarball (the package ships no
licence file) and is kept as committed. Needs npm and the registry; the loader never runs this.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"


def sha384(path: Path) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(path.read_bytes()).digest()).decode()


def npm(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["npm", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def fetch(package: dict, work: Path) -> None:
    spec = f"{package['name']}@{package['version']}"
    dist = json.loads(npm("view", spec, "dist", "--json", cwd=work))
    packed = json.loads(npm("pack", spec, "--json", cwd=work))[0]
    if packed["integrity"] != dist["integrity"]:
        sys.exit(f"{spec}: the tarball's integrity differs from the registry's")
    if package.get("integrity", dist["integrity"]) != dist["integrity"]:
        sys.exit(f"{spec}: the registry's integrity differs from manifest.json's")
    package["tarball"], package["integrity"] = dist["tarball"], dist["integrity"]
    with tarfile.open(work / packed["filename"]) as tarball:
        for path, entry in package["files"].items():
            if entry.get("written"):
                continue
            source = tarball.extractfile(f"package/{path}")
            target = HERE / spec / path
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                shutil.copyfileobj(source, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify the committed copies")
    args = parser.parse_args()
    manifest = json.loads(MANIFEST.read_text())
    with tempfile.TemporaryDirectory() as work:
        for package in manifest["packages"]:
            if not args.check:
                fetch(package, Path(work))
            spec = f"{package['name']}@{package['version']}"
            for path, entry in package["files"].items():
                found = sha384(HERE / spec / path)
                if args.check and entry.get("sha384") != found:
                    sys.exit(f"{spec}/{path}: not the file manifest.json pins")
                entry["sha384"] = found
    if not args.check:
        MANIFEST.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(f"{len(manifest['packages'])} packages {'verified' if args.check else 'vendored'}")


if __name__ == "__main__":
    main()
