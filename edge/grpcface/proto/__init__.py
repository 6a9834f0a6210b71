"""Triton's GRPCInferenceService protos (vendored) and their generated modules
(``generate.sh``; do not edit the ``*_pb2*`` files by hand)."""
