"""Placeholder: the client arrives with the wire issue (gRPC, proto/)."""
