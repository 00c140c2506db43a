"""A local Hydra sweep that runs one job per GPU: `-m hydra/launcher=gpu_pool`.

Each job is a separate process (submitit's local executor) that sees exactly one GPU through
CUDA_VISIBLE_DEVICES, so `trainer=gpu` in the job uses "its" GPU as cuda:0. When there are
more jobs than GPUs, the next job starts on the first GPU that becomes free. This is a Hydra
plugin (it must live in the hydra_plugins namespace to be found), built on the submitit
launcher so that jobs are pickled and run exactly as under `hydra/launcher=submitit_local`.
"""

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, List, Optional, TypeVar  # noqa: UP035 (see GPUPoolConf)

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

log = logging.getLogger(__name__)
Handle = TypeVar("Handle")


def visible_gpus(gpus: Sequence[int] | None) -> list[int]:
    """The GPU ids to use: the configured list, else every GPU torch sees (at least one slot)."""
    if gpus:
        return [int(g) for g in gpus]
    import torch  # only when needed: Hydra imports every plugin at start-up

    return list(range(torch.cuda.device_count())) or [0]


def run_on_gpu_pool(
    num_jobs: int,
    gpus: Sequence[Hashable],
    start: Callable[[int, Hashable], Handle],
    is_done: Callable[[Handle], bool],
    poll_seconds: float = 1.0,
) -> list[Handle]:
    """Start jobs 0..num_jobs-1 in order, each on a free GPU, at most one job per GPU at a time.

    start(job, gpu) launches a job and returns its handle; is_done(handle) polls it. Returns
    the handles in job order once every job has been started (the caller waits for results).
    """
    free = deque(gpus)
    running: dict[Hashable, Handle] = {}
    handles: list[Handle] = []
    for job in range(num_jobs):
        while not free:
            finished = [gpu for gpu, handle in running.items() if is_done(handle)]
            free.extend(finished)
            for gpu in finished:
                del running[gpu]
            if not free:
                time.sleep(poll_seconds)
        gpu = free.popleft()
        running[gpu] = start(job, gpu)
        handles.append(running[gpu])
    return handles


class GPUPoolLauncher(LocalLauncher):
    """submitit_local with one GPU per job and at most one job per GPU (`gpus`: ids, or all)."""

    def __init__(self, gpus: Sequence[int] | None = None, poll_seconds: float = 2.0, **params: Any) -> None:
        super().__init__(**params)
        self.gpus = None if gpus is None else list(gpus)
        self.poll_seconds = poll_seconds

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        # The local executor itself: the generic AutoExecutor does not accept visible_gpus.
        executor = submitit.LocalExecutor(folder=self.params["submitit_folder"])
        executor.update_parameters(timeout_min=self.params["timeout_min"], gpus_per_node=1)
        gpus = visible_gpus(self.gpus)
        singleton_state = Singleton.get_state()

        def start(job: int, gpu: int) -> "submitit.Job":
            idx = initial_job_idx + job
            overrides = list(job_overrides[job])
            log.info(f"\t#{idx} on GPU {gpu} : {' '.join(filter_overrides(overrides))}")
            executor.update_parameters(visible_gpus=[gpu])  # the job's CUDA_VISIBLE_DEVICES
            return executor.submit(self, overrides, "hydra.sweep.dir", idx, f"job_id_for_{idx}", singleton_state)

        log.info(f"GPU pool sweep over GPUs {gpus}, output dir: {self.config.hydra.sweep.dir}")
        jobs = run_on_gpu_pool(len(job_overrides), gpus, start, lambda j: j.done(), self.poll_seconds)
        return [job.results()[0] for job in jobs]


@dataclass
class GPUPoolConf(LocalQueueConf):
    """`hydra/launcher=gpu_pool`; e.g. hydra.launcher.gpus=[0,2] to use only GPUs 0 and 2."""

    _target_: str = "hydra_plugins.cpm_gpu_pool.gpu_pool_launcher.GPUPoolLauncher"
    # Hydra execs plugin modules without registering them in sys.modules, so the dataclass needs
    # real (not postponed) annotations, in the typing spelling that OmegaConf 2.3 understands.
    gpus: Optional[List[int]] = None  # noqa: UP006, UP045  (None: every GPU torch sees)
    poll_seconds: float = 2.0
    timeout_min: int = 1440


ConfigStore.instance().store(group="hydra/launcher", name="gpu_pool", node=GPUPoolConf, provider="cpm_lightning")
