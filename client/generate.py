"""Generates the client's gRPC stubs from the repository's public API.

    python client/generate.py      (from anywhere; needs grpcio-tools)

Writes `src/model_registry_client/_generated/` from `proto/` (the public
`cogmentAPI/model_registry.proto` with `cogmentAPI/common.proto`, and the
admin API `registry/admin.proto`), the one source of truth shared with the
server. The generated files are not committed.

The descriptors go into a pool of the client's own (`_generated/_pool.py`),
not protobuf's default pool: a process may also hold another definition of
the same `cogmentAPI` messages, from another file name (the Cogment SDK's
`cogment/api/model_registry.proto`, or the server's stubs), and the default
pool refuses the same message name from two files ("duplicate symbol
'cogmentAPI.ModelInfo'"). Messages are plain protobuf either way; only the
Python classes are the client's own. The absolute imports protoc emits
(`from cogmentAPI import ...`, `from registry import ...`) become relative
ones, which makes the package self-contained.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

CLIENT_DIR = Path(__file__).resolve().parent
PROTO_ROOT = CLIENT_DIR.parent / "proto"
PROTOS = ("cogmentAPI/common.proto", "cogmentAPI/model_registry.proto", "registry/admin.proto")
OUT_DIR = CLIENT_DIR / "src" / "model_registry_client" / "_generated"

ABSOLUTE_IMPORT = re.compile(r"^from (cogmentAPI|registry) import (\w+_pb2) as", re.MULTILINE)
DEFAULT_POOL = "_descriptor_pool.Default()"
POOL_MODULE = '''"""The client's own descriptor pool (see client/generate.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''


def _rewrite(module: Path) -> None:
    source = ABSOLUTE_IMPORT.sub(r"from . import \2 as", module.read_text())
    if module.name.endswith("_pb2.py"):
        if DEFAULT_POOL not in source:
            raise SystemExit(f"unexpected protoc output: no {DEFAULT_POOL} in {module.name}")
        source = source.replace(DEFAULT_POOL, "_pool.POOL")
        source = source.replace("# @@protoc_insertion_point(imports)", "# @@protoc_insertion_point(imports)\nfrom . import _pool", 1)
    module.write_text(source)


def generate(out_dir: Path = OUT_DIR) -> None:
    from grpc_tools import protoc  # imported here: only needed at build time

    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(PROTO_ROOT / proto) for proto in PROTOS),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {', '.join(PROTOS)}")
        staged = out_dir.with_name(out_dir.name + ".new")
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        for proto in PROTOS:
            stem = Path(tmp) / Path(proto).with_suffix("")
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
                generated = stem.with_name(stem.name + suffix)
                target = staged / generated.name
                shutil.copy(generated, target)
                _rewrite(target)
        (staged / "_pool.py").write_text(POOL_MODULE)
        (staged / "__init__.py").write_text(f'"""Generated from proto/ ({", ".join(PROTOS)}) by client/generate.py."""\n')
        # Replace the whole directory at once, so a failed run leaves the old stubs.
        shutil.rmtree(out_dir, ignore_errors=True)
        staged.rename(out_dir)


if __name__ == "__main__":
    generate()
    print(f"generated {OUT_DIR.relative_to(CLIENT_DIR.parent)}", file=sys.stderr)
