"""Helpers shared by more than one test package, so that no test imports another package's conftest.

- `cluster`: an in-process coordinator over real gRPC on 127.0.0.1 (`Cluster`, `make_settings`,
  `spec_yaml`, the admin client `Admin`, the test tokens `ADMIN_TOKEN` and `SITES`).
- `fake_worker`: a scripted worker written against the real stubs (`FakeWorker`, `initial_arrays`).
- `flow`: scripted experiment steps (`initialize`, `pull_train`, `train_update`, `committed_version` …).
- `wire`: hand-built PushUpdate requests and `expect_error` for asserting a gRPC status.
- `tls`: coordinators serving TLS / mutual TLS from a certs folder, and channels to them.
- `waiting`: `wait_for`, polling a condition with a deadline.
- `ports`: `free_port`, a free TCP port on 127.0.0.1.

The fixtures built on these live in the conftests (`cluster_factory` and `cluster` in tests/conftest.py,
the certs fixtures in tests/security/conftest.py); conftests hold fixtures only.
"""
