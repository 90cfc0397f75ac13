"""AtomicPusher: TFX's Pusher component with the executor of components/atomic_pusher/executor.py."""

from tfx.components import Pusher
from tfx.dsl.components.base import executor_spec

from components.atomic_pusher.executor import Executor

PUSHER_ID = "Pusher"  # its node id: a run whose Pusher completed is a finished run (pipeline/retraining.py)


class AtomicPusher(Pusher):
    """Pusher(model, model_blessing, push_destination) as TFX's, publishing a version by a rename (see the
    executor). Its node id stays `Pusher`, unless the caller sets another."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.with_id(PUSHER_ID)
