"""Placeholder: the coordinator arrives with the wire issue (gRPC, proto/)."""
