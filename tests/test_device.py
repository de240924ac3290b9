"""GPU claiming for local runs: concurrent jobs get distinct devices."""

import subprocess
import sys

from taskalign.models.device import claim_gpu

CLAIM = "from taskalign.models.device import claim_gpu; import sys, time; print(claim_gpu(2, sys.argv[1], 0.1), flush=True); time.sleep(float(sys.argv[2]))"


def test_concurrent_jobs_claim_distinct_gpus_and_a_third_waits(tmp_path):
    first = subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path), "3"], stdout=subprocess.PIPE, text=True)
    second = subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path), "3"], stdout=subprocess.PIPE, text=True)
    claimed = {int(first.stdout.readline()), int(second.stdout.readline())}
    assert claimed == {0, 1}
    third = subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path), "0"], stdout=subprocess.PIPE, text=True)
    first.wait(), second.wait()
    assert int(third.stdout.readline()) in {0, 1}, "the third job gets a GPU once one is released"
    assert third.wait() == 0


def test_a_claim_is_held_by_the_process(tmp_path):
    assert claim_gpu(2, tmp_path) == 0
    assert claim_gpu(2, tmp_path) == 1, "the first claim is still held"
