"""The descriptor pool of the vendored protos: a private one, not protobuf's default,
so a process that also imports ``tritonclient.grpc`` (its own copy of the same
``inference.*`` protos, of another version) loads both (``generate.sh`` points the
generated modules here)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
