"""Generated gRPC/protobuf code for the fedtune.v1 contract (see proto/fedtune/v1/). Do not edit."""
