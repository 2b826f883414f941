"""Generates the client's gRPC stubs from the repository's public API.

    python client/generate.py      (from anywhere; needs grpcio-tools)

Writes `src/model_registry_client/_generated/` from
`proto/cogmentAPI/model_registry.proto`, the one source of truth shared with
the server. The generated files are not committed.

The proto is compiled under its own name (`cogmentAPI/model_registry.proto`,
`-I proto`), exactly as the server's stubs are, so both sets of stubs can be
loaded in one process: protobuf's descriptor pool accepts the same file twice
but refuses the same message names from two differently named files. Only the
one absolute import protoc emits (`from cogmentAPI import model_registry_pb2`)
is rewritten to a relative one, which makes the package self-contained.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

CLIENT_DIR = Path(__file__).resolve().parent
PROTO_ROOT = CLIENT_DIR.parent / "proto"
PROTO = "cogmentAPI/model_registry.proto"
OUT_DIR = CLIENT_DIR / "src" / "model_registry_client" / "_generated"

ABSOLUTE_IMPORT = "from cogmentAPI import model_registry_pb2 as"
RELATIVE_IMPORT = "from . import model_registry_pb2 as"


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
            str(PROTO_ROOT / PROTO),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {PROTO_ROOT / PROTO}")
        generated = Path(tmp) / "cogmentAPI"
        grpc_module = generated / "model_registry_pb2_grpc.py"
        source = grpc_module.read_text()
        if ABSOLUTE_IMPORT not in source:
            raise SystemExit(f"unexpected protoc output: no {ABSOLUTE_IMPORT!r} in {grpc_module.name}")
        grpc_module.write_text(source.replace(ABSOLUTE_IMPORT, RELATIVE_IMPORT))
        (generated / "__init__.py").write_text('"""Generated from proto/cogmentAPI/model_registry.proto by client/generate.py."""\n')
        # Replace the whole directory at once, so a failed run leaves the old stubs.
        staged = out_dir.with_name(out_dir.name + ".new")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(generated, staged)
        shutil.rmtree(out_dir, ignore_errors=True)
        staged.rename(out_dir)


if __name__ == "__main__":
    generate()
    print(f"generated {OUT_DIR.relative_to(CLIENT_DIR.parent)}", file=sys.stderr)
