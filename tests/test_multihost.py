"""Multi-host for real, on one machine: two processes joined by `jax.distributed`
(a localhost coordinator, 2 CPU devices each) train and scan over all 4 devices,
and their results equal one process's with 4 devices."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


def _start(args: list[str], devices: int) -> subprocess.Popen:
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return subprocess.Popen([sys.executable, str(WORKER), *args], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_two_processes_train_and_scan_like_one(tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  group = [_start([str(tmp_path / "two.npz"), f"localhost:{port}", str(i), "2"], 2)
           for i in range(2)]
  alone = _start([str(tmp_path / "one.npz")], 4)
  for process in group + [alone]:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
  two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
  assert (int(two["processes"]), int(two["devices"])) == (2, 4)
  assert (int(one["processes"]), int(one["devices"])) == (1, 4)
  assert one["losses"][-1] < one["losses"][0]  # it trained
  assert set(two.files) == set(one.files)
  for name in set(one.files) - {"processes"}:  # parameters, losses, scores
    np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-5, err_msg=name)
