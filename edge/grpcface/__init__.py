"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` as Triton
defines it, so the stock ``tritonclient.grpc`` works. A face of its own process
(``falconctl grpc``; systemd ``falcon-grpc.service``) over the edge's one core, behind
HAProxy on its own h2c port (``grpc.public_bind``).

Usage, through HAProxy::

    import numpy as np, tritonclient.grpc as g
    c = g.InferenceServerClient("127.0.0.1:8081")
    i = g.InferInput("input", [1, 64], "FP32")
    i.set_data_from_numpy(np.zeros((1, 64), np.float32))
    c.infer("digits", [i], headers={"authorization": "Bearer fk_..."}).as_numpy("label")

Modules: :mod:`.service` (the RPCs: parse, authorise, call the core, render),
:mod:`.codec` (tensors between the protos and numpy), :mod:`.status` (core errors
as gRPC status codes, one table), :mod:`.server` (the process), ``proto/`` (Triton's
protos, vendored, and their generated modules: ``make protos``).
"""
