"""stepstream service: gRPC streaming ingestion of ML metrics with ordering checked in Redis."""

__version__ = "0.1.0"
