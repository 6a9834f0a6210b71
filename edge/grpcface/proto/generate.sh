#!/bin/sh
# Regenerate the Python modules of the vendored Triton protos (`make protos`).
#
# grpc_service.proto and model_config.proto are Triton's, unchanged, from
# github.com/triton-inference-server/common (protobuf/, BSD-3-Clause: LICENSE beside
# them); this runs grpcio-tools (the `build` extra) and turns protoc's top-level
# imports into package-relative ones. The generated files are committed: the runtime
# needs grpcio and protobuf only. They require grpcio and protobuf at least as new as
# the grpcio-tools that made them (setup.cfg's install_requires follow).
set -eu
PY=${PY:-python3}
cd "$(dirname "$0")"
"$PY" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
    grpc_service.proto model_config.proto
rm -f model_config_pb2_grpc.py  # (model_config.proto has no service)
sed -i 's/^import model_config_pb2 as /from . import model_config_pb2 as /' grpc_service_pb2.py grpc_service_pb2.pyi
sed -i 's/^import grpc_service_pb2 as /from . import grpc_service_pb2 as /' grpc_service_pb2_grpc.py
# a private descriptor pool (_pool.py): tritonclient's copy of these protos may share a process
sed -i 's/^from google.protobuf import descriptor_pool as _descriptor_pool$/from . import _pool/; s/_descriptor_pool\.Default()/_pool.POOL/' grpc_service_pb2.py model_config_pb2.py
