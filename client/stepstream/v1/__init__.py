"""Generated protobuf and gRPC code for stepstream.v1."""
