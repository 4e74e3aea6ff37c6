"""Tensor streams: manifests, chunked encoding/decoding, safetensors files (design.md section 4)."""
