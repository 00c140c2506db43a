"""The four training schemes of the paper's Figure 6b as lists of phases.

A phase says, for a range of epochs, which stages train (the others are frozen: no gradient,
no weight decay, dropout off) and how much each stage's loss counts. The LightningModule only
asks "which phase is epoch e in?"; nothing else in the code branches on the scheme name.

    joint            1 phase: all stages, all stage losses (intermediate supervision)
    no_intermediate  1 phase: all stages, only the last stage's loss
    stagewise        T phases: phase k trains stage k alone on its own loss, stages < k frozen
                     (stage 2 brings the image trunk that stages >= 2 share; it stays frozen after)
    finetune         joint training from stage-wise weights: from `init_checkpoint` if given
                     (1 phase), else the T stage-wise phases first, then a joint phase (T + 1)

Phase lengths: `phase_epochs` if given, else the total epoch budget split equally, so that
schemes are compared at equal total epochs. Each phase runs the whole learning-rate schedule
(CPMModule.phase_scheduler), as the release trained each stage-wise phase as a run of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from cpm_lightning.errors import ConfigError

SCHEMES = ("joint", "stagewise", "finetune", "no_intermediate")


@dataclass(frozen=True)
class Phase:
    name: str
    first_epoch: int
    num_epochs: int
    trainable_stages: tuple[int, ...]  # 1-based
    loss_weights: tuple[float, ...]  # one per stage; 0 = that stage's loss is not used


@dataclass(frozen=True)
class Scheme:
    name: str
    phases: tuple[Phase, ...]

    def phase_index(self, epoch: int) -> int:
        for i, phase in enumerate(self.phases):
            if epoch < phase.first_epoch + phase.num_epochs:
                return i
        return len(self.phases) - 1  # epochs past the plan stay in the last phase

    def phase(self, epoch: int) -> Phase:
        return self.phases[self.phase_index(epoch)]


def build_scheme(
    name: str,
    num_stages: int,
    max_epochs: int,
    stage_weights: list[float] | None = None,
    phase_epochs: list[int] | None = None,
    init_checkpoint: str | None = None,
) -> Scheme:
    """Phases of scheme `name` for a `num_stages` CPM trained for `max_epochs` in total."""
    if name not in SCHEMES:
        raise ConfigError(f"scheme={name!r} is unknown: choose one of {', '.join(SCHEMES)}.")
    weights = tuple(float(w) for w in (stage_weights or [1.0] * num_stages))
    if len(weights) != num_stages:
        raise ConfigError(f"scheme.stage_weights has {len(weights)} entries for {num_stages} stages.")
    all_stages = tuple(range(1, num_stages + 1))

    def alone(stage: int) -> tuple[float, ...]:
        return tuple(weights[i] if i == stage - 1 else 0.0 for i in range(num_stages))

    stagewise = [(f"stagewise_{t}", (t,), alone(t)) for t in all_stages]
    joint = ("joint", all_stages, weights)
    plans = {
        "joint": [joint],
        "no_intermediate": [("no_intermediate", all_stages, alone(num_stages))],
        "stagewise": stagewise,
        "finetune": [joint] if init_checkpoint else [*stagewise, joint],
    }
    plan = plans[name]

    if phase_epochs is None:
        if max_epochs < len(plan):
            raise ConfigError(
                f"scheme={name} with {num_stages} stages has {len(plan)} phases but trainer.max_epochs="
                f"{max_epochs}: give at least {len(plan)} epochs, or set scheme.phase_epochs."
            )
        base, extra = divmod(max_epochs, len(plan))
        phase_epochs = [base + (1 if i < extra else 0) for i in range(len(plan))]
    elif len(phase_epochs) != len(plan):
        raise ConfigError(f"scheme.phase_epochs needs {len(plan)} entries for scheme={name}, got {len(phase_epochs)}.")

    phases, first = [], 0
    for (phase_name, stages, loss_weights), epochs in zip(plan, phase_epochs):
        phases.append(Phase(phase_name, first, int(epochs), stages, loss_weights))
        first += int(epochs)
    return Scheme(name, tuple(phases))
