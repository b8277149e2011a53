"""Generated gRPC/protobuf code (scripts/gen_proto.sh); only fedseed.serde and the transports import it."""
