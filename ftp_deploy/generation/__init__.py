"""Generation with a routed model (FTP_SPEC section 9): routed prefill, then decode with a per-layer
compacted KV cache.

- `settings`: what `generate` is asked for (torch-free);
- `cache`: RoutedCache, each block holding only the tokens it computed;
- `reference`: the section-9 prefill, cached decode step and masked-mode reference parity checks use;
- `model`: RoutedForCausalLM, so transformers' own `generate` drives the routed model;
- `sampling`: the one sampler (transformers' warpers), shared by the PyTorch and ONNX Runtime loops;
- `timed`: generation timed token by token (first token, decode ms/token, cache bytes), every runtime;
- `compare`: dense vs routed on one prompt (`ftp-deploy run`);
- `source`, `pipeline`, `command`: `ftp-deploy generate` from a run folder or an export folder.

The ONNX Runtime loop over an export's graphs is `engines/onnx_generation` (a runtime, beside the others).
"""
